"""Every import declared: deptry, configured in pyproject.toml, passes on the package and fails on an undeclared one.

(The install itself, a plain `pip install .` in a fresh environment, is scripts/install_check.sh, run by .ci/run.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPTRY = Path(sys.executable).with_name("deptry")  # the dev extra's


def _deptry(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEPTRY), ".", "--no-ansi"], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )


def test_every_third_party_import_of_the_package_is_declared() -> None:
    done = _deptry(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_import_that_only_another_package_brings_fails_the_check(tmp_path: Path) -> None:
    package = "psutil"  # every command imports it; before it was declared, a plain pip install failed on it
    shutil.copytree(ROOT / "simmtm", tmp_path / "simmtm", ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared = [line for line in pyproject.splitlines() if line.strip().startswith(f'"{package}>=')]
    assert len(declared) == 1, f"{package} is declared once in the core dependencies"
    (tmp_path / "pyproject.toml").write_text(pyproject.replace(declared[0] + "\n", ""))
    done = _deptry(tmp_path)
    assert done.returncode != 0
    assert f"DEP003 '{package}' imported but it is a transitive dependency" in done.stdout + done.stderr
