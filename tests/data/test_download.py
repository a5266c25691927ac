"""Downloads of named data sets, against a mirror on 127.0.0.1 that serves real data files (never the internet).

The mirror is reached the way a user behind a firewall would reach theirs: ``$SIMMTM_DATA_URL_BASE``.
"""

from __future__ import annotations

import dataclasses
import http.server
import importlib
import io
import os
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from simmtm.cli import main
from simmtm.config.schema import DataConfig
from simmtm.data.download import KNOWN_SHA256, download, sha256_file, source_url
from simmtm.data.registry import DatasetSpec, get_dataset, resolve
from simmtm.errors import DataError


def shared_data() -> Path:
    value = os.environ.get("SIMMTM_DATA_DIR")
    assert value, "set SIMMTM_DATA_DIR to the shared data folder (CI: ../shared/data)"
    return Path(value)


def etth1_bytes() -> bytes:
    return (shared_data() / "ETT-small" / "ETTh1.csv").read_bytes()


def gunpoint_zip() -> bytes:
    """GunPoint.zip as the UCR archive lays it out, built from the shared .ts files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for split in ("TRAIN", "TEST"):
            archive.write(shared_data() / "UCR" / "GunPoint" / f"GunPoint_{split}.ts", f"GunPoint/GunPoint_{split}.ts")
    return buffer.getvalue()


# --- a mirror on the loopback address ----------------------------------------------------------------------------


@dataclasses.dataclass
class Mirror:
    """What the local server serves, and how it misbehaves; ``requests`` logs (file, Range header) per request."""

    url: str = ""
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    requests: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    fail: int = 0  # answer this many of the next requests with 503
    cut_after: int | None = None  # send only this many body bytes of the next answer, then close the connection
    ranges: bool = True  # honour "Range: bytes=N-" with 206 (False: always the whole file, 200)


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    server: _MirrorServer

    def do_GET(self) -> None:
        mirror = self.server.mirror
        name, wanted = self.path.lstrip("/"), self.headers.get("Range")
        mirror.requests.append((name, wanted))
        if mirror.fail:
            mirror.fail -= 1
            self.send_error(503)
            return
        body = mirror.files.get(name)
        if body is None:
            self.send_error(404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1)) if wanted and mirror.ranges else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if mirror.cut_after is not None:
            payload, mirror.cut_after = payload[: mirror.cut_after], None
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


class _MirrorServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mirror: Mirror) -> None:
        super().__init__(("127.0.0.1", 0), _MirrorHandler)
        self.mirror = mirror


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    """A local mirror that $SIMMTM_DATA_URL_BASE points at (empty until a test adds files)."""
    state = Mirror()
    server = _MirrorServer(state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("SIMMTM_DATA_URL_BASE", state.url)
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree(root: Path) -> list[str]:
    """Every path under root, relative, sorted: what a download left behind."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


ETTH1 = get_dataset("ETTh1")


# --- the happy paths ---------------------------------------------------------------------------------------------


