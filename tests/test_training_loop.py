"""The shared training loop: exact resumption, divergence, the best checkpoint, fine-tuning's dropout and lr
schedules, precision and compilation. Tiny real runs on CPU."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard_view import scalars

from simmtm.cli import main
from simmtm.config.schema import parse_config
from simmtm.errors import UserError
from simmtm.train import finetuning as finetune
from simmtm.train import pretraining as pretrain
from simmtm.train.checkpoint import encoder_state
from simmtm.train.history import RunLog
from simmtm.train.runtime import LocalRuntime, Runtime
from simmtm.train.shared import TrainingDiverged, restore_rng_states, rng_states, set_up

# stride 8 over the 224 train rows of the tiny CSV: 26 windows, 3 steps of 8 per epoch; dropout on, so that the
# random state matters
EPOCHS_OF_3 = {
    "data": {"stride": 8},
    "model": {"dropout": 0.1, "attention_dropout": 0.1},
    "pretrain": {"epochs": 3, "max_steps": None},
}


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def history(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


class _Killed(Exception):
    pass


# --- exact resumption ----------------------------------------------------------------------------------------


def _kill_at_step(monkeypatch: pytest.MonkeyPatch, stop: int) -> None:
    """Stop the run as a kill would, before optimiser step ``stop`` + 1 runs (the real losses otherwise)."""
    real = pretrain._Training.losses

    def losses(self, x, *, step: int):
        if step == stop:
            raise _Killed
        return real(self, x, step=step)

    monkeypatch.setattr(pretrain._Training, "losses", losses)


def _kill_before_checkpoint(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Stop the run after epoch ``epoch`` was recorded in history and TensorBoard, before its checkpoint."""
    real = pretrain._save_epoch

    def save(at, *args, **kwargs):
        if at.epoch == epoch:
            raise _Killed
        return real(at, *args, **kwargs)

    monkeypatch.setattr(pretrain, "_save_epoch", save)


def _kill_after_epoch(epoch: int):
    """A report that stops the run after epoch ``epoch``'s checkpoint."""

    def report(metrics, state=None) -> None:
        if metrics["epoch"] == epoch:
            raise _Killed

    return report


@pytest.mark.parametrize("kill", ["mid-epoch 1", "before epoch 2's checkpoint", "after epoch 2", "mid-epoch 3"])
def test_a_killed_pretraining_resumes_bit_identically(kill: str, tiny_config, tmp_path: Path, monkeypatch) -> None:
    config = parse_config(tiny_config({**EPOCHS_OF_3, "log_every": 2}))
    whole = pretrain.run(config, run_dir=tmp_path / "whole")

    split = tmp_path / "split"
    report = pretrain.no_report
    with monkeypatch.context() as patch:
        if kill == "mid-epoch 1":
            _kill_at_step(patch, 1)
        elif kill == "mid-epoch 3":
            _kill_at_step(patch, 8)  # after the read at step 8 (log_every 2): TensorBoard holds steps 7 and 8
        elif kill == "before epoch 2's checkpoint":
            _kill_before_checkpoint(patch, 2)
        else:
            report = _kill_after_epoch(2)
        with pytest.raises(_Killed):
            pretrain.run(config, report, run_dir=split)
    last = split / "checkpoints" / "last.pt"
    resumed = pretrain.run(config, run_dir=split, resume=load_checkpoint(last) if last.is_file() else None)

    assert resumed == whole  # every metric, to the last bit
    assert_same_weights(
        load_checkpoint(split / "checkpoints/last.pt")["model"],
        load_checkpoint(tmp_path / "whole/checkpoints/last.pt")["model"],
    )
    assert_same_weights(
        load_checkpoint(split / "checkpoints/best.pt")["model"],
        load_checkpoint(tmp_path / "whole/checkpoints/best.pt")["model"],
    )
    # each epoch and each step recorded once
    assert [r["epoch"] for r in history(split, "pretrain_epoch")] == [1, 2, 3]
    tags = scalars(split / "tb")
    assert [s for s, _ in tags["pretrain/loss"]] == list(range(1, 10))
    assert [s for s, _ in tags["pretrain_epoch/val_loss"]] == [3, 6, 9]
    assert tags["pretrain/loss"] == scalars(tmp_path / "whole" / "tb")["pretrain/loss"]


def test_the_checkpoint_holds_every_workers_random_state(tiny_config, tmp_path: Path) -> None:
    pretrain.run(parse_config(tiny_config(EPOCHS_OF_3)), run_dir=tmp_path)
    (rng,) = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["rng"]  # one worker
    assert {"torch", "numpy", "python"} <= set(rng)


