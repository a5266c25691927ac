"""Write targets are checked before any work: a file where a folder is needed (or the reverse), an unwritable place,
and somebody else's file each give one line; nothing is created by the check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from simmtm.errors import UserError
from simmtm.outdir.write_targets import check_output_file, check_output_folder

IS_ROOT = os.geteuid() == 0


def unwritable(tmp_path: Path) -> Path:
    if IS_ROOT:
        return Path("/sys")  # sysfs refuses even root; permission bits do not stop root
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def test_folder_targets(tmp_path: Path) -> None:
    check_output_folder(tmp_path / "new" / "deeper")  # creatable: fine, and not created by the check
    check_output_folder(tmp_path)
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"--out .*afile: is a file, not a folder"):
        check_output_folder(tmp_path / "afile")
    with pytest.raises(UserError, match=r"afile is a file, so no folder can be made under it"):
        check_output_folder(tmp_path / "afile" / "run", option="--out")
    with pytest.raises(UserError, match=r"cannot write in .*choose a writable place"):
        check_output_folder(unwritable(tmp_path) / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] + ([] if IS_ROOT else ["ro"])


def test_file_targets(tmp_path: Path) -> None:
    marker = "the run config recommended by `simmtm recommend"
    ours, theirs = tmp_path / "best.yaml", tmp_path / "data.csv"
    ours.write_text(f"# best.yaml: {marker} runs/s`\nseed: 0\n")
    theirs.write_text("date,OT\n2020-01-01,1\n")
    check_output_file(ours, option="--write", marker=marker)  # ours: may be replaced
    check_output_file(tmp_path / "sub" / "new.yaml", option="--write", marker=marker)
    with pytest.raises(UserError, match=r"--write .*data.csv: exists and was not written by simmtm; pass --force"):
        check_output_file(theirs, option="--write", marker=marker)
    check_output_file(theirs, option="--write", marker=marker, force=True)
    with pytest.raises(UserError, match=r"is a folder; name a file"):
        check_output_file(tmp_path, option="--write", marker=marker)
    with pytest.raises(UserError, match=r"data.csv is a file"):
        check_output_file(theirs / "x.yaml", option="--write", marker=marker)
    with pytest.raises(UserError, match=r"cannot write in"):
        check_output_file(unwritable(tmp_path) / "b.yaml", option="--write", marker=marker)
    assert theirs.read_text().startswith("date,OT") and not (tmp_path / "sub").exists()