def test_first_use_fetches_a_missing_set_into_the_data_dir(
    tmp_path: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror.files["ETTh1.csv"] = etth1_bytes()
    monkeypatch.setenv("SIMMTM_DATA_DIR", str(tmp_path))
    resolved = resolve(DataConfig(name="ETTh1"))
    assert resolved.path == tmp_path / "ETT-small" / "ETTh1.csv"
    assert sha256_file(resolved.path) == KNOWN_SHA256["ETTh1.csv"]
    assert tree(tmp_path) == ["ETT-small", "ETT-small/ETTh1.csv"]  # no staging folder, no temporary file
    assert resolve(DataConfig(name="etth1")).path == resolved.path
    assert mirror.requests == [("ETTh1.csv", None)]  # the second use finds it present


def test_present_files_are_checked_and_kept(tmp_path: Path, mirror: Mirror) -> None:
    mirror.files["ETTh1.csv"] = etth1_bytes()
    paths = download(ETTH1, tmp_path, progress=False, retries=0)
    assert paths == [tmp_path / "ETT-small" / "ETTh1.csv"]
    assert download(ETTH1, tmp_path, progress=False, retries=0) == paths
    assert len(mirror.requests) == 1

    paths[0].write_bytes(etth1_bytes()[:-1])  # damaged in place: fetched again
    assert download(ETTH1, tmp_path, progress=False, retries=0) == paths
    assert sha256_file(paths[0]) == KNOWN_SHA256["ETTh1.csv"] and len(mirror.requests) == 2


def test_the_ts_pair_is_extracted_from_a_zip(tmp_path: Path, mirror: Mirror) -> None:
    mirror.files["GunPoint.zip"] = gunpoint_zip()
    paths = download(get_dataset("gunpoint"), tmp_path, progress=False, retries=0)
    folder = tmp_path / "UCR" / "GunPoint"
    assert paths == [folder / "GunPoint_TRAIN.ts", folder / "GunPoint_TEST.ts"]
    assert all(sha256_file(p) == KNOWN_SHA256[p.name] for p in paths)
    assert tree(tmp_path) == ["UCR", "UCR/GunPoint", "UCR/GunPoint/GunPoint_TEST.ts", "UCR/GunPoint/GunPoint_TRAIN.ts"]


def test_the_url_base_override_keeps_the_upstream_file_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIMMTM_DATA_URL_BASE", raising=False)
    assert source_url(ETTH1) == "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh1.csv"
    monkeypatch.setenv("SIMMTM_DATA_URL_BASE", "http://127.0.0.1:8000/mirror/")
    assert source_url(ETTH1) == "http://127.0.0.1:8000/mirror/ETTh1.csv"
    assert source_url(get_dataset("NATOPS")) == "http://127.0.0.1:8000/mirror/NATOPS.zip"


def test_unknown_hash_is_trusted_on_first_use_then_enforced(
    tmp_path: Path, mirror: Mirror, caplog: pytest.LogCaptureFixture
) -> None:
    toy = DatasetSpec("Toy", "forecasting", ("toy/Toy.csv",), f"{mirror.url}/Toy.csv")
    mirror.files["Toy.csv"] = b"date,a\n2020-01-01,1\n"
    with caplog.at_level("WARNING", logger="simmtm.data.download"):
        [path] = download(toy, tmp_path, progress=False, retries=0)
    assert "trust on first use" in caplog.text
    assert (tmp_path / "toy" / "Toy.csv.sha256").read_text().split()[0] == sha256_file(path)

    path.unlink()
    mirror.files["Toy.csv"] = b"date,a\n2020-01-01,2\n"  # upstream changed
    message = r"Toy\.csv has SHA-256 [0-9a-f]{64}, expected [0-9a-f]{64} \(the hash recorded on first download in "
    with pytest.raises(DataError, match=message):
        download(toy, tmp_path, progress=False, retries=0)
    assert tree(tmp_path) == ["toy", "toy/Toy.csv.sha256"]


def test_two_processes_starting_together_fetch_once(tmp_path: Path, mirror: Mirror) -> None:
    mirror.files["ETTh1.csv"] = etth1_bytes()
    results: list[list[Path]] = []
    threads = [
        threading.Thread(target=lambda: results.append(download(ETTH1, tmp_path, progress=False, retries=0)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [[tmp_path / "ETT-small" / "ETTh1.csv"]] * 2
    assert len(mirror.requests) == 1  # the lock made the second wait, then find the file present


# --- failures: one line, nothing half-written --------------------------------------------------------------------


def test_a_wrong_checksum_is_one_line_and_keeps_nothing(tmp_path: Path, mirror: Mirror) -> None:
    mirror.files["ETTh1.csv"] = etth1_bytes()[:-10] + b"0000000000"
    message = r"ETTh1\.csv has SHA-256 [0-9a-f]{64}, expected f18de3ad.*\(the known hash\).*nothing was written"
    with pytest.raises(DataError, match=message) as caught:
        download(ETTH1, tmp_path, progress=False, retries=0)
    assert "\n" not in str(caught.value)
    assert tree(tmp_path) == []


def test_a_wrong_checksum_in_an_archive_keeps_nothing(tmp_path: Path, mirror: Mirror) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("GunPoint/GunPoint_TRAIN.ts", "@problemName GunPoint\n")
        archive.write(shared_data() / "UCR" / "GunPoint" / "GunPoint_TEST.ts", "GunPoint/GunPoint_TEST.ts")
    mirror.files["GunPoint.zip"] = buffer.getvalue()
    with pytest.raises(DataError, match=r"GunPoint_TRAIN\.ts has SHA-256 [0-9a-f]{64}, expected f8424017"):
        download(get_dataset("GunPoint"), tmp_path, progress=False, retries=0)
    assert tree(tmp_path) == []  # the good TEST file is not placed alone either


def test_offline_says_which_file_to_put_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMMTM_DATA_URL_BASE", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("SIMMTM_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(importlib.import_module("simmtm.data.download"), "RETRIES", 0)  # the first-use path uses the module default
    target = tmp_path / "ETT-small" / "ETTh1.csv"
    with pytest.raises(DataError) as caught:
        resolve(DataConfig(name="ETTh1"))
    message = str(caught.value)
    assert re.fullmatch(
        rf"cannot download ETTh1 from http://127\.0\.0\.1:\d+/ETTh1\.csv \(\[Errno 111\] Connection refused; 1 tries\); "
        rf"offline\? download \S+/ETTh1\.csv and save it as {re.escape(str(target))}",
        message,
    ), message
    assert tree(tmp_path) == []  # no empty ETT-small/ left behind

    with pytest.raises(DataError, match=r"offline\? download \S+/GunPoint\.zip and put GunPoint_TRAIN\.ts and "
                                        rf"GunPoint_TEST\.ts from it in {re.escape(str(tmp_path / 'UCR' / 'GunPoint'))}/$"):
        download(get_dataset("GunPoint"), tmp_path, progress=False, retries=0)


def test_offline_a_run_prints_one_line_without_the_retry_chatter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], write_config
) -> None:
    """pooch prints a line per try on its own handler; the command's error line is the only output (issue 25.8)."""
    monkeypatch.setenv("SIMMTM_DATA_URL_BASE", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("SIMMTM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(importlib.import_module("simmtm.data.download"), "RETRIES", 1)  # one retry: pooch waits 1 s
    config = write_config({"data": {"name": "ETTh1"}, "device": "cpu"})
    for argv in (["pretrain", str(config), "--out", str(tmp_path / "out")], ["validate", str(config), "--data"]):
        assert main(argv) == 2
        out, err = capfd.readouterr()
        lines = err.strip().splitlines()
        assert len(lines) == (2 if argv[0] == "validate" else 1), err
        assert re.search(r"cannot download ETTh1 from \S+ \(.*2 tries\); offline\?", lines[0]), err
        assert "Failed to download" not in err + out and "Downloading file" not in err + out
    assert not (tmp_path / "out").exists()


def test_other_failures(tmp_path: Path, mirror: Mirror) -> None:
    with pytest.raises(DataError, match=r"Traffic must be fetched by hand: .*Time-Series-Library.*traffic\.csv"):
        download(get_dataset("traffic"), tmp_path, progress=False)
    with pytest.raises(DataError, match=r"cannot download ETTm2 from http://127\.0\.0\.1:\d+/ETTm2\.csv \(HTTP 404"):
        download(get_dataset("ETTm2"), tmp_path, progress=False, retries=0)
    mirror.files["NATOPS.zip"] = b"not a zip"
    with pytest.raises(DataError, match=r"NATOPS\.zip: the download is not a valid \.zip archive"):
        download(get_dataset("NATOPS"), tmp_path, progress=False, retries=0)
    assert tree(tmp_path) == []


# --- retries and resuming ----------------------------------------------------------------------------------------


def test_retries_are_counted(tmp_path: Path, mirror: Mirror) -> None:
    mirror.files["ETTh1.csv"] = etth1_bytes()
    mirror.fail = 2
    with pytest.raises(DataError, match=r"\(HTTP 503 Service Unavailable; 2 tries\)"):
        download(ETTH1, tmp_path, progress=False, retries=1)
    assert len(mirror.requests) == 2 and tree(tmp_path) == []

    mirror.fail = 1  # pooch waits 1 s, then the second try gets the file
    [path] = download(ETTH1, tmp_path, progress=False, retries=1)
    assert sha256_file(path) == KNOWN_SHA256["ETTh1.csv"] and len(mirror.requests) == 4


def test_a_broken_transfer_resumes_where_it_stopped(tmp_path: Path, mirror: Mirror) -> None:
    body = etth1_bytes()
    mirror.files["ETTh1.csv"] = body
    mirror.cut_after = 300_000  # of 2.6 MB
    with pytest.raises(DataError, match=r"; the (\d+) bytes in \S+/\.downloads/ETTh1\.csv\.part resume on the next try$"):
        download(ETTH1, tmp_path, progress=False, retries=0)
    assert tree(tmp_path) == [".downloads", ".downloads/ETTh1.csv.part"]  # nothing in the data tree
    kept = (tmp_path / ".downloads" / "ETTh1.csv.part").read_bytes()
    assert 0 < len(kept) <= 300_000 and body.startswith(kept)  # whole chunks of what arrived

    [path] = download(ETTH1, tmp_path, progress=False, retries=0)
    assert mirror.requests == [("ETTh1.csv", None), ("ETTh1.csv", f"bytes={len(kept)}-")]
    assert sha256_file(path) == KNOWN_SHA256["ETTh1.csv"]
    assert tree(tmp_path) == ["ETT-small", "ETT-small/ETTh1.csv"]


def test_a_retry_resumes_within_one_call(tmp_path: Path, mirror: Mirror) -> None:
    mirror.files["ETTh1.csv"] = etth1_bytes()
    mirror.cut_after = 300_000
    [path] = download(ETTH1, tmp_path, progress=False, retries=1)  # pooch waits 1 s before the second try
    assert [(name, bool(wanted)) for name, wanted in mirror.requests] == [("ETTh1.csv", False), ("ETTh1.csv", True)]
    assert sha256_file(path) == KNOWN_SHA256["ETTh1.csv"]


def test_a_server_without_ranges_restarts_from_zero(tmp_path: Path, mirror: Mirror) -> None:
    mirror.files["ETTh1.csv"] = etth1_bytes()
    mirror.ranges = False
    (tmp_path / ".downloads").mkdir()
    (tmp_path / ".downloads" / "ETTh1.csv.part").write_bytes(b"stale bytes from another file")
    [path] = download(ETTH1, tmp_path, progress=False, retries=0)
    assert mirror.requests == [("ETTh1.csv", "bytes=29-")]  # asked for the rest, got the whole file
    assert sha256_file(path) == KNOWN_SHA256["ETTh1.csv"]


# --- the command -------------------------------------------------------------------------------------------------


def test_the_command_downloads_through_the_same_code(
    tmp_path: Path, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror.files["ETTh1.csv"] = etth1_bytes()
    assert main(["data", "download", "etth1", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ETT-small" / "ETTh1.csv")
    assert main(["data", "download", "ETTh1", "NoSuchSet", "--dir", str(tmp_path)]) == 2
    assert "unknown data set 'NoSuchSet'" in capsys.readouterr().err
    assert len(mirror.requests) == 1  # the unknown name failed before any download
