"""Fetch a named data set's files into the data directory: through pooch, SHA-256 checked, retried, resumed.

``download(spec, root)`` is called on first use (``registry`` finds a named set missing) and by
``simmtm data download NAME``. pooch fetches the file (a progress bar, ``retries`` more tries on a network error
or a checksum mismatch) into ``root/.downloads/``; it is checked, unzipped when it is an archive, checked again
member by member, and only then renamed into place. A broken transfer leaves ``.downloads/<file>.part``, which the
next try continues with an HTTP Range request; the data tree itself never holds a half-written file or an empty
folder. One download runs at a time per data directory (an advisory lock on the directory itself), so trials
that start together on a fresh machine fetch the set once.

Files with a hash in ``KNOWN_SHA256`` are checked against it. For the others nothing here can vouch for the bytes:
the hash seen on the first download is recorded in ``<file>.sha256`` (trust on first use, with a warning) and later
downloads must match it.

``$SIMMTM_DATA_URL_BASE`` points every download at a mirror that serves the files under their upstream names
(``<base>/ETTh1.csv``, ``<base>/GunPoint.zip``): for a machine behind a firewall, and for the tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pooch
import requests

from simmtm.data.formats import Task
from simmtm.errors import DataError

__all__ = ["DatasetSpec", "KNOWN_SHA256", "RETRIES", "URL_BASE_ENV", "download", "sha256_file", "source_url"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    """A named data set: its task, its files under the data directory, and where to fetch them."""

    name: str
    task: Task
    files: tuple[str, ...]  # relative to the data directory; files[0] is the path the loader is given
    url: str | None = None  # one raw file, or a .zip holding `files` by base name; None: fetched by hand
    description: str = ""
    manual: str = ""  # how to get the files when url is None
    aliases: tuple[str, ...] = ()

    @property
    def is_archive(self) -> bool:
        return self.url is not None and self.url.lower().endswith(".zip")


# SHA-256 of the unmodified files, by file name (computed from copies checked here).
KNOWN_SHA256: dict[str, str] = {
    "ETTh1.csv": "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
    "ETTh2.csv": "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b",
    "GunPoint_TRAIN.ts": "f842401779fd9800d247d8b33121a1a4643710a19b24917dbdd9a060ca8630d5",
    "GunPoint_TEST.ts": "79332750788a6227b325b96bd0d70130c8eb707b9731f8d7dec62b7a7d36017e",
    "BasicMotions_TRAIN.ts": "8dc43cc6306cb679c888c01e26f91772ac4441a916da43bac8b79734a538b9d6",
    "BasicMotions_TEST.ts": "79213102bc6fca1a398ad98ce1185dff0208fa3d1465e687f48288946b0ff8dc",
}

URL_BASE_ENV = "SIMMTM_DATA_URL_BASE"
RETRIES = 3  # pooch waits 1 s, 2 s, 3 s between tries
TIMEOUT_S = 60  # per connection attempt and per read, not for the whole file
STAGING = ".downloads"
CHUNK = 1 << 20
SIDECAR = ".sha256"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def source_url(spec: DatasetSpec) -> str:
    """Where a data set is fetched from: its registry URL, or the same file name under ``$SIMMTM_DATA_URL_BASE``."""
    if spec.url is None:
        raise DataError(f"data set {spec.name} has no download URL")
    base = os.environ.get(URL_BASE_ENV)
    if not base:
        return spec.url
    return f"{base.rstrip('/')}/{_url_file_name(spec.url)}"


def _url_file_name(url: str) -> str:
    return url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


# --- hashes: known, or recorded on first use --------------------------------------------------------------------


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
        target,
        digest,
        _sidecar(target),
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


def _mismatch(url: str, name: str, digest: str, expected: str, source: str) -> DataError:
    return DataError(
        f"{url}: {name} has SHA-256 {digest}, expected {expected} ({source}); "
        "the download is corrupt or the upstream file changed (nothing was written)"
    )


# --- the transfer ------------------------------------------------------------------------------------------------


class _ResumingDownloader:
    """pooch's HTTP downloader, writing through ``partial`` so that a broken transfer resumes where it stopped.

    The bytes go to ``partial`` first and move to pooch's output file once complete. When ``partial`` already
    holds the start of the file, the request asks for the rest (``Range: bytes=N-``); a server that answers with
    the whole file instead (200, not 206) or with an error gets ``partial`` emptied first, so bytes are never
    appended to the wrong offset. ``digest`` is the SHA-256 of the last complete file, for the mismatch message.
    """

    def __init__(self, partial: Path, *, progress: bool) -> None:
        self.partial = partial
        self.progress = progress
        self.digest = ""

    def __call__(self, url: str, output_file: str, pooch_: pooch.Pooch | None) -> None:
        start = self.partial.stat().st_size if self.partial.is_file() else 0
        if start:
            logger.info("%s: resuming after %d bytes from %s", self.partial.name, start, url)
        with self.partial.open("ab") as out:

            def restart_unless_partial_content(response: requests.Response, *args: object, **kwargs: object) -> None:
                if not response.is_redirect and response.status_code != 206:  # a redirect's target answers later
                    out.seek(0)
                    out.truncate()

            http = pooch.HTTPDownloader(
                progressbar=self.progress,
                chunk_size=1 << 16,
                timeout=TIMEOUT_S,
                headers={"Range": f"bytes={start}-"} if start else {},
                hooks={"response": restart_unless_partial_content},
            )
            http(url, out, pooch_)
        self.digest = sha256_file(self.partial)
        os.replace(self.partial, output_file)


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Hold an advisory lock on the data directory (POSIX flock on the directory itself; released on exit)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _reason(exc: requests.RequestException) -> str:
    """A short cause: the HTTP status, or the OS error under requests' wrapping, or the exception's name."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason}"
    found = re.search(r"\[Errno -?\d+\] [^'\"\])]+", str(exc))
    return found.group(0).strip() if found else type(exc).__name__


