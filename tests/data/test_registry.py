"""Named data sets: resolution under the data directory, the entry point, and downloads from a local server."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import logging
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import platformdirs
import pytest

from simmtm.config import DataConfig
from simmtm.data import registry
from simmtm.data.classification import ClassificationSplits
from simmtm.data.download import KNOWN_SHA256, download, sha256_file
from simmtm.data.forecasting import ForecastingSplits
from simmtm.data.registry import DatasetSpec, data_dir, get_dataset, load_splits, resolve
from simmtm.errors import DataError


def shared_data() -> Path:
    value = os.environ.get("SIMMTM_DATA_DIR")
    assert value, "set SIMMTM_DATA_DIR to the shared data folder (CI: ../shared/data)"
    return Path(value)


@pytest.fixture
def shared_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    root = shared_data().resolve()
    monkeypatch.setenv("SIMMTM_DATA_DIR", str(root))
    return root


# --- names and the data directory ------------------------------------------------------------------------------


def test_names_resolve_case_insensitively_under_the_data_dir(shared_dir: Path) -> None:
    ett = resolve(DataConfig(name="etth1"))
    assert (ett.task, ett.path, ett.name) == ("forecasting", shared_dir / "ETT-small" / "ETTh1.csv", "ETTh1")
    gun = resolve(DataConfig(name="GUNPOINT"))
    assert (gun.task, gun.path) == ("classification", shared_dir / "UCR" / "GunPoint" / "GunPoint_TRAIN.ts")
    assert get_dataset("electricity").name == "ECL"


def test_unknown_name_lists_the_known_ones(shared_dir: Path) -> None:
    with pytest.raises(DataError, match=r"unknown data set 'ETTh9'; known names: ETTh1, ETTh2, .*GunPoint"):
        resolve(DataConfig(name="ETTh9"))


def test_missing_file_points_at_the_download_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMMTM_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"ETTm1\.csv not found.*`simmtm data download ETTm1`") as caught:
        resolve(DataConfig(name="ETTm1"))
    assert str(tmp_path) in str(caught.value)
    with pytest.raises(DataError, match=r"`simmtm data download Weather`.*Time-Series-Library"):
        resolve(DataConfig(name="weather"))


def test_data_dir_defaults_to_the_user_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIMMTM_DATA_DIR", raising=False)
    assert data_dir() == Path(platformdirs.user_cache_dir("simmtm"))


# --- paths and task inference ----------------------------------------------------------------------------------


def test_task_is_inferred_from_the_path(shared_dir: Path, tmp_path: Path) -> None:
    csv = resolve(DataConfig(path=str(shared_dir / "ETT-small" / "ETTh2.csv")))
    assert (csv.task, csv.name) == ("forecasting", "ETTh2")
    ts = resolve(DataConfig(path=str(shared_dir / "UCR" / "BasicMotions" / "BasicMotions_TEST.ts")))
    assert (ts.task, ts.name) == ("classification", "BasicMotions")
    folder = resolve(DataConfig(path=str(shared_dir / "UCR" / "GunPoint")))
    assert (folder.task, folder.name) == ("classification", "GunPoint")
    (tmp_path / "x.npz").write_bytes(b"")
    assert resolve(DataConfig(path=str(tmp_path / "x.npz"))).task == "classification"
    (tmp_path / "x.dat").write_bytes(b"")
    assert resolve(DataConfig(path=str(tmp_path / "x.dat"), task="classification")).task == "classification"
    with pytest.raises(DataError, match=r"x\.dat: cannot tell the task from suffix '\.dat'"):
        resolve(DataConfig(path=str(tmp_path / "x.dat")))


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.path: .*absent\.csv does not exist"):
        resolve(DataConfig(path=str(tmp_path / "absent.csv")))
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(DataError, match=r"x\.npz: forecasting reads a \.csv file"):
        resolve(DataConfig(path=str(tmp_path / "x.npz"), task="forecasting"))


def test_load_splits_is_the_one_entry_point(shared_dir: Path) -> None:
    forecasting = load_splits(DataConfig(name="ETTh1", seq_len=96, features="S"), horizon=24)
    assert isinstance(forecasting, ForecastingSplits)
    assert forecasting.columns == ["OT"] and len(forecasting.val) == 2880 + 96
    classification = load_splits(DataConfig(name="GunPoint", val_fraction=0.1), seed=1)
    assert isinstance(classification, ClassificationSplits)
    assert len(classification.val[0]) == 5 and len(classification.test[0]) == 150


# --- downloads (a local server; never the internet) ------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator:
    """serve(folder) -> base URL of a local HTTP server for that folder."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def point(monkeypatch: pytest.MonkeyPatch, name: str, url: str) -> None:
    key = name.lower()
    spec = registry.DATASETS.get(key) or DatasetSpec(name, "forecasting", (f"toy/{name}.csv",))
    monkeypatch.setitem(registry.DATASETS, key, dataclasses.replace(spec, url=url))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".download-"))


