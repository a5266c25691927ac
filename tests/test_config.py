"""The typed run config: defaults, validation messages, overrides, YAML reading and the resolved dump."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from simmtm.config.schema import (
    SWEEP_SECTIONS,
    RunConfig,
    apply_overrides,
    dump_config,
    load_config,
    parse_config,
)
from simmtm.errors import ConfigError


def test_paper_defaults() -> None:
    config = parse_config({"data": {"name": "ETTh1"}})
    assert (config.pretrain.mask_ratio, config.pretrain.num_masked, config.pretrain.temperature) == (0.5, 3, 0.2)
    assert config.pretrain.mask_length == 3.0 and config.pretrain.masking == "geometric"
    assert config.data.seq_len == 336 and config.finetune.horizons == [96, 192, 336, 720]
    assert (config.model.d_model, config.model.n_heads, config.model.n_layers, config.model.d_ff) == (32, 16, 3, 64)
    assert config.pretrain.loss_weighting == "auto"


@pytest.mark.parametrize(
    "raw, expected",
    [
        (
            {"data": {"name": "x"}, "pretrain": {"mask_ratoi": 0.3}},
            r"unknown key 'pretrain.mask_ratoi' \(did you mean 'pretrain.mask_ratio'\?\); valid keys here: .*num_masked",
        ),
        ({"data": {"name": "x"}, "sed": 1}, r"unknown key 'sed' \(did you mean 'seed'\?\); valid keys here: .*data"),
        (
            {"data": {"name": "x"}, "pretrain": {"num_masked": "three"}},
            r"pretrain.num_masked: .*valid integer.*'three'",
        ),
        ({"data": {"name": "x"}, "pretrain": {"mask_ratio": 0}}, r"pretrain.mask_ratio: .*greater than 0 \(got 0\)"),
        ({"data": {"name": "x"}, "pretrain": {"mask_ratio": 1}}, r"pretrain.mask_ratio: .*less than 1 \(got 1\)"),
        ({"data": {"name": "x"}, "pretrain": {"mask_ratio": 1.5}}, r"pretrain.mask_ratio: .*less than 1 \(got 1.5\)"),
        ({"data": {"name": "x"}, "pretrain": {"num_masked": 0}}, r"pretrain.num_masked: .*greater than or equal to 1"),
        ({"data": {"name": "x"}, "model": {"encoder_name": "patch"}}, r"unknown key 'model.encoder_name'"),
        ({"data": {"name": "x"}, "device": "tpu"}, r"device: .*'auto', 'cpu' or 'cuda'"),
        ({"data": {"name": "x"}, "finetune": {"horizons": [96, 0]}}, r"finetune: horizons must be .*positive"),
        ({"data": {"name": "x"}, "finetune": {"mode": "frozen"}}, r"finetune.mode: .*'full' or 'probe'"),
        ({"data": {}}, r"set data.name .* or data.path"),
        ({}, r"missing key 'data'"),
    ],
)
def test_invalid_configs_name_the_key_and_what_is_valid(raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        parse_config(raw, source="my.yaml")
    message = str(info.value)
    assert message.startswith("my.yaml: ")
    assert "\n" not in message


def test_several_problems_are_reported_as_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"data": {"name": "x"}, "pretrain": {"mask_ratio": 2, "num_masked": 0}})
    assert "\n" not in str(info.value) and "(and 1 more problem(s))" in str(info.value)


def test_overrides_parse_values_as_yaml() -> None:
    raw = apply_overrides(
        {"data": {"name": "x"}},
        [
            "pretrain.mask_ratio=0.3",
            "pretrain.num_masked=5",
            "finetune.horizons=[24, 48]",
            "model.encoder=patch",
            "seed=7",
        ],
    )
    config = parse_config(raw)
    assert config.pretrain.mask_ratio == 0.3 and config.pretrain.num_masked == 5
    assert config.finetune.horizons == [24, 48] and config.model.encoder == "patch" and config.seed == 7


@pytest.mark.parametrize(
    "override, expected",
    [
        ("pretrain.mask_ratio", r"--set: 'pretrain.mask_ratio' is not key=value"),
        ("seed.value=1", r"--set: 'seed.value': 'seed' is a value, not a section"),
    ],
)
def test_malformed_overrides(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        apply_overrides({"data": {"name": "x"}, "seed": 0}, [override])


def test_load_config_reads_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("# a run\ndata:\n  name: ETTh1\npretrain:\n  mask_ratio: 0.4\n")
    config = load_config(path, ["pretrain.num_masked=4"])
    assert config.pretrain.mask_ratio == 0.4 and config.pretrain.num_masked == 4
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'pretrain.masked'"):
        load_config(path, ["pretrain.masked=4"])


@pytest.mark.parametrize(
    "content, expected",
    [
        ("data: [unclosed\n", r"not valid YAML at line \d+"),
        ("", r"the file is empty; a config needs at least a data section"),
        ("- a\n- list\n", r"expected a mapping of sections"),
        (b"\xff\xfe\x00garbage\x00\x81", r"cannot read"),
    ],
)
def test_unusable_yaml_files(tmp_path: Path, content, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=rf"{path}: {expected}"):
        load_config(path)


@pytest.mark.parametrize(
    ("content", "key", "lines"),
    [
        ("data:\n  name: ETTh1\npretrain:\n  mask_ratio: 0.3\n  mask_ratio: 0.5\n", "pretrain.mask_ratio", (4, 5)),
        ("data:\n  name: ETTh1\npretrain:\n  epochs: 2\nseed: 1\npretrain:\n  lr: 0.1\n", "pretrain", (3, 6)),
        (
            "data: {name: ETTh1}\nsearch:\n  params:\n    a.b: {low: 1}\n    a.b: {low: 2}\n",
            "search.params.a.b",
            (4, 5),
        ),
        ("data: {name: ETTh1, name: ETTh2}\n", "data.name", (1, 1)),
        ("data:\n  name: ETTh1\nx:\n  - {k: 1, k: 2}\n", "x[0].k", (4, 4)),
    ],
)
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path: Path, content, key, lines) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(content)
    with pytest.raises(
        ConfigError, match=rf"{path}: key '{re.escape(key)}' appears twice, at lines {lines[0]} and {lines[1]}"
    ):
        load_config(path)


def test_the_same_key_in_different_sections_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("data:\n  name: ETTh1\npretrain:\n  lr: 0.01\nfinetune:\n  lr: 0.001\n")
    config = load_config(path)
    assert (config.pretrain.lr, config.finetune.lr) == (0.01, 0.001)


def test_missing_or_directory_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=f"{tmp_path}: is a directory; expected a YAML config file"):
        load_config(tmp_path)


def test_sweep_sections_are_accepted_and_left_out_of_the_run(tmp_path: Path) -> None:
    raw = {
        "data": {"name": "ETTh1"},
        "search": {"pretrain.mask_ratio": [0.3, 0.5]},
        "tune": {"num_samples": 2},
        "resources": {"cpu": 1},
    }
    config = parse_config(raw)
    assert set(SWEEP_SECTIONS) == {"search", "tune", "resources"}
    assert not set(SWEEP_SECTIONS) & set(config.run_dict())


def test_dumped_config_loads_back_identically(tmp_path: Path) -> None:
    config = parse_config(
        {
            "data": {"path": "x.csv", "seq_len": 48},
            "pretrain": {"mask_ratio": 0.25},
            "finetune": {"horizons": [12]},
            "search": {"a": 1},
        }
    )
    dump_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == RunConfig.model_validate(config.run_dict())
    assert "search" not in yaml.safe_load((tmp_path / "config.yaml").read_text())
