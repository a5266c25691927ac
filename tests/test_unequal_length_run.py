"""Unequal-length series end to end (15.7): data.unequal_length carries a padded multivariate .ts through the data
set, the pre-training and fine-tuning loops into the model; equal-length data runs exactly as before."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from simmtm.cli import main
from simmtm.config.schema import parse_config
from simmtm.data.inputs import load_inputs, split_batch
from simmtm.train.pretraining import draw_masks

CHANNELS, CLASSES = 3, 3
TINY = {
    "encoder": "transformer",
    "d_model": 8,
    "n_heads": 2,
    "n_layers": 1,
    "d_ff": 16,
    "dropout": 0.0,
    "projector_dim": 8,
}


def _vowels(path: Path, cases: int, seed: int) -> Path:
    """A JapaneseVowels-like .ts: 3 channels, lengths 7..20 per case (every channel of a case the same length)."""
    rng = np.random.default_rng(seed)
    head = (
        f"@problemName toyvowels\n@timeStamps false\n@missing false\n@univariate false\n@dimensions {CHANNELS}\n"
        "@equalLength false\n@classLabel true 1 2 3\n@data\n"
    )
    lines = []
    for i in range(cases):
        label = i % CLASSES
        t = np.arange(rng.integers(7, 21))
        channels = [np.sin(t * (0.3 + 0.2 * label) + c) + 0.1 * rng.normal(size=len(t)) for c in range(CHANNELS)]
        lines.append(":".join(",".join(f"{v:.5f}" for v in ch) for ch in channels) + f":{label + 1}")
    path.write_text(head + "\n".join(lines) + "\n")
    return path


def _config(tmp_path: Path, **data) -> dict:
    _vowels(tmp_path / "toyvowels_TRAIN.ts", 30, seed=0)
    _vowels(tmp_path / "toyvowels_TEST.ts", 12, seed=1)
    return {
        "seed": 0,
        "device": "cpu",
        "threads": 1,
        "data": {"path": str(tmp_path / "toyvowels_TRAIN.ts"), "seq_len": 24, "unequal_length": "pad", **data},
        "model": copy.deepcopy(TINY),
        "pretrain": {"num_masked": 2, "epochs": 2, "batch_size": 8, "val_batches": 1},
        "finetune": {"epochs": 2, "batch_size": 8},
    }


def test_the_padding_mask_travels_from_the_file_to_the_masks(tmp_path: Path) -> None:
    config = parse_config(_config(tmp_path))
    inputs = load_inputs(config)
    assert inputs.seq_len == 20 and inputs.channels == CHANNELS
    x, observed = split_batch(next(iter(torch.utils.data.DataLoader(inputs.train, batch_size=8))))
    assert x.shape == (8, 20, CHANNELS) and observed.shape == (8, 20) and observed.dtype == torch.bool
    lengths = observed.sum(1)
    assert (lengths >= 7).all() and (lengths < 20).any()
    assert (x[~observed] == 0).all()  # padding holds 0 after scaling
    mask = draw_masks(config, x, seed=3, observed=observed)
    assert not mask[:, ~observed].any() and mask[:, observed].any()  # only real steps are masked
    labelled = load_inputs(config, labelled=True).train[0]
    assert len(labelled) == 3 and labelled[2].shape == (20,)

    with pytest.raises(Exception, match="unequal"):
        load_inputs(parse_config(_config(tmp_path, unequal_length="error")))
    cut = load_inputs(parse_config(_config(tmp_path, unequal_length="truncate", seq_len=7)))
    assert cut.seq_len == 7 and not isinstance(cut.train[0], tuple)  # cut to 7 steps: nothing padded


def test_simmtm_run_pretrains_and_finetunes_a_padded_multivariate_set(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path)))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--no-baseline"]) == 0
    pre = json.loads((tmp_path / "out" / "pretrain" / "metrics.json").read_text())
    assert pre["epoch"] == 2 and np.isfinite(pre["train_loss"]) and np.isfinite(pre["val_loss"])
    fine = json.loads((tmp_path / "out" / "finetune" / "metrics.json").read_text())
    assert 0.0 <= fine["accuracy"] <= 1.0 and fine["pretrained"]
    # the fine-tuned model sees the padding mask: a padded case's logits ignore what its padding holds
    from simmtm.train import finetuning as finetune

    state = torch.load(tmp_path / "out" / "finetune" / "checkpoints" / "classification" / "best.pt", weights_only=False)
    config = parse_config(_config(tmp_path))
    inputs = load_inputs(config, labelled=True)
    model = finetune._build(config, inputs, None)
    model.load_state_dict(state["model"])
    model.eval()
    x, _, observed = next(iter(torch.utils.data.DataLoader(inputs.test, batch_size=12)))
    noisy = torch.where(observed[..., None], x, torch.randn_like(x) * 100)
    with torch.no_grad():
        torch.testing.assert_close(model(x, observed), model(noisy, observed))


def test_equal_length_batches_pass_no_mask_and_draw_the_same_masks(tiny_config) -> None:
    """Equal-length data: the batch is the bare tensor as before, and the masks are the ones main drew."""
    config = parse_config(tiny_config())
    inputs = load_inputs(config)
    batch = next(iter(torch.utils.data.DataLoader(inputs.train, batch_size=4)))
    assert isinstance(batch, torch.Tensor) and split_batch(batch)[1] is None
    every_step = torch.ones(batch.shape[:2], dtype=torch.bool)
    assert torch.equal(draw_masks(config, batch, seed=5), draw_masks(config, batch, seed=5, observed=every_step))
