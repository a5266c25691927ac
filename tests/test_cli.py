"""Bad input through the real `simmtm` entry point: exit code 2, one line on stderr naming the key or file and
what would be valid, and nothing written (no output directory; an existing one untouched)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from simmtm.cli import main


def snapshot(directory: Path) -> dict[str, bytes] | None:
    """Every file under ``directory`` with its bytes (None when it does not exist)."""
    if not directory.exists():
        return None
    files = sorted(directory.rglob("*"))
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"<dir>" for p in files}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _csv_with(tmp_path: Path, column: list) -> dict:
    frame = pd.read_csv(tmp_path / "series.csv")  # the tiny_csv fixture's file
    frame["c1"] = (column * len(frame))[: len(frame)]
    frame.to_csv(tmp_path / "bad.csv", index=False)
    return {"data": {"path": str(tmp_path / "bad.csv")}}


def _ts_pair(tmp_path: Path) -> dict:
    head = "@problemName toy\n@univariate true\n@equalLength true\n@classLabel true a b\n@data\n"
    (tmp_path / "toy_TRAIN.ts").write_text(head + "1,2,3,4:a\n1,2,3:b\n2,3,4,5:a\n")
    (tmp_path / "toy_TEST.ts").write_text(head + "1,2,3,4:a\n1,2,3,4:b\n")
    return {"data": {"path": str(tmp_path / "toy_TRAIN.ts"), "seq_len": 4}}


def _garbage_csv(tmp_path: Path) -> dict:
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (tmp_path / "garbage.csv").write_bytes(noise)
    return {"data": {"path": str(tmp_path / "garbage.csv")}}


def _directory_csv(tmp_path: Path) -> dict:
    (tmp_path / "folder.csv").mkdir()
    return {"data": {"path": str(tmp_path / "folder.csv")}}


@dataclass
class Case:
    setup: Callable[[Path], dict]  # gets tmp_path (holding the tiny CSV), returns config changes
    expected: str  # a pattern the error line must match
    args: list[str] = field(default_factory=list)  # extra CLI arguments
    commands: tuple[str, ...] = ("pretrain", "finetune", "run")  # the commands that meet this problem


def _changes(changes: dict) -> Callable[[Path], dict]:
    return lambda tmp_path: changes


CASES: dict[str, Case] = {
    "unknown key": Case(
        _changes({"pretrain": {"mask_ratoi": 0.3}}),
        r"unknown key 'pretrain.mask_ratoi' \(did you mean 'pretrain.mask_ratio'\?\); valid keys here: .*num_masked"),
    "wrong type": Case(_changes({"pretrain": {"num_masked": "three"}}), r"pretrain.num_masked: .*valid integer"),
    "mask_ratio 0": Case(_changes({"pretrain": {"mask_ratio": 0}}), r"pretrain.mask_ratio: .*greater than 0"),
    "mask_ratio 1": Case(_changes({"pretrain": {"mask_ratio": 1}}), r"pretrain.mask_ratio: .*less than 1"),
    "mask_ratio 1.5": Case(_changes({"pretrain": {"mask_ratio": 1.5}}), r"pretrain.mask_ratio: .*less than 1"),
    "num_masked 0": Case(_changes({"pretrain": {"num_masked": 0}}), r"pretrain.num_masked: .*greater than or equal to 1"),
    "seq_len too long": Case(
        _changes({"data": {"seq_len": 500}}),
        r"series.csv: seq_len 500 .* longer than the train split .*maximum valid seq_len is \d+"),
    "non-numeric column": Case(lambda t: _csv_with(t, ["a", "b"]), r"bad.csv: non-numeric column\(s\) \['c1'\]"),
    "NaN column": Case(lambda t: _csv_with(t, [1.0, np.nan]), r"bad.csv: missing values in column\(s\) 'c1'"),
    "missing data file": Case(lambda t: {"data": {"path": str(t / "nope.csv")}}, r"data.path: .*nope.csv does not exist"),
    "binary data file": Case(_garbage_csv, r"garbage.csv: cannot read as CSV"),
    "directory as data file": Case(_directory_csv, r"folder.csv:? is a folder; a .csv data path names a file"),
    "unequal .ts lengths": Case(_ts_pair, r"toy_TRAIN.ts: line \d+: series length 3 differs from 4"),
    "unknown data name": Case(_changes({"data": {"path": None, "name": "ETTh9"}}),
                              r"unknown data set 'ETTh9'; known names: ETTh1"),
    "heads do not divide width": Case(_changes({"model": {"n_heads": 3}}),
                                      r"model.d_model \(8\) must be divisible by model.n_heads \(3\)"),
    "set without =": Case(_changes({}), r"--set: 'pretrain.mask_ratio' is not key=value",
                          ["--set", "pretrain.mask_ratio"]),
    "set unknown key": Case(_changes({}), r"unknown key 'pretrain.ratio' \(did you mean",
                            ["--set", "pretrain.ratio=0.3"]),
    "set wrong type": Case(_changes({}), r"pretrain.mask_ratio: .*valid number",
                           ["--set", "pretrain.mask_ratio=high"]),
    "set into a value": Case(_changes({}), r"'seed' is a value, not a section", ["--set", "seed.x=1"]),
    # only pre-training meets this one (fine-tuning has its own batch size)
    "batch larger than the data": Case(
        _changes({"pretrain": {"batch_size": 1000}}),
        r"pretrain.batch_size \(1000\) exceeds the 201 training samples .*use at most 201",
        commands=("pretrain", "run")),
    # pre-training never reads the horizons
    "horizon longer than a split": Case(
        _changes({"finetune": {"horizons": [4, 100]}}),
        r"horizon 100 is longer than the validation split .*maximum valid horizon is \d+",
        commands=("finetune", "run")),
}



def config_file(case: str, tmp_path: Path, tiny_config, write_config) -> tuple[Path, list[str], str]:
    spec = CASES[case]
    return write_config(tiny_config(spec.setup(tmp_path))), spec.args, spec.expected


def check_refused(argv: list[str], out_dir: Path, expected: str, capsys) -> None:
    before = snapshot(out_dir)
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"simmtm {argv[0]}: error: ")
    assert re.search(expected, lines[0]), lines[0]
    assert snapshot(out_dir) == before  # no directory created, an existing one untouched


@pytest.mark.parametrize(
    "command, case",
    [pytest.param(command, case)
     for case, spec in CASES.items() for command in spec.commands],
)
def test_bad_input_is_refused(command: str, case: str, tmp_path: Path, tiny_config, write_config, capsys) -> None:
    path, args, expected = config_file(case, tmp_path, tiny_config, write_config)
    argv = [command, str(path), "--out", str(tmp_path / "out"), *args, "--no-progress"]
    check_refused(argv, tmp_path / "out", expected, capsys)


@pytest.mark.parametrize(
    "case, command",
    [
        ("unknown key", "pretrain"), ("mask_ratio 0", "pretrain"), ("seq_len too long", "pretrain"),
        ("missing data file", "pretrain"), ("unknown key", "run"), ("seq_len too long", "run"),
        ("unknown key", "finetune"), ("mask_ratio 0", "finetune"),
        pytest.param("seq_len too long", "finetune"),
        pytest.param("NaN column", "finetune"),
        pytest.param("batch larger than the data", "pretrain"),
    ],
)
def test_an_existing_output_directory_is_left_untouched(case: str, command: str, tmp_path: Path, tiny_config,
                                                        write_config, capsys) -> None:
    """Even with --overwrite, which would discard an earlier run, bad input leaves it as it was."""
    path, args, expected = config_file(case, tmp_path, tiny_config, write_config)
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text("seed: 1\n")
    (out / "metrics.json").write_text("{}\n")
    (out / "checkpoints" / "last.pt").write_bytes(b"not really a checkpoint")
    check_refused([command, str(path), "--out", str(out), *args, "--overwrite"], out, expected, capsys)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files without read permission")
def test_files_without_read_permission(tmp_path: Path, tiny_config, write_config, capsys) -> None:
    (tmp_path / "series.csv").chmod(0)
    path = write_config(tiny_config())
    check_refused(["pretrain", str(path), "--out", str(tmp_path / "out")], tmp_path / "out",
                  r"series.csv: cannot read as CSV: .*Permission denied", capsys)
    (tmp_path / "series.csv").chmod(0o644)
    path.chmod(0)
    check_refused(["pretrain", str(path), "--out", str(tmp_path / "out")], tmp_path / "out",
                  r"config.yaml: cannot read: .*Permission denied", capsys)


@pytest.mark.parametrize("name", ["missing.yaml", "a_directory"])
def test_missing_or_unreadable_config_file(name: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "a_directory").mkdir()
    for command in ("pretrain", "finetune", "run"):
        check_refused([command, str(tmp_path / name), "--out", str(tmp_path / "out")], tmp_path / "out", name, capsys)


@pytest.mark.parametrize("content, expected", [("data:\n  path: [x\n", r"not valid YAML at line \d+"),
                                               (b"\x00\xff\xfe\x81garbage", r"cannot read")])
def test_invalid_yaml_file(content, expected: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for command in ("pretrain", "finetune", "run", "validate"):
        argv = [command, str(path)] + ([] if command == "validate" else ["--out", str(tmp_path / "out")])
        code, _, err = run_cli(argv, capsys)
        assert code == 2
        assert "bad.yaml" in err and re.search(expected, err), err
        assert not (tmp_path / "out").exists()


def test_finetune_from_a_directory_without_a_checkpoint(tmp_path: Path, tiny_config, write_config, capsys) -> None:
    path = write_config(tiny_config())
    (tmp_path / "empty").mkdir()
    check_refused(["finetune", str(path), "--from", str(tmp_path / "empty"), "--out", str(tmp_path / "out")],
                  tmp_path / "out", r"empty: not a pre-training run directory .*run `simmtm pretrain` first", capsys)


def test_validate_reports_each_file_and_fails_with_2(tmp_path: Path, tiny_config, write_config, capsys) -> None:
    good = write_config(tiny_config(), "good.yaml")
    bad = write_config(tiny_config({"pretrain": {"mask_ratio": 1.5}}), "bad.yaml")
    code, out, err = run_cli(["validate", str(good), str(bad), "--data"], capsys)
    assert code == 2
    assert f"ok   {good}" in out
    assert "FAIL" in err and "bad.yaml: pretrain.mask_ratio" in err and "1 of 2 config(s) invalid" in err
    assert run_cli(["validate", str(good), "--data"], capsys)[0] == 0


@pytest.mark.slow  # two fresh interpreters importing torch: 8-25 s
def test_one_line_on_the_real_stderr(tmp_path: Path, tiny_config, write_config) -> None:
    """As a separate process (logging and warnings included), a config and a data error each print one line."""
    env = dict(os.environ)
    for changes, expected in (({"pretrain": {"mask_ratoi": 0.3}}, "unknown key 'pretrain.mask_ratoi'"),
                              (_csv_with(tmp_path, [1.0, np.nan]), "missing values in column(s) 'c1'")):
        path = write_config(tiny_config(changes))
        done = subprocess.run([sys.executable, "-m", "simmtm", "pretrain", str(path), "--out", str(tmp_path / "out")],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 2
        assert done.stdout == ""
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert expected in done.stderr
        assert not (tmp_path / "out").exists()


# --- one grammar: global flags anywhere, the config first, --overwrite, `simmtm config` -----------------------------


@pytest.mark.parametrize(
    "argv, verbose, quiet",
    [
        (["-v", "validate", "c.yaml"], 1, False),
        (["validate", "c.yaml", "-v"], 1, False),
        (["validate", "-vv", "c.yaml"], 2, False),
        (["pretrain", "c.yaml", "--out", "o", "-q"], 0, True),
        (["-q", "data", "list"], 0, True),
        (["data", "list", "-v"], 1, False),  # a subcommand's own subcommand takes them too
        (["validate", "c.yaml"], 0, False),
    ],
)
def test_global_flags_work_anywhere_on_the_line(argv: list[str], verbose: int, quiet: bool) -> None:
    from simmtm.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.verbose, args.quiet) == (verbose, quiet)


def test_validate_takes_v_after_the_file(tmp_path: Path, tiny_config, write_config, capsys) -> None:
    path = write_config(tiny_config())
    code, out, err = run_cli(["validate", str(path), "-v"], capsys)
    assert (code, out.strip(), err) == (0, f"ok   {path}", "")


def test_config_prints_what_a_run_saves_and_exits(tmp_path: Path, tiny_config, write_config, capsys) -> None:
    path = write_config({**tiny_config(), "tune": {"num_samples": 2}, "search": {"method": "random"}})
    code, printed, err = run_cli(["config", str(path), "--set", "pretrain.mask_ratio=0.3", "-q"], capsys)
    assert code == 0 and err == ""
    assert not (tmp_path / "out").exists()
    assert main(["pretrain", str(path), "--out", str(tmp_path / "out"), "--set", "pretrain.mask_ratio=0.3",
                 "--no-progress"]) == 0
    assert printed == (tmp_path / "out" / "config.yaml").read_text()  # the run's own record, byte for byte
    parsed = yaml.safe_load(printed)
    assert parsed["pretrain"]["mask_ratio"] == 0.3 and "tune" not in parsed and parsed["loggers"] == ["tensorboard"]
    code, _, err = run_cli(["config", str(path), "--set", "pretrain.ratio=0.3"], capsys)
    assert code == 2 and "unknown key 'pretrain.ratio'" in err and len(err.strip().splitlines()) == 1


def test_restart_still_works_with_a_one_line_deprecation(tmp_path: Path, tiny_config, write_config, capsys) -> None:
    from simmtm.train.checkpoint import load_state

    path, out = write_config(tiny_config()), tmp_path / "out"
    assert run_cli(["pretrain", str(path), "--out", str(out), "--no-progress"], capsys)[0] == 0
    argv = ["pretrain", str(path), "--out", str(out), "--set", "pretrain.mask_ratio=0.3", "--no-progress"]
    code, _, err = run_cli([*argv, "--restart"], capsys)
    assert code == 0
    assert err.strip() == ("simmtm pretrain: --restart is deprecated and will be removed in the next release; "
                           "use --overwrite")
    state = load_state(out / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step"], state["config"]["pretrain"]["mask_ratio"]) == (1, 3, 0.3)  # afresh


def test_import_official_takes_the_config_first_and_still_reads_config_flag(tmp_path: Path, capsys) -> None:
    from test_official import official_config, official_model, save_official

    checkpoint, config = save_official(tmp_path, official_model().state_dict()), official_config(tmp_path)
    code, out, err = run_cli(["import-official", str(config), str(checkpoint), "--out", str(tmp_path / "new")], capsys)
    assert (code, err) == (0, "") and f"simmtm finetune {config} --from" in out
    code, _, err = run_cli(["import-official", str(checkpoint), "--config", str(config), "--out", str(tmp_path / "old")],
                           capsys)
    assert code == 0 and err.strip() == (
        "simmtm import-official: --config CONFIG is deprecated and will be removed in the next release; "
        "use simmtm import-official CONFIG CKPT")
    assert (tmp_path / "new" / "config.yaml").read_text() == (tmp_path / "old" / "config.yaml").read_text()
    code, _, err = run_cli(["import-official", str(checkpoint), "--out", str(tmp_path / "none")], capsys)
    assert code == 2 and "give the config first: simmtm import-official CONFIG CKPT" in err
    assert not (tmp_path / "none").exists()