def test_random_states_round_trip() -> None:
    runtime = LocalRuntime(torch.device("cpu"))
    states = rng_states(runtime)
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    restore_rng_states(states, runtime)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_a_resumed_run_log_drops_what_came_after_the_checkpoint(tmp_path: Path) -> None:
    run_log = RunLog(tmp_path)
    for step in (3, 6):
        run_log.scalars(step, {"loss": float(step)})
        run_log.record("pretrain_epoch", {"epoch": step // 3, "step": step})
    run_log.close()
    with (tmp_path / "history.jsonl").open("a") as f:
        f.write('{"kind": "pretrain_ep')  # a line torn by a kill

    run_log = RunLog(tmp_path, resume_step=3)
    run_log.scalars(6, {"loss": 60.0})
    run_log.record("pretrain_epoch", {"epoch": 2, "step": 6})
    run_log.close()
    assert [r["step"] for r in history(tmp_path, "pretrain_epoch")] == [3, 6]
    assert scalars(tmp_path / "tb")["loss"] == [(3, 3.0), (6, 60.0)]


def test_a_step_log_takes_every_step_as_tensorboard_does(tiny_config, tmp_path: Path) -> None:
    """What a sweep trial's trackers get (simmtm.train.trackers.TrialSteps): each optimiser step once, in batches of
    log_every steps, under TensorBoard's tags and values."""
    batches: list[list] = []
    raw = {**tiny_config(EPOCHS_OF_3), "log_every": 2}
    pretrain.run(parse_config(raw), run_dir=tmp_path, step_log=lambda steps: batches.append(list(steps)))
    # read at every even step and at the end of each epoch of 3 steps
    assert [[s for s, _ in batch] for batch in batches] == [[1, 2], [3], [4], [5, 6], [7, 8], [9]]
    logged = {step: values for batch in batches for step, values in batch}
    tags = {"pretrain/loss", "pretrain/reconstruction", "pretrain/constraint", "pretrain/grad_norm", "pretrain/lr"}
    assert all(set(values) == tags for values in logged.values())
    board = scalars(tmp_path / "tb")
    for tag in tags:
        assert [s for s, _ in board[tag]] == list(range(1, 10))
        assert [v for _, v in board[tag]] == pytest.approx([logged[s][tag] for s in range(1, 10)])


# --- divergence ----------------------------------------------------------------------------------------------


def test_divergence_names_the_step_the_loss_and_the_key(tiny_config, tmp_path: Path) -> None:
    raw = tiny_config({**EPOCHS_OF_3, "pretrain": {"epochs": 3, "max_steps": None, "lr": 1e6}})
    messages = []
    for log_every in (1, 50):  # read every step, or once an epoch: the same step is named
        with pytest.raises(TrainingDiverged) as caught:
            pretrain.run(parse_config({**raw, "log_every": log_every}))
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    message = messages[0]
    assert isinstance(caught.value, UserError) and caught.value.exit_code == 3
    assert "\n" not in message and "pre-training diverged at step" in message
    assert "pretrain.lr (now 1e+06)" in message and "pretrain.grad_clip" in message
    loss = message.split("the loss is ")[1].split(";")[0]
    assert not math.isfinite(float(loss))
    steps: list = []  # a step log gets the steps up to the diverged one, which it shows
    with pytest.raises(TrainingDiverged):
        pretrain.run(parse_config({**raw, "log_every": 50}), step_log=steps.extend)
    named = int(message.split("at step ")[1].split(" ")[0])
    assert [s for s, _ in steps] == list(range(1, named + 1))
    assert not math.isfinite(steps[-1][1]["pretrain/loss"]) and all(math.isfinite(v["pretrain/loss"]) for _, v in steps[:-1])


def test_divergence_keeps_the_finished_epochs(tiny_config, tmp_path: Path) -> None:
    raw = tiny_config({**EPOCHS_OF_3, "pretrain": {"epochs": 2, "max_steps": None, "scheduler": "none"}})
    pretrain.run(parse_config({**raw, "pretrain": {**raw["pretrain"], "epochs": 1}}), run_dir=tmp_path)
    before = {p: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    assert set(before) == {tmp_path / "checkpoints" / "last.pt", tmp_path / "checkpoints" / "best.pt"}

    # the same run, its learning rate raised to 1e6 for the second epoch: it diverges there
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    state["scheduler"]["base_lrs"] = [1e6]
    with pytest.raises(TrainingDiverged, match=r"at step [4-6] \(epoch 2\)"):
        pretrain.run(parse_config(raw), run_dir=tmp_path, resume=state)
    assert {p: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == before
    assert [r["epoch"] for r in history(tmp_path, "pretrain_epoch")] == [1]


def test_finetuning_divergence_names_finetune_lr(tiny_config) -> None:
    config = parse_config(tiny_config({"finetune": {"lr": 1e6, "epochs": 3, "max_steps": None, "horizons": [4]}}))
    with pytest.raises(
        TrainingDiverged, match=r"fine-tuning h4 diverged at step \d+ .*lower finetune.lr \(now 1e\+06\)"
    ):
        finetune.run(config)


def test_the_cli_reports_divergence_in_one_line(tiny_config, write_config, tmp_path: Path, capsys) -> None:
    path = write_config(tiny_config({"pretrain": {"lr": 1e6, "max_steps": 20, "epochs": 10}, "data": {"stride": 8}}))
    capsys.readouterr()
    code = main(["pretrain", str(path), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    (line,) = err.strip().splitlines()
    assert "diverged at step" in line and "pretrain.lr" in line


def test_the_cli_exits_3_on_divergence(tiny_config, write_config, tmp_path: Path) -> None:
    path = write_config(tiny_config({"pretrain": {"lr": 1e6, "max_steps": 20, "epochs": 10}, "data": {"stride": 8}}))
    assert main(["pretrain", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 3


# --- the best pre-training epoch and what fine-tuning starts from ---------------------------------------------


@pytest.fixture(scope="module")
def pretrained_3(tmp_path_factory, csv_writer, make_config) -> tuple[Path, dict, list[dict]]:
    """Three epochs at a high lr (validation loss not monotonic): (run directory, raw config, each epoch's state)."""
    root = tmp_path_factory.mktemp("pretrained3")
    raw = make_config(
        csv_writer(root / "series.csv"), {**EPOCHS_OF_3, "pretrain": {"epochs": 3, "max_steps": None, "lr": 0.03}}
    )
    states = []
    pretrain.run(parse_config(raw), lambda m, s=None: states.append(copy.deepcopy(s)), run_dir=root / "run")
    return root / "run", raw, states


def test_best_pt_holds_the_epoch_of_lowest_validation_loss(pretrained_3) -> None:
    run_dir, _, states = pretrained_3
    val = [r["val_loss"] for r in history(run_dir, "pretrain_epoch")]
    best_epoch = max(e for e, v in enumerate(val, 1) if v == min(val))  # ties: the later epoch, as official
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["kind"] == "simmtm-pretrain" and best["epoch"] == best_epoch
    assert "optimizer" not in best  # weights and config only: best.pt is for fine-tuning, last.pt for resuming
    assert_same_weights(best["model"], states[best_epoch - 1]["model"])
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["best"] == {"epoch": best_epoch, "val_loss": min(val)}


@pytest.mark.parametrize("which", ["best", "last"])
def test_finetuning_starts_from_the_chosen_checkpoint(which: str, pretrained_3, tmp_path: Path) -> None:
    run_dir, raw, _ = pretrained_3
    probe = parse_config({**raw, "finetune": {**raw["finetune"], "mode": "probe", "from_checkpoint": which}})
    finetune.run(probe, run_dir=tmp_path / "probe", pretrained=run_dir)
    probed = encoder_state(load_checkpoint(tmp_path / "probe" / "checkpoints" / "h4" / "last.pt")["model"])
    assert_same_weights(probed, encoder_state(load_checkpoint(run_dir / "checkpoints" / f"{which}.pt")["model"]))


def test_finetuning_defaults_to_the_best_checkpoint() -> None:
    assert parse_config({"data": {"name": "ETTh1"}}).finetune.from_checkpoint == "best"


# --- fine-tuning: dropout of its own, shapes of the checkpoint ----------------------------------------------


def _finetuned_model(raw: dict, run_dir: Path, out: Path, **finetune_keys) -> dict:
    config = parse_config({**raw, "finetune": {**raw["finetune"], **finetune_keys, "horizons": [4]}})
    finetune.run(config, run_dir=out, pretrained=run_dir)
    return yaml.safe_load((out / "config.yaml").read_text())["model"]  # the config the model was built from


def test_finetuning_sets_dropout_but_never_shapes(pretrained_3, tmp_path: Path) -> None:
    run_dir, raw, _ = pretrained_3
    other = {**raw, "model": {**raw["model"], "d_model": 16, "dropout": 0.5, "attention_dropout": 0.0}}

    kept = _finetuned_model(other, run_dir, tmp_path / "kept")
    assert (kept["d_model"], kept["dropout"], kept["attention_dropout"]) == (8, 0.1, 0.1)  # all from the checkpoint

    changed = _finetuned_model(other, run_dir, tmp_path / "changed", dropout=0.3, attention_dropout=0.0)
    assert (changed["d_model"], changed["dropout"], changed["attention_dropout"]) == (8, 0.3, 0.0)

    baseline = parse_config({**raw, "finetune": {**raw["finetune"], "dropout": 0.3, "horizons": [4]}})
    finetune.run(baseline, run_dir=tmp_path / "baseline")  # random init: the model section, with finetune.dropout
    assert yaml.safe_load((tmp_path / "baseline" / "config.yaml").read_text())["model"]["dropout"] == 0.3


def test_finetuning_sets_head_dropout(pretrained_3, tmp_path: Path) -> None:
    run_dir, raw, _ = pretrained_3
    model = _finetuned_model(raw, run_dir, tmp_path / "ft", head_dropout=0.3)
    assert model["head_dropout"] == 0.3


# --- fine-tuning lr schedules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "factors"), [("halving", [1, 1 / 2, 1 / 4, 1 / 8]), ("official", [1 / 25, 1, 1 / 2, 1 / 4])]
)
def test_finetuning_lr_schedules(schedule: str, factors: list[float], tiny_config, tmp_path: Path) -> None:
    raw = tiny_config(
        {
            "finetune": {
                "horizons": [4],
                "epochs": 4,
                "patience": 10,
                "max_steps": None,
                "lr": 1e-4,
                "lr_schedule": schedule,
            },
            "data": {"stride": 8},
        }
    )
    finetune.run(parse_config(raw), run_dir=tmp_path)
    lrs = [r["lr"] for r in history(tmp_path, "finetune_epoch")]
    assert lrs == pytest.approx([1e-4 * f for f in factors], rel=1e-12)
    per_step = scalars(tmp_path / "tb")["finetune_h4/lr"]
    assert per_step[0][1] == pytest.approx(1e-4 * factors[0], rel=1e-6)  # the first step runs at the first lr


# --- precision and compilation -------------------------------------------------------------------------------


def test_bf16_autocast_runs_on_cpu_near_fp32(tiny_config) -> None:
    raw = tiny_config(EPOCHS_OF_3)
    fp32 = pretrain.run(parse_config(raw))
    bf16 = pretrain.run(parse_config({**raw, "precision": "bf16"}))
    assert math.isfinite(bf16["train_loss"]) and bf16["train_loss"] != fp32["train_loss"]  # really in bf16
    assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.05)
    metrics = finetune.run(parse_config({**raw, "precision": "bf16", "finetune": {**raw["finetune"], "horizons": [4]}}))
    assert math.isfinite(metrics["mse"])


@pytest.mark.parametrize(("precision", "mode"), [("tf32", "tf32"), ("fp32", "ieee"), ("bf16", "ieee")])
def test_tf32_is_allowed_on_cuda_for_precision_tf32_only(precision: str, mode: str, tiny_config) -> None:
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    try:  # the flags are process-wide and settable without a GPU
        set_up(parse_config({**tiny_config(), "precision": precision}), Runtime(device=torch.device("cuda")))
        assert (matmul.fp32_precision, conv.fp32_precision) == (mode, mode)
    finally:
        matmul.fp32_precision, conv.fp32_precision = before


@pytest.mark.slow
def test_a_compiled_model_trains_and_its_checkpoint_finetunes(tiny_config, tmp_path: Path) -> None:
    # no dropout: compiled code draws its dropout masks from another generator than eager code
    raw = tiny_config(
        {
            **EPOCHS_OF_3,
            "compile": True,
            "model": {"dropout": 0.0, "attention_dropout": 0.0},
            "pretrain": {"epochs": 1, "max_steps": None},
        }
    )
    metrics = pretrain.run(parse_config(raw), run_dir=tmp_path / "pre")
    assert math.isfinite(metrics["train_loss"])
    state = load_checkpoint(tmp_path / "pre" / "checkpoints" / "last.pt")
    assert not any("_orig_mod" in k for k in state["model"])  # the plain module's keys
    eager = pretrain.run(parse_config({**raw, "compile": False}))
    assert metrics["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)
    assert math.isfinite(finetune.run(parse_config({**raw, "compile": False}), pretrained=tmp_path / "pre")["mse"])
