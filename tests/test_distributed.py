"""Distributed pre-training on Ray Train: faithful SimMTM under data parallelism, resumption, multi-node (a killed
worker: tests/faults/test_kills.py).

The Ray tests (marked slow) start real Ray Train worker groups on 2 CPU cores with a tiny model; each takes well
under two minutes. The in-process path is checked to stay free of Ray.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from simmtm.config.schema import RunConfig, parse_config

REPO = Path(__file__).resolve().parents[1]
BATCH = 8  # the global batch: 2 workers x 4, or 1 worker x 8
MASK_SEED = 12345

TINY = {
    "seed": 0,
    "device": "cpu",
    "threads": 1,
    "data": {"seq_len": 16},
    "model": {"encoder": "transformer", "d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 16, "dropout": 0.0,
              "projector_dim": 8, "projector_norm": "batch"},
    "pretrain": {"num_masked": 2, "epochs": 2, "batch_size": BATCH, "max_steps": None, "val_batches": 1},
    "finetune": {"horizons": [4], "epochs": 1, "batch_size": 8, "max_steps": 2, "val_batches": 1},
}


def tiny_raw(csv: Path, **pretrain: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    raw["data"]["path"] = str(csv)
    raw["pretrain"].update(pretrain)
    return raw


def history_epochs(out: Path) -> list[int]:
    lines = (out / "history.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if json.loads(line)["kind"] == "pretrain_epoch"]


# --- faithful SimMTM: 2 workers x b with gather == 1 worker x 2b ---------------------------------------------


def _first_step_worker(loop_config: dict[str, Any]) -> None:
    """In each Ray Train worker: the real model under DDP, the first batch of the real sharded loader, the masks of
    the global batch; forward + backward with the gather and without it; save loss and gradients."""
    from torch.utils.data import DataLoader

    from simmtm.cluster.distributed import DistributedRuntime
    from simmtm.data.inputs import load_inputs
    from simmtm.method.model import to_series
    from simmtm.train.pretraining import build_simmtm, draw_masks

    config = RunConfig.model_validate(loop_config["config"])
    torch.set_num_threads(1)
    runtime = DistributedRuntime.from_context()
    inputs = load_inputs(config)
    torch.manual_seed(config.seed)
    model = runtime.prepare_model(build_simmtm(config, seq_len=inputs.seq_len, channels=inputs.series_channels))
    loader = runtime.prepare_loader(
        DataLoader(inputs.train, batch_size=config.pretrain.batch_size // runtime.world_size, shuffle=True,
                   drop_last=True, generator=torch.Generator().manual_seed(config.seed))
    )
    x = next(iter(loader))
    series = to_series(x, inputs.channel_independent)
    mask = draw_masks(config, series, seed=MASK_SEED, rank=runtime.rank, world_size=runtime.world_size)
    saved: dict[str, Any] = {"x": x}
    for name, gather in (("on", runtime.gather()), ("off", None)):
        model.zero_grad(set_to_none=True)
        out = model(series, mask, gather)
        out.loss.backward()
        saved[name] = {"loss": out.loss.detach(),
                       "grads": {k: p.grad.detach().clone() for k, p in model.module.named_parameters()}}
    torch.save(saved, Path(loop_config["out"]) / f"rank{runtime.rank}.pt")


def _single_process_first_step(config: RunConfig) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The same first step on one process with the global batch: the samples of global batch 0, the same masks."""
    from simmtm.cluster.distributed import GlobalBatchSampler
    from simmtm.data.inputs import load_inputs
    from simmtm.method.model import to_series
    from simmtm.train.pretraining import build_simmtm, draw_masks

    inputs = load_inputs(config)
    sampler = GlobalBatchSampler(inputs.train, num_replicas=2, rank=0, batch_size=BATCH // 2, seed=config.seed)
    x = torch.stack([inputs.train[int(i)] for i in sampler.global_batches(0)[0]])  # (2b, L, C)
    series = to_series(x, inputs.channel_independent)
    mask = draw_masks(config, series, seed=MASK_SEED)
    torch.manual_seed(config.seed)
    model = build_simmtm(config, seq_len=inputs.seq_len, channels=inputs.series_channels)
    out = model(series, mask)
    out.loss.backward()
    return x, out.loss.detach(), {k: p.grad.detach().clone() for k, p in model.named_parameters()}


@pytest.mark.slow
def test_two_workers_with_gather_match_one_process_with_the_global_batch(ray_by_value, tiny_csv: Path, tmp_path: Path) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    config = parse_config(tiny_raw(tiny_csv))
    trainer = TorchTrainer(
        _first_step_worker,
        train_loop_config={"config": config.run_dict(), "out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2),
        run_config=ray.train.RunConfig(name="equivalence", storage_path=str(tmp_path / "ray")),
    )
    trainer.fit()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    x, loss, grads = _single_process_first_step(config)

    # The workers' batches in rank order are the global batch (the samples the single process sees).
    torch.testing.assert_close(torch.cat([ranks[0]["x"], ranks[1]["x"]]), x, rtol=0, atol=0)
    assert len(grads) > 10
    for rank in ranks:
        on = rank["on"]
        torch.testing.assert_close(on["loss"], loss, rtol=0, atol=1e-5)
        assert on["grads"].keys() == grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(on["grads"][name], g, rtol=0, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    # Plain DDP (gather off): each worker's similarity and aggregation see only its local batch.
    off = ranks[0]["off"]
    assert abs(off["loss"].item() - loss.item()) > 1e-3
    worst = max((off["grads"][k] - g).abs().max().item() for k, g in grads.items())
    assert worst > 1e-3


# --- the CLI: re-running resumes, --restart starts afresh, the checkpoint fine-tunes on one process ---------------


@pytest.mark.slow
def test_cli_rerun_resumes_and_the_checkpoint_finetunes_on_one_process(ray_by_value, tiny_csv: Path, tmp_path: Path) -> None:
    from simmtm.cli import main
    from simmtm.train import finetuning as finetune
    from simmtm.train.checkpoint import load_state

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(tiny_csv)))
    out = tmp_path / "pre"
    cmd = ["pretrain", str(cfg), "--out", str(out), "--workers", "2", "--no-progress"]
    assert main(cmd) == 0
    first = load_state(out / "checkpoints" / "last.pt")
    assert first["epoch"] == 2 and history_epochs(out) == [1, 2]
    assert {"config.yaml", "metrics.json", "checkpoints", "history.jsonl", "ray"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "metrics.json").read_text())["epoch"] == 2

    # The same command with one more epoch continues from Ray's latest checkpoint: only epoch 3 runs.
    assert main([*cmd, "--set", "pretrain.epochs=3"]) == 0
    second = load_state(out / "checkpoints" / "last.pt")
    assert second["epoch"] == 3 and second["step"] == first["step"] * 3 // 2
    assert history_epochs(out) == [1, 2, 3]

    # A checkpoint written by 2 workers fine-tunes on one process (no Ray, no DDP prefixes).
    assert not any(k.startswith("module.") for k in second["model"])
    metrics = finetune.run(parse_config(tiny_raw(tiny_csv)), pretrained=out)
    assert torch.isfinite(torch.tensor(metrics["mse"]))

    # --restart discards --out and Ray's run: one epoch from scratch.
    assert main([*cmd, "--restart", "--set", "pretrain.epochs=1"]) == 0
    assert history_epochs(out) == [1] and load_state(out / "checkpoints" / "last.pt")["step"] == first["step"] // 2