def _by_hand(spec: DatasetSpec, url: str, targets: list[Path]) -> str:
    """Where to put the files when they cannot be fetched: the exact path and name of each."""
    if spec.is_archive:
        names = " and ".join(t.name for t in targets)
        return f"download {url} and put {names} from it in {targets[0].parent}/"
    return f"download {url} and save it as {targets[0]}"


def _fetch(spec: DatasetSpec, url: str, staging: Path, targets: list[Path], progress: bool, retries: int) -> Path:
    """pooch fetches ``url`` into ``staging`` (retries, progress bar, resumable) and checks a known hash."""
    file_name = _url_file_name(url)
    known, source = (None, "") if spec.is_archive else _expected_hash(targets[0])
    downloader = _ResumingDownloader(staging / f"{file_name}.part", progress=progress)
    store = pooch.create(
        path=staging, base_url="", registry={file_name: known}, urls={file_name: url}, retry_if_failed=retries
    )
    chatter = pooch.get_logger()  # pooch prints a line per try on its own handler; the outcome is ours to say
    level = chatter.level
    chatter.setLevel(logging.WARNING)
    logger.debug("%s: fetching %s (%d retries)", spec.name, url, retries)
    try:
        return Path(store.fetch(file_name, downloader=downloader))
    except requests.RequestException as exc:
        kept = downloader.partial.stat().st_size if downloader.partial.is_file() else 0
        resume = f"; the {kept} bytes in {downloader.partial} resume on the next try" if kept else ""
        raise DataError(
            f"cannot download {spec.name} from {url} ({_reason(exc)}; {retries + 1} tries); "
            f"offline? {_by_hand(spec, url, targets)}{resume}"
        ) from None
    except ValueError:  # pooch: the complete file does not have the known hash (pooch has deleted it)
        if known is None:
            raise
        raise _mismatch(url, file_name, downloader.digest, known, source) from None
    finally:
        chatter.setLevel(level)


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


def _check_and_place(fetched: dict[str, Path], targets: list[Path], url: str) -> None:
    """Check every file before moving any into place; record a first-seen hash only once the file is placed."""
    digests = {}
    for target in targets:
        digest = sha256_file(fetched[target.name])
        expected, source = _expected_hash(target)
        if expected is not None and digest != expected:
            raise _mismatch(url, target.name, digest, expected, source)
        digests[target] = (digest, expected)
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(fetched[target.name], target)
        digest, expected = digests[target]
        if expected is None:
            _record_first_hash(target, digest)


def download(spec: DatasetSpec, root: Path | str, *, progress: bool = True, retries: int | None = None) -> list[Path]:
    """Fetch a data set's files into the data directory ``root`` and return their paths.

    Files already present with the right hash are kept. A network failure, after ``retries`` more tries (default
    ``RETRIES``), raises DataError naming the file to fetch by hand and where to put it; a hash mismatch raises
    DataError and keeps nothing.
    """
    retries = RETRIES if retries is None else retries
    root = Path(root)
    targets = [root / f for f in spec.files]
    by_hand = DataError(f"data set {spec.name} must be fetched by hand: {spec.manual}, and place it at {targets[0]}")
    if spec.url is None and not all(t.is_file() for t in targets):
        raise by_hand
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root):  # a second process waits here, then finds the files present
        if all(_present_and_valid(t) for t in targets):
            logger.log(logging.INFO if progress else logging.DEBUG, "%s: already present in %s", spec.name, root)
            return targets
        if spec.url is None:
            raise by_hand
        url = source_url(spec)
        staging = root / STAGING
        try:
            fetched = _fetch(spec, url, staging, targets, progress, retries)
            if spec.is_archive:
                with tempfile.TemporaryDirectory(dir=staging, prefix="extract-") as tmp:
                    members = _extract(fetched, [t.name for t in targets], Path(tmp), url)
                    _check_and_place(members, targets, url)
            else:
                if len(targets) != 1:
                    raise DataError(
                        f"data set {spec.name}: a plain URL gives one file, the registry lists {len(targets)}"
                    )
                _check_and_place({targets[0].name: fetched}, targets, url)
        finally:
            _tidy(staging)
    logger.log(logging.INFO if progress else logging.DEBUG, "%s: saved %s", spec.name, ", ".join(map(str, targets)))
    return targets


def _tidy(staging: Path) -> None:
    """Remove what a finished or failed fetch leaves in staging, except a non-empty ``.part`` to resume from."""
    if not staging.is_dir():
        return
    for leftover in staging.iterdir():
        if leftover.is_file() and (leftover.suffix != ".part" or leftover.stat().st_size == 0):
            leftover.unlink()
    with contextlib.suppress(OSError):
        staging.rmdir()  # only when empty