def test_download_verifies_the_known_hash_and_skips_present_files(
    tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = serve(shared_data())
    point(monkeypatch, "ETTh1", f"{base}/ETT-small/ETTh1.csv")
    paths = download("ETTh1", tmp_path, progress=False)
    assert paths == [tmp_path / "ETT-small" / "ETTh1.csv"]
    assert sha256_file(paths[0]) == KNOWN_SHA256["ETTh1.csv"]
    assert not leftovers(tmp_path)

    point(monkeypatch, "ETTh1", f"{base}/no-such-file.csv")  # a fetch would fail now
    assert download("ETTh1", tmp_path, progress=False) == paths


def test_download_rejects_a_corrupt_file_and_leaves_nothing(
    tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "ETTh2.csv").write_bytes((shared_data() / "ETT-small" / "ETTh2.csv").read_bytes()[:-10] + b"0000000000")
    point(monkeypatch, "ETTh2", f"{serve(served)}/ETTh2.csv")
    target = tmp_path / "data"
    with pytest.raises(DataError, match=r"ETTh2\.csv has SHA-256 [0-9a-f]{64}, expected a3dc2c59.*nothing was written"):
        download("ETTh2", target, progress=False)
    assert not (target / "ETT-small" / "ETTh2.csv").exists()
    assert not leftovers(target)


def test_download_extracts_the_ts_pair_from_a_zip(tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "GunPoint.zip", "w") as archive:
        for split in ("TRAIN", "TEST"):
            archive.write(shared_data() / "UCR" / "GunPoint" / f"GunPoint_{split}.ts", f"GunPoint/GunPoint_{split}.ts")
    point(monkeypatch, "GunPoint", f"{serve(served)}/GunPoint.zip")
    target = tmp_path / "data"
    paths = download("gunpoint", target, progress=False)
    folder = target / "UCR" / "GunPoint"
    assert paths == [folder / "GunPoint_TRAIN.ts", folder / "GunPoint_TEST.ts"]
    assert all(sha256_file(p) == KNOWN_SHA256[p.name] for p in paths)
    assert not leftovers(target)


def test_unknown_hash_is_trusted_on_first_use_then_enforced(
    tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "Toy.csv").write_text("date,a\n2020-01-01,1\n")
    point(monkeypatch, "Toy", f"{serve(served)}/Toy.csv")
    target = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="simmtm.data.download"):
        [path] = download("Toy", target, progress=False)
    assert "trust on first use" in caplog.text
    recorded = (target / "toy" / "Toy.csv.sha256").read_text().split()[0]
    assert recorded == hashlib.sha256(path.read_bytes()).hexdigest()

    path.unlink()
    (served / "Toy.csv").write_text("date,a\n2020-01-01,2\n")  # upstream changed
    message = r"expected [0-9a-f]{64} \(the hash recorded on first download in .*Toy\.csv\.sha256\)"
    with pytest.raises(DataError, match=message):
        download("Toy", target, progress=False)
    assert not path.exists() and not leftovers(target)


def test_download_errors(tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match=r"Traffic must be fetched by hand: .*Time-Series-Library.*traffic\.csv"):
        download("traffic", tmp_path, progress=False)
    point(monkeypatch, "ETTm2", f"{serve(tmp_path)}/absent.csv")
    with pytest.raises(DataError, match=r"cannot download http://127\.0\.0\.1:\d+/absent\.csv: .*check the network"):
        download("ETTm2", tmp_path / "data", progress=False)
    (tmp_path / "NATOPS.zip").write_bytes(b"not a zip")
    point(monkeypatch, "NATOPS", f"{serve(tmp_path)}/NATOPS.zip")
    with pytest.raises(DataError, match=r"NATOPS\.zip: the download is not a valid \.zip archive"):
        download("NATOPS", tmp_path / "data", progress=False)
    assert not leftovers(tmp_path / "data")
