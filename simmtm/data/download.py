"""Fetch named data sets into the data directory, atomically and with SHA-256 checks.

Each file is downloaded (or extracted from a downloaded .zip) into a temporary folder beside its destination,
hashed, checked, and only then renamed into place, so a failed or tampered download leaves nothing behind.
Files with a hash in ``KNOWN_SHA256`` are checked against it. For the others nothing here can vouch for the
bytes: the hash seen on the first download is recorded in ``<file>.sha256`` (trust on first use, with a warning)
and later downloads must match it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from simmtm.data.registry import DatasetSpec, get_dataset
from simmtm.data.registry import data_dir as default_data_dir
from simmtm.errors import DataError

__all__ = ["KNOWN_SHA256", "download", "sha256_file"]

logger = logging.getLogger(__name__)

# SHA-256 of the unmodified files, by file name (computed from copies checked here).
KNOWN_SHA256: dict[str, str] = {
    "ETTh1.csv": "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
    "ETTh2.csv": "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b",
    "GunPoint_TRAIN.ts": "f842401779fd9800d247d8b33121a1a4643710a19b24917dbdd9a060ca8630d5",
    "GunPoint_TEST.ts": "79332750788a6227b325b96bd0d70130c8eb707b9731f8d7dec62b7a7d36017e",
    "BasicMotions_TRAIN.ts": "8dc43cc6306cb679c888c01e26f91772ac4441a916da43bac8b79734a538b9d6",
    "BasicMotions_TEST.ts": "79213102bc6fca1a398ad98ce1185dff0208fa3d1465e687f48288946b0ff8dc",
}

CHUNK = 1 << 20
TIMEOUT_S = 60
SIDECAR = ".sha256"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + SIDECAR)


def _expected_hash(target: Path) -> tuple[str | None, str]:
    """The hash a file must have and where that hash comes from; None when nothing is known yet."""
    if target.name in KNOWN_SHA256:
        return KNOWN_SHA256[target.name], "the known hash"
    sidecar = _sidecar(target)
    if sidecar.is_file():
        text = sidecar.read_text().split()
        if text:
            return text[0].lower(), f"the hash recorded on first download in {sidecar}"
    return None, ""


def _record_first_hash(target: Path, digest: str) -> None:
    logger.warning(
        "%s: no known SHA-256 for this file; recorded %s in %s (trust on first use) and will check against it",
        target, digest, _sidecar(target),
    )
    _sidecar(target).write_text(f"{digest}  {target.name}\n")


def _present_and_valid(target: Path) -> bool:
    if not target.is_file():
        return False
    expected, _ = _expected_hash(target)
    digest = sha256_file(target)
    if expected is None:
        _record_first_hash(target, digest)
        return True
    if digest != expected:
        logger.warning("%s: SHA-256 %s does not match %s; downloading it again", target, digest, expected)
        return False
    return True


def _fetch(url: str, dest: Path, *, progress: bool) -> None:
    level = logging.INFO if progress else logging.DEBUG
    logger.log(level, "downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, dest.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, next_report = 0, 0.1
            while chunk := response.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if total and done / total >= next_report:
                    logger.log(level, "%s: %d%% of %.1f MB", dest.name, 100 * done // total, total / 1e6)
                    next_report += 0.1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"cannot download {url}: {reason}; check the network, or fetch the file by hand") from None


def _extract(archive: Path, names: list[str], folder: Path, url: str) -> dict[str, Path]:
    """Extract the members with these base names from a .zip into folder (flat: directory names are dropped)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {Path(m.filename).name: m for m in zf.infolist() if not m.is_dir()}
            missing = [n for n in names if n not in members]
            if missing:
                listed = ", ".join(sorted(members)[:10])
                raise DataError(f"{url}: the archive holds no {missing[0]}; it holds {listed}")
            out = {}
            for name in names:
                out[name] = folder / name
                with zf.open(members[name]) as src, out[name].open("wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            return out
    except zipfile.BadZipFile:
        raise DataError(f"{url}: the download is not a valid .zip archive") from None


def download(name: str, data_dir: Path | str | None = None, *, progress: bool = True) -> list[Path]:
    """Fetch a named data set's files into the data directory and return their paths.

    Files already present with the right hash are kept. A hash mismatch raises DataError and leaves no file.
    """
    spec: DatasetSpec = get_dataset(name)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    targets = [root / f for f in spec.files]
    if all(_present_and_valid(t) for t in targets):
        logger.log(logging.INFO if progress else logging.DEBUG, "%s: already present in %s", spec.name, root)
        return targets
    if spec.url is None:
        raise DataError(f"data set {spec.name} must be fetched by hand: {spec.manual}, and place it at {targets[0]}")

    folder = targets[0].parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        tmp_dir = Path(tmp)
        if spec.is_archive:
            fetched = _extract(_fetch_to(spec.url, tmp_dir, progress), [t.name for t in targets], tmp_dir, spec.url)
        else:
            if len(targets) != 1:
                raise DataError(f"data set {spec.name}: a plain URL gives one file, the registry lists {len(targets)}")
            fetched = {targets[0].name: _fetch_to(spec.url, tmp_dir, progress, as_name=targets[0].name)}
        digests = {}
        for target in targets:  # check every file before moving any into place
            digest = sha256_file(fetched[target.name])
            expected, source = _expected_hash(target)
            if expected is not None and digest != expected:
                raise DataError(
                    f"{spec.url}: {target.name} has SHA-256 {digest}, expected {expected} ({source}); "
                    "the download is corrupt or the upstream file changed (nothing was written)"
                )
            digests[target] = (digest, expected)
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(fetched[target.name], target)
            digest, expected = digests[target]
            if expected is None:
                _record_first_hash(target, digest)
    logger.log(logging.INFO if progress else logging.DEBUG, "%s: saved %s", spec.name, ", ".join(map(str, targets)))
    return targets


def _fetch_to(url: str, folder: Path, progress: bool, as_name: str | None = None) -> Path:
    dest = folder / (as_name or url.split("?", 1)[0].rsplit("/", 1)[-1] or "download")
    _fetch(url, dest, progress=progress)
    return dest
