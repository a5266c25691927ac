"""Tiny real runs of pre-training and fine-tuning: the run directory, resumption, the downstream metrics, and
that fine-tuning really starts from the pre-trained encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from simmtm.cli import main
from simmtm.config.schema import load_config, parse_config
from simmtm.train import finetuning as finetune
from simmtm.train import pretraining as pretrain
from simmtm.train.checkpoint import encoder_state

# stride 8 over the 224 train rows of the tiny CSV: 26 windows, 3 steps of 8 per epoch
RESUMABLE = {"data": {"stride": 8}, "pretrain": {"max_steps": None}}


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def history(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every event file's scalars, files in the order written. (EventAccumulator on the folder skips a file whose
    name sorts before the one it read: the writer's counter suffix .10 sorts before .9 within one second.)"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(tb_dir.glob("events.*"), key=lambda p: (p.stat().st_mtime_ns, p.name)):
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, csv_writer, make_config) -> tuple[Path, dict]:
    """One tiny pre-training through the CLI, shared by the fine-tuning tests: (run directory, raw config)."""
    root = tmp_path_factory.mktemp("pretrained")
    # a high learning rate moves the pre-trained encoder well away from its (seeded, shared) initial weights
    raw = make_config(csv_writer(root / "series.csv"), {"pretrain": {"lr": 0.01}})
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    assert main(["pretrain", str(config_path), "--out", str(root / "run"), "--no-progress"]) == 0
    return root / "run", raw


# --- pre-training --------------------------------------------------------------------------------------------


def test_pretrain_writes_the_run_directory(pretrained) -> None:
    run_dir, raw = pretrained
    assert load_config(run_dir / "config.yaml") == parse_config(raw)

    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "scheduler", "epoch", "step", "config"} <= set(state)
    assert state["kind"] == "simmtm-pretrain" and state["epoch"] == 1 and state["step"] == 3
    assert any(k.startswith("encoder.") for k in state["model"]) and state["optimizer"]["state"]

    tags = scalars(run_dir / "tb")
    for part in ("loss", "reconstruction", "constraint", "lr", "grad_norm"):
        assert [step for step, _ in tags[f"pretrain/{part}"]] == [1, 2, 3], part
    assert all(value > 0 for _, value in tags["pretrain/grad_norm"])
    lrs = [value for _, value in tags["pretrain/lr"]]
    assert lrs[0] > lrs[-1]  # cosine decay
    assert "pretrain_epoch/val_loss" in tags

    (epoch,) = history(run_dir, "pretrain_epoch")
    assert epoch["epoch"] == 1 and epoch["step"] == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("train_loss", "train_reconstruction", "train_constraint", "val_loss", "val_reconstruction"):
        assert isinstance(metrics[key], float) and metrics[key] == metrics[key], key
    assert metrics["epoch"] == 1


def test_report_gets_every_epoch_with_a_checkpoint_state(tiny_config, tmp_path: Path) -> None:
    config = parse_config(tiny_config({"pretrain": {"epochs": 2, "max_steps": None}, "data": {"stride": 8}}))
    reports = []
    before = sorted(Path.cwd().iterdir())
    result = pretrain.run(config, lambda metrics, state=None: reports.append((dict(metrics), state)))
    assert sorted(Path.cwd().iterdir()) == before  # without run_dir nothing is written anywhere
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    assert [m["step"] for m, _ in reports] == [3, 6]
    assert all(state["kind"] == "simmtm-pretrain" and state["epoch"] == m["epoch"] for m, state in reports)
    assert result == reports[-1][0]


def test_pretrain_resumes_restarts_and_refuses_another_config(tiny_config, write_config, tmp_path: Path, capsys) -> None:
    path = write_config(tiny_config(RESUMABLE))
    out = tmp_path / "run"
    assert cli(["pretrain", str(path), "--out", str(out)], capsys)[0] == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1

    # the same command with more epochs continues after epoch 1
    assert cli(["pretrain", str(path), "--out", str(out), "--set", "pretrain.epochs=3"], capsys)[0] == 0
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step"]) == (3, 9)
    assert [r["epoch"] for r in history(out, "pretrain_epoch")] == [1, 2, 3]
    assert all(int(s["step"]) == 9 for s in state["optimizer"]["state"].values())  # Adam kept counting
    assert [step for step, _ in scalars(out / "tb")["pretrain/loss"]] == list(range(1, 10))

    # a finished run re-run unchanged trains nothing more
    assert cli(["pretrain", str(path), "--out", str(out), "--set", "pretrain.epochs=3"], capsys)[0] == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 9

    # another config into the same directory is refused, and the run is left as it was
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = cli(["pretrain", str(path), "--out", str(out), "--set", "pretrain.mask_ratio=0.3"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "different config (pretrain.mask_ratio)" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    # --overwrite starts afresh
    assert cli(["pretrain", str(path), "--out", str(out), "--set", "pretrain.mask_ratio=0.3", "--overwrite"], capsys)[0] == 0
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 3)
    assert [r["epoch"] for r in history(out, "pretrain_epoch")] == [1]
    assert state["config"]["pretrain"]["mask_ratio"] == 0.3


class _Interrupted(Exception):
    pass


def _interrupt_after(epochs: int):
    def report(metrics, state=None) -> None:
        if metrics["epoch"] == epochs:
            raise _Interrupted  # after the epoch's checkpoint was written, as a killed worker would be

    return report


def test_an_interrupted_pretraining_resumes_exactly(tiny_config, tmp_path: Path) -> None:
    config = parse_config(tiny_config({**RESUMABLE, "pretrain": {"epochs": 3, "max_steps": None}}))
    whole = pretrain.run(config, run_dir=tmp_path / "whole")
    with pytest.raises(_Interrupted):
        pretrain.run(config, _interrupt_after(1), run_dir=tmp_path / "split")
    resumed = pretrain.run(config, run_dir=tmp_path / "split", resume=load_checkpoint(tmp_path / "split/checkpoints/last.pt"))
    assert resumed["step"] == whole["step"] == 9
    a = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")["model"]
    b = load_checkpoint(tmp_path / "split/checkpoints/last.pt")["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], msg=key)
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"])


def test_more_epochs_stretch_the_cosine_schedule(tiny_config, tmp_path: Path) -> None:
    raw = tiny_config(RESUMABLE)
    pretrain.run(parse_config(raw), run_dir=tmp_path / "run")
    longer = parse_config({**raw, "pretrain": {**raw["pretrain"], "epochs": 3}})
    pretrain.run(longer, run_dir=tmp_path / "run", resume=load_checkpoint(tmp_path / "run/checkpoints/last.pt"))
    lrs = [value for step, value in scalars(tmp_path / "run" / "tb")["pretrain/lr"] if step > 3]
    assert len(lrs) == 6
    assert all(later <= earlier for earlier, later in zip(lrs, lrs[1:])), lrs


# --- fine-tuning ---------------------------------------------------------------------------------------------


def test_finetune_from_pretraining_and_baseline(pretrained, tmp_path: Path, capsys) -> None:
    run_dir, raw = pretrained
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    for name, extra in (("ft", ["--from", str(run_dir)]), ("base", [])):
        code, out, _ = cli(["finetune", str(path), "--out", str(tmp_path / name), *extra], capsys)
        assert code == 0
        assert "horizon 4: mse=" in out and "horizon 8: mse=" in out
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert set(metrics["horizons"]) == {"4", "8"}
        for h in ("4", "8"):
            assert metrics["horizons"][h]["mse"] > 0 and metrics["horizons"][h]["mae"] > 0
        for key in ("mse", "mae"):
            mean = (metrics["horizons"]["4"][key] + metrics["horizons"]["8"][key]) / 2
            assert metrics[key] == pytest.approx(mean)
        assert metrics["pretrained"] is (name == "ft")
        assert metrics["mode"] == "full"
        assert (tmp_path / name / "checkpoints" / "h4" / "best.pt").is_file()
        for record in history(tmp_path / name, "finetune_epoch"):
            assert not any(k.startswith("test") for k in record)


def _encoder(path: Path) -> dict[str, torch.Tensor]:
    return encoder_state(load_checkpoint(path)["model"])


def test_finetune_starts_from_the_pretrained_encoder(pretrained, tmp_path: Path) -> None:
    run_dir, raw = pretrained
    pre = encoder_state(load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"])
    config = parse_config(raw)
    probe = parse_config({**raw, "finetune": {**raw["finetune"], "mode": "probe"}})

    finetune.run(probe, run_dir=tmp_path / "probe", pretrained=run_dir)
    finetune.run(config, run_dir=tmp_path / "full", pretrained=run_dir)
    finetune.run(config, run_dir=tmp_path / "base")
    for tag in ("h4", "h8"):
        probed = _encoder(tmp_path / "probe" / "checkpoints" / tag / "last.pt")
        full = _encoder(tmp_path / "full" / "checkpoints" / tag / "last.pt")
        base = _encoder(tmp_path / "base" / "checkpoints" / tag / "last.pt")
        assert probed.keys() == pre.keys() == full.keys()
        for key in pre:  # probe: the loaded encoder, untouched
            assert torch.equal(probed[key], pre[key]), key
        # full: 2 steps at lr 1e-4 from the pre-trained weights, so much nearer to them than the random init is
        near = max((full[k] - pre[k]).abs().max().item() for k in pre)
        far = max((base[k] - pre[k]).abs().max().item() for k in pre)
        assert 0 < near < 1e-3 and far > 10 * near
        head = {k: v for k, v in load_checkpoint(tmp_path / "probe" / "checkpoints" / tag / "last.pt")["model"].items()
                if k.startswith("head.")}
        assert head  # the head is what a probe trains

    # an in-memory state works the same as the directory
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    metrics = finetune.run(probe, run_dir=tmp_path / "probe2", pretrained=state)
    assert metrics == json.loads((tmp_path / "probe" / "metrics.json").read_text())


def test_classification_on_gunpoint(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {
        "seed": 0, "device": "cpu", "threads": 1,
        "data": {"name": "GunPoint"},
        "model": {"encoder": "resnet1d", "d_model": 8, "n_layers": 1, "kernel_sizes": [5, 3], "dropout": 0.0,
                  "projector_dim": 8},
        "pretrain": {"num_masked": 2, "batch_size": 8, "max_steps": 2, "val_batches": 1},
        "finetune": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "max_steps": 6},
    }
    monkeypatch.setenv("SIMMTM_DATA_DIR", str(shared_data))
    config = parse_config(raw)
    pretrain.run(config, run_dir=tmp_path / "pre")

    # spy on the real data loading and evaluation to see which split is scored when
    loaded, scored = [], []
    real_load, real_evaluate = finetune.load_inputs, finetune.evaluate
    monkeypatch.setattr(finetune, "load_inputs", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
    monkeypatch.setattr(finetune, "evaluate", lambda model, dataset, *a, **k: scored.append(dataset) or real_evaluate(model, dataset, *a, **k))
    metrics = finetune.run(config, run_dir=tmp_path / "ft", pretrained=tmp_path / "pre")

    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["f1"] <= 1.0
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert metrics["pretrained"] is True
    (inputs,) = loaded
    assert inputs.task == "classification" and inputs.num_classes == 2 and inputs.seq_len == 150
    assert sum(d is inputs.test for d in scored) == 1  # the test split is scored once, at the end
    assert scored[-1] is inputs.test
    assert sum(d is inputs.val for d in scored) == metrics["epochs"] + 1  # each epoch, then the selected weights
    epochs = history(tmp_path / "ft", "finetune_epoch")
    assert len(epochs) == metrics["epochs"]
    for record in epochs:
        assert "val_accuracy" in record and "val_f1" in record
        assert not any(k.startswith("test") for k in record)
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]


def test_run_prints_the_comparison_table(tiny_config, write_config, tmp_path: Path, capsys) -> None:
    path = write_config(tiny_config({"finetune": {"horizons": [4]}}))
    code, out, _ = cli(["run", str(path), "--out", str(tmp_path / "quick")], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    header, simmtm_row, baseline_row = lines[-3:]
    assert header.split() == ["mse", "mae", "mse_4", "mae_4"]
    assert simmtm_row.startswith("SimMTM") and baseline_row.startswith("random init")
    assert len(simmtm_row.split()) == 5 and len(baseline_row.split()) == 6
    summary = yaml.safe_load((tmp_path / "quick" / "summary.yaml").read_text())
    assert set(summary) == {"SimMTM", "random init"}
    assert float(simmtm_row.split()[1]) == pytest.approx(summary["SimMTM"]["mse"], abs=1e-4)
    for sub in ("pretrain", "finetune", "baseline"):
        assert (tmp_path / "quick" / sub / "config.yaml").is_file()
