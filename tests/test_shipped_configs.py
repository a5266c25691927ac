"""Every run/sweep YAML shipped under sweeps/ and benchmarks/ loads, and opens with a header comment that says how to
run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from simmtm.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"
SHIPPED = sorted(SWEEPS.rglob("*.yaml")) + sorted((ROOT / "benchmarks").rglob("*.yaml"))
KNOWN = {"quick.yaml", "etth1.yaml", "gunpoint.yaml", "search_problem.yaml"}


def test_the_shipped_configs_are_all_found() -> None:
    assert len(SHIPPED) >= 4  # the four below when this test was last changed; sweep files are added over time
    assert KNOWN <= {p.name for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.data.name or config.data.path


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_shipped_config_has_a_header_with_its_command(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines and lines[0].startswith("#"), f"{path.name}: the first line must be a '#' header comment"
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert any("simmtm " in line for line in header), f"{path.name}: the header must show the `simmtm ...` command"
