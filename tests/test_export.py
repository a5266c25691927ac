"""simmtm export and simmtm.load_encoder: safetensors weights, config.json and a model card, on tiny real runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import simmtm
from simmtm.cli import main
from simmtm.method.model import masked_instance_norm
from simmtm.train.checkpoint import encoder_state, load_state
from simmtm.weights.exporting import export_encoder, load_encoder

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.fixture
def pre_run(tmp_path: Path, tiny_config) -> Path:
    out = tmp_path / "pre"
    simmtm.pretrain(tiny_config({"pretrain": {"mask_ratio": 0.3, "num_masked": 2, "temperature": 0.15}}), out=out)
    return out


def test_export_writes_weights_config_and_card_and_loads_the_trained_encoder(pre_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "encoder"
    assert main(["export", str(pre_run), "--out", str(out)]) == 0
    assert "simmtm.load_encoder" in capsys.readouterr().out
    state = load_state(pre_run / "checkpoints" / "best.pt")
    trained = encoder_state(state["model"])
    saved = load_file(str(out / "encoder.safetensors"))  # any safetensors reader, no simmtm
    assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k]) for k in saved)

    described = json.loads((out / "config.json").read_text())
    assert (described["seq_len"], described["channels"], described["channel_independent"]) == (24, 2, True)
    encoder = load_encoder(out)
    assert not encoder.training
    x = torch.randn(5, 24, 2)
    z = encoder(x)
    assert z.shape == (5, 24, 2 * 8) == (5, 24, encoder.out_dim)  # (B, T, C*D): each channel's D side by side

    # the same numbers as the pre-trained SimMTM's own encoder on the normalised channels
    model = simmtm.load_pretrained(pre_run, checkpoint="last")
    series = x.permute(0, 2, 1).reshape(10, 24, 1)
    normed, _, _ = masked_instance_norm(series, torch.ones_like(series, dtype=torch.bool))
    with torch.no_grad():
        expected = model.encoder(normed).view(5, 2, 24, 8).permute(0, 2, 1, 3).reshape(5, 24, 16)
        assert torch.allclose(encoder(x), expected, atol=1e-6)

    card = (out / "README.md").read_text()
    for text in ("series.csv", "| r (pretrain.mask_ratio) | 0.3 |", "| M (pretrain.num_masked) | 2 |",
                 "| tau (pretrain.temperature) | 0.15 |", "val_loss", "not chosen by a sweep"):
        assert text in card, text


def test_the_api_doc_example_runs_on_an_exported_run(pre_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", API_DOC.read_text(), flags=re.DOTALL)
    example = next(b for b in blocks if "simmtm.load_encoder" in b)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the example's relative paths, as a user's script in that folder
    # the page's earlier blocks import simmtm and pre-train `pre`; here `pre` is this test's run. In this process
    # with a namespace of its own, not a fresh interpreter (10-30 s of imports).
    setup = f"import simmtm\nfrom types import SimpleNamespace\npre = SimpleNamespace(run_dir={str(pre_run)!r})\n"
    exec(compile(setup + example, str(API_DOC), "exec"), {"__name__": "__main__"})
    assert "torch.Size([8, 24, 16])" in capsys.readouterr().out


def test_a_simmtm_run_directory_exports_its_pretraining_with_the_downstream_scores(tmp_path: Path, tiny_config, write_config) -> None:
    config = write_config(tiny_config({"finetune": {"horizons": [4]}}))
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "enc")]) == 0
    described = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert described["source"]["kind"] == "pre-training" and described["source"]["checkpoint"].endswith("pretrain/checkpoints/best.pt")
    card = (tmp_path / "enc" / "README.md").read_text()
    assert "downstream, fine-tuned (test): mse" in card and "random-init baseline (test): mse" in card
    assert "- forecasting" in card.split("---")[1]  # the Hub tag of the task


def test_a_finetuning_run_exports_its_finetuned_encoder(pre_run: Path, tmp_path: Path, tiny_config) -> None:
    ft = simmtm.finetune(tiny_config({"finetune": {"horizons": [4]}}), out=tmp_path / "ft", pretrained=pre_run)
    main(["export", str(ft.run_dir), "--out", str(tmp_path / "enc")])
    tuned = encoder_state(load_state(ft.run_dir / "checkpoints" / "h4" / "best.pt")["model"])
    loaded = load_encoder(tmp_path / "enc").encoder.state_dict()
    assert all(torch.equal(loaded[k], tuned[k]) for k in tuned)
    assert "fine-tuned for stage `h4`" in (tmp_path / "enc" / "README.md").read_text()


def test_a_classification_encoder_sees_all_channels_at_once_and_names_a_wrong_shape(tmp_path: Path, make_config, shared_data) -> None:
    raw = make_config(Path("unused.csv"), {"data": {"path": None, "name": "BasicMotions", "seq_len": 100},
                                           "pretrain": {"max_steps": 1}, "model": {"instance_norm": False}})
    simmtm.pretrain(raw, out=tmp_path / "pre")
    export_encoder(tmp_path / "pre", tmp_path / "enc")
    encoder = load_encoder(tmp_path / "enc")
    assert (encoder.seq_len, encoder.channels, encoder.channel_independent) == (100, 6, False)
    metadata = yaml.safe_load((tmp_path / "enc" / "README.md").read_text().split("---\n")[1])
    assert metadata["datasets"] == ["BasicMotions"] and "classification" in metadata["tags"]
    assert encoder(torch.randn(3, 100, 6)).shape == (3, 100, 8)
    with pytest.raises(ValueError, match=r"expected series of shape \(B, L, 6\), got \(3, 100, 2\)"):
        encoder(torch.randn(3, 100, 2))


def test_not_a_run_is_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--out", str(tmp_path / "enc")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no simmtm checkpoint" in err[0]
    assert not (tmp_path / "enc").exists()
    with pytest.raises(simmtm.UserError, match="not an exported encoder"):
        load_encoder(tmp_path / "empty")


def test_the_card_opens_with_the_hubs_metadata_block(pre_run: Path, tmp_path: Path) -> None:
    export_encoder(pre_run, tmp_path / "enc")
    card = (tmp_path / "enc" / "README.md").read_text()
    assert card.startswith("---\n")
    block, body = card.removeprefix("---\n").split("\n---\n", 1)
    metadata = yaml.safe_load(block)
    assert metadata["library_name"] == "simmtm" and metadata["license"] == "mit"
    assert {"simmtm", "time-series", "forecasting"} <= set(metadata["tags"])
    assert metadata["datasets"] == ["series"]  # the data file's stem (a named set gives its name)
    base = metadata["base_config"]
    described = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert base["model"] == described["model"] and (base["seq_len"], base["channels"]) == (24, 2)
    assert base["pretrain"] == {"mask_ratio": 0.3, "num_masked": 2, "temperature": 0.15, "masking": "geometric"}
    assert body.lstrip().startswith("# simmtm encoder: series.csv")


OLD_EXPORT = Path(__file__).resolve().parent / "fixtures" / "export_fe53652"


def test_an_export_of_the_previous_release_loads_and_gives_its_numbers() -> None:
    """tests/fixtures/export_fe53652 was written by the code at commit fe53652 (run with this .venv and
    PYTHONPATH=<a worktree of fe53652>): `simmtm pretrain` of a 1-step run (d_model 4, d_ff 4, seq_len 16, two
    channels), `simmtm export`, then `expected.safetensors` = that release's `load_encoder(...)(x)` on a fixed x.
    The card (README.md) is left out: load_encoder does not read it."""
    expected = load_file(str(OLD_EXPORT / "expected.safetensors"))
    encoder = load_encoder(OLD_EXPORT)
    assert (encoder.seq_len, encoder.channels, encoder.channel_independent) == (16, 2, True)
    with torch.no_grad():
        z = encoder(expected["x"])
    assert z.shape == expected["z"].shape == (2, 16, 8)
    assert torch.allclose(z, expected["z"], atol=1e-6)


def test_export_refuses_a_users_folder_and_replaces_an_earlier_export(pre_run: Path, tmp_path: Path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# my notes\n")
    (mine / "config.json").write_text("{}\n")
    assert main(["export", str(pre_run), "--out", str(mine)]) == 2
    assert "not a simmtm export folder" in capsys.readouterr().err
    assert (mine / "README.md").read_text() == "# my notes\n" and sorted(p.name for p in mine.iterdir()) == [
        "README.md", "config.json"]
    out = tmp_path / "enc"
    assert main(["export", str(pre_run), "--out", str(out)]) == 0
    (out / "encoder.safetensors").write_bytes(b"stale")
    assert main(["export", str(pre_run), "--out", str(out)]) == 0  # an earlier export is replaced
    assert load_encoder(out).out_dim == 16
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "encoder.safetensors"]