def test_cli_rejects_distributed_flags_without_workers_and_an_uneven_batch(tiny_csv: Path, tmp_path: Path, capsys) -> None:
    from simmtm.cli import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(tiny_csv)))
    assert main(["pretrain", str(cfg), "--out", str(tmp_path / "a"), "--address", "auto"]) == 2
    assert "--address applies to distributed runs only" in capsys.readouterr().err
    assert main(["pretrain", str(cfg), "--out", str(tmp_path / "b"), "--workers", "3"]) == 2
    assert "must divide evenly over the 3 workers" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- the in-process path does not import Ray -----------------------------------------------------------------


@pytest.mark.slow
def test_in_process_pretraining_does_not_import_ray(tiny_csv: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(tiny_csv, epochs=1, max_steps=2)))
    # In this process, not a fresh interpreter (10-35 s of imports): other tests have imported Ray already, so Ray and
    # each of its modules is made unimportable instead; a pre-training that reached for Ray fails on the ImportError.
    from simmtm.cli import main

    def is_ray(name: str) -> bool:
        return name == "ray" or name.startswith("ray.")

    with monkeypatch.context() as blocked:
        for name in ["ray", *filter(is_ray, sys.modules)]:
            blocked.setitem(sys.modules, name, None)
        assert main(["pretrain", str(cfg), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
        loaded = sorted(m for m in sys.modules if is_ray(m) and sys.modules[m] is not None)
        assert not loaded, loaded
    assert (tmp_path / "out" / "checkpoints" / "last.pt").is_file()


# --- two nodes on one machine --------------------------------------------------------------------------------

_MULTI_NODE_DRIVER = """
import json, sys, time
import ray
from simmtm.config.schema import parse_config
from simmtm.cluster.distributed import Scaling, pretrain_distributed

raw, address, out, storage, nodes_log, result = json.loads(sys.argv[1])

def record_node(metrics, runtime):
    with open(nodes_log, "a") as f:
        f.write(f"{runtime.rank} {ray.get_runtime_context().get_node_id()}\\n")

ray.init(address=address)
deadline = time.time() + 60
while sum(n["Alive"] for n in ray.nodes()) < 2:  # wait for the worker node to join
    assert time.time() < deadline, "the worker node did not join"
    time.sleep(0.5)
node_ids = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
metrics = pretrain_distributed(parse_config(raw), out=out, scaling=Scaling(workers=2, placement_strategy="STRICT_SPREAD"),
                               address=address, storage=storage, after_epoch=record_node)
with open(result, "w") as f:
    json.dump({"nodes": node_ids, "metrics": metrics}, f)
"""


@pytest.mark.slow
def test_two_node_cluster_runs_one_worker_per_node_with_shared_storage(tiny_csv: Path, tmp_path: Path, two_node_ray) -> None:
    from simmtm.train.checkpoint import load_state

    address, env = two_node_ray
    storage, out, nodes_log, result = tmp_path / "shared", tmp_path / "out", tmp_path / "nodes.log", tmp_path / "result.json"
    args = [tiny_raw(tiny_csv), address, str(out), str(storage), str(nodes_log), str(result)]
    done = subprocess.run([sys.executable, "-c", _MULTI_NODE_DRIVER, json.dumps(args)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads(result.read_text())
    assert len(report["nodes"]) == 2
    placed = dict(line.split() for line in nodes_log.read_text().splitlines())
    assert sorted(placed) == ["0", "1"] and sorted(placed.values()) == report["nodes"]  # one worker per node
    runs = [p for p in storage.iterdir() if p.is_dir()]
    assert len(runs) == 1 and any(p.name.startswith("checkpoint_") for p in runs[0].iterdir())  # in the shared path
    assert load_state(out / "checkpoints" / "last.pt")["epoch"] == 2 == report["metrics"]["epoch"]

