"""Equivalence with the official SimMTM forecasting model, the import path, and load_pretrained.

``OfficialSimMTM`` below re-implements the official pre-training forward (thuml/SimMTM, SimMTM_Forecasting:
models/SimMTM.py ``Model.pretrain``, utils/tools.py ``ContrastiveWeight`` / ``AggregationRebuild``,
utils/losses.py ``AutomaticWeightedLoss``, the Time-Series-Library Transformer layers it imports) from that code's
documented computation, independently of simmtm's model: the official module and key names and shapes, the
official batch layout (originals, then the M masked copies stacked along the batch, each window's channels
flattened into series), its 0/1 keep mask, its KL-divergence constraint, its aggregation over every row, its
de-normalisation with the first rows' statistics and ``awl(loss_cl, loss_rb)``. Its state dict goes through
``simmtm import-official`` (the real CLI) and ``simmtm.load_pretrained``; the two forwards must agree.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import simmtm
from simmtm.cli import main
from simmtm.config.schema import parse_config
from simmtm.method.masking import geometric_mask
from simmtm.method.model import SimMTM, from_series, to_series

L, D, HEADS, LAYERS, D_FF, M, TAU = 16, 8, 2, 2, 16, 2, 0.2
B, C = 3, 2  # windows, channels: B * C = 6 series


# --- the official model, re-implemented ----------------------------------------------------------------------


class _TokenEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokenConv = nn.Conv1d(1, D, kernel_size=3, padding=1, padding_mode="circular", bias=False)


class _PositionalEmbedding(nn.Module):
    def __init__(self, max_len: int = 64) -> None:
        super().__init__()
        position = torch.arange(max_len).float()[:, None]
        div = torch.exp(torch.arange(0, D, 2).float() * -(math.log(10000.0) / D))
        pe = torch.zeros(max_len, D)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
        self.register_buffer("pe", pe[None])  # (1, max_len, D), persistent as in the official code


class _TimeFeatureEmbedding(nn.Module):  # embed='timeF', freq='h': in the state dict, never called
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, D, bias=False)


class _DataEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.value_embedding = _TokenEmbedding()
        self.position_embedding = _PositionalEmbedding()
        self.temporal_embedding = _TimeFeatureEmbedding()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (S, L, 1), no time marks
        values = self.value_embedding.tokenConv(x.permute(0, 2, 1)).transpose(1, 2)
        return values + self.position_embedding.pe[:, : x.shape[1]]  # dropout: eval mode


class _AttentionLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query_projection, self.key_projection = nn.Linear(D, D), nn.Linear(D, D)
        self.value_projection, self.out_projection = nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, t, _ = x.shape
        q = self.query_projection(x).view(s, t, HEADS, -1)
        k = self.key_projection(x).view(s, t, HEADS, -1)
        v = self.value_projection(x).view(s, t, HEADS, -1)
        scores = torch.einsum("blhe,bshe->bhls", q, k)  # DSAttention with tau = 1, delta = 0, no mask
        weights = torch.softmax(scores / math.sqrt(q.shape[-1]), dim=-1)
        out = torch.einsum("bhls,bshd->blhd", weights, v).reshape(s, t, -1)
        return self.out_projection(out)


class _EncoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = _AttentionLayer()
        self.conv1 = nn.Conv1d(D, D_FF, kernel_size=1)
        self.conv2 = nn.Conv1d(D_FF, D, kernel_size=1)
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x))
        y = self.conv2(F.gelu(self.conv1(x.transpose(-1, 1)))).transpose(-1, 1)
        return self.norm2(x + y)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn_layers = nn.ModuleList(_EncoderLayer() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.attn_layers:
            x = layer(x)
        return self.norm(x)


class _FlattenHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(L * D, L)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (bs, n_vars, L, D) -> (bs, n_vars, L)
        return self.linear(x.flatten(start_dim=-2))


class _PoolerHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        pn = L * D
        self.pooler = nn.Sequential(nn.Flatten(start_dim=-2), nn.Linear(pn, pn // 2), nn.BatchNorm1d(pn // 2), nn.ReLU(),
                                    nn.Linear(pn // 2, 128), nn.Dropout(0.1))


class _AutomaticWeightedLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.params = nn.Parameter(torch.ones(2))

    def forward(self, *losses: torch.Tensor) -> torch.Tensor:
        return sum(0.5 / self.params[i] ** 2 * loss + torch.log(1 + self.params[i] ** 2) for i, loss in enumerate(losses))


class OfficialSimMTM(nn.Module):
    """The official ``Model`` with task_name 'pretrain' (eval-mode computation)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc_embedding = _DataEmbedding()
        self.encoder = _Encoder()
        self.projection = _FlattenHead()
        self.pooler = _PoolerHead()
        self.awl = _AutomaticWeightedLoss()

    def contrastive(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = s.shape[0]
        normed = F.normalize(s, dim=1)
        similarity = normed @ normed.T
        oral = rows // (M + 1)
        positives = np.zeros((rows, rows))
        for i in range(M + 1):  # the same series in every view: diagonals at multiples of the originals' count
            positives += np.eye(rows, rows, k=oral * i) + np.eye(rows, rows, k=-oral * i)
        positives = torch.from_numpy(positives).bool()
        positives.fill_diagonal_(False)
        negatives = ~positives
        negatives.fill_diagonal_(False)
        logits = torch.cat([similarity[positives].view(rows, -1), similarity[negatives].view(rows, -1)], dim=-1)
        targets = torch.cat([torch.ones(rows, M), torch.zeros(rows, logits.shape[1] - M)], dim=-1)
        loss = F.kl_div(F.log_softmax(logits / TAU, dim=-1), targets, reduction="batchmean")
        return loss, similarity

    def aggregation(self, similarity: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        logits = similarity / TAU - torch.eye(similarity.shape[0]) * 1e12
        weights = torch.softmax(logits, dim=-1)  # every row, self excluded
        return (weights @ z.reshape(z.shape[0], -1)).reshape(z.shape)

    def forward(self, x_om: torch.Tensor, batch_x: torch.Tensor, mask_om: torch.Tensor):
        bs, seq_len, n_vars = x_om.shape  # (M+1)*B windows: the originals, then copy 1 of all, copy 2 of all ...
        kept = torch.sum(mask_om == 1, dim=1)
        means = (torch.sum(x_om, dim=1) / kept).unsqueeze(1)
        x = (x_om - means).masked_fill(mask_om == 0, 0)
        stdev = torch.sqrt(torch.sum(x * x, dim=1) / kept + 1e-5).unsqueeze(1)
        x = x / stdev
        x = x.permute(0, 2, 1).reshape(-1, seq_len, 1)  # (bs * n_vars, L, 1): row = window * n_vars + channel
        z = self.encoder(self.enc_embedding(x))
        loss_cl, similarity = self.contrastive(self.pooler.pooler(z))
        rebuilt = self.aggregation(similarity, z).reshape(bs, n_vars, seq_len, -1)
        out = self.projection(rebuilt).permute(0, 2, 1)  # (bs, L, n_vars)
        out = out * stdev[:, 0, :].unsqueeze(1) + means[:, 0, :].unsqueeze(1)
        pred = out[: batch_x.shape[0]]
        loss_rb = F.mse_loss(pred, batch_x)
        return self.awl(loss_cl, loss_rb), loss_cl, loss_rb, pred


# --- fixtures ------------------------------------------------------------------------------------------------


def official_model(seed: int = 0) -> OfficialSimMTM:
    """Random weights everywhere, including BatchNorm statistics and loss weights that are not 1 (so that a swapped
    argument order or a missed buffer shows)."""
    torch.manual_seed(seed)
    model = OfficialSimMTM()
    bn = model.pooler.pooler[2]
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.1)
        model.awl.params.copy_(torch.tensor([0.7, 1.6]))
    return model.eval()


def official_config(tmp_path: Path, **model) -> Path:
    raw = {"data": {"path": str(tmp_path / "unused.csv"), "seq_len": L},
           "model": {"encoder": "transformer", "d_model": D, "n_heads": HEADS, "n_layers": LAYERS, "d_ff": D_FF,
                     "projector": "official", "projector_dim": 128, "head_dropout": 0.1, **model},
           "pretrain": {"num_masked": M, "temperature": TAU, "loss_weighting": "auto"}}
    path = tmp_path / "official.yaml"
    path.write_text("# the official run's shapes\n" + yaml.safe_dump(raw))
    return path


def save_official(tmp_path: Path, state: dict, *, wrap: bool = True) -> Path:
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 4, "model_state_dict": state} if wrap else state, path)
    return path


def batch(seed: int = 0):
    """Windows (B, L, C) and the official 0/1 keep mask of the M copies, (M*B, L, C), copy-major."""
    g = torch.Generator().manual_seed(seed)
    x = 5.0 + 3.0 * torch.randn(B, L, C, generator=g)
    hidden = geometric_mask((M, B, C, L), 0.5, 3.0, generator=g)  # (M, B, C, L) True where hidden
    keep = (~hidden).permute(0, 1, 3, 2).reshape(M * B, L, C).float()
    return x, keep


# --- the equivalence ---------------------------------------------------------------------------------------


def test_imported_weights_give_the_official_losses(tmp_path: Path) -> None:
    official = official_model()
    x, keep = batch()
    x_om = torch.cat([x, x.repeat(M, 1, 1) * keep])
    mask_om = torch.cat([torch.ones_like(x), keep])
    with torch.no_grad():
        loss, loss_cl, loss_rb, pred = official(x_om, x, mask_om)

    state = {f"module.{k}": v for k, v in official.state_dict().items()}  # as saved from DataParallel
    config = official_config(tmp_path)
    assert main(["import-official", str(save_official(tmp_path, state)), "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    assert {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    assert (tmp_path / "run" / "config.yaml").is_file()

    model = simmtm.load_pretrained(tmp_path / "run")
    assert isinstance(model, SimMTM) and not model.training
    series = to_series(x, True)  # (B*C, L, 1): row b*C + c, the official order
    hidden = (keep == 0).view(M, B, L, C).permute(0, 1, 3, 2).reshape(M, B * C, L, 1)  # (M, N, L, 1)
    with torch.no_grad():
        out = model(series, hidden)
    for ours, theirs in ((out.loss, loss), (out.reconstruction, loss_rb), (out.constraint, loss_cl)):
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-4)
    torch.testing.assert_close(from_series(out.rebuilt, B, True), pred, rtol=1e-4, atol=1e-4)
    # not equal by accident: the loss weights are not 1 and their order matters
    swapped = 0.5 / 0.7**2 * loss_rb + math.log(1 + 0.49) + 0.5 / 1.6**2 * loss_cl + math.log(1 + 2.56)
    assert abs(swapped.item() - loss.item()) > 1e-2


def test_the_faithful_projector_has_the_official_widths(tmp_path: Path) -> None:
    model = simmtm.load_pretrained(_imported(tmp_path))
    linear1, bn, linear2, dropout = (model.projector.net[i] for i in (1, 2, 4, 5))
    assert (linear1.in_features, linear1.out_features, bn.num_features, linear2.out_features) == (L * D, L * D // 2, L * D // 2, 128)
    assert dropout.p == 0.1
    assert model.decoder[2].p == 0.1  # head dropout on the reconstruction decoder


def test_an_encoder_only_checkpoint_imports_with_fresh_heads(tmp_path: Path, capsys) -> None:
    official = official_model()
    encoder_only = {k: v for k, v in official.state_dict().items() if k.startswith(("encoder.", "enc_embedding."))}
    config = official_config(tmp_path)
    assert main(["import-official", str(save_official(tmp_path, encoder_only)), "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    assert "freshly initialised: combine, decoder, projector" in capsys.readouterr().out
    model = simmtm.load_pretrained(tmp_path / "run", checkpoint="last")
    torch.testing.assert_close(model.encoder.token.weight, official.enc_embedding.value_embedding.tokenConv.weight)


# --- errors: exit 2 naming the key ---------------------------------------------------------------------------


def test_an_unmappable_key_is_exit_2_naming_it(tmp_path: Path, capsys) -> None:
    state = {**official_model().state_dict(), "head.linear.weight": torch.zeros(4, L * D)}  # a fine-tuning head
    code = main(["import-official", str(save_official(tmp_path, state)), "--config", str(official_config(tmp_path)), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "official key 'head.linear.weight' has no counterpart" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_shape_that_disagrees_with_the_config_is_exit_2_naming_the_key(tmp_path: Path, capsys) -> None:
    state = official_model().state_dict()
    code = main(["import-official", str(save_official(tmp_path, state, wrap=False)), "--config", str(official_config(tmp_path)),
                 "--set", "model.projector_hidden=32", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "official key 'pooler.pooler.1.weight' has shape (64, 128)" in err and "(32, 128)" in err


def test_a_config_that_is_not_the_official_model_is_refused(tmp_path: Path, capsys) -> None:
    path = save_official(tmp_path, official_model().state_dict())
    code = main(["import-official", str(path), "--config", str(official_config(tmp_path, projector="lean")), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "model.projector is 'lean'" in capsys.readouterr().err


def test_load_pretrained_refuses_a_directory_without_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(simmtm.UserError, match="not a pre-training run directory"):
        simmtm.load_pretrained(tmp_path)


def _imported(tmp_path: Path) -> Path:
    config = official_config(tmp_path)
    assert main(["import-official", str(save_official(tmp_path, official_model().state_dict())), "--config", str(config),
                 "--out", str(tmp_path / "run")]) == 0
    return tmp_path / "run"


def test_the_imported_run_fine_tunes_through_the_normal_path(tmp_path: Path, tiny_csv) -> None:
    """`simmtm finetune --from DIR` reads the imported run like its own: the encoder weights arrive."""
    from simmtm.train import finetuning as finetune

    run = _imported(tmp_path)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["data"]["path"] = str(tiny_csv)
    raw["finetune"] = {"horizons": [4], "epochs": 1, "batch_size": 8, "max_steps": 1, "val_batches": 1}
    metrics = finetune.run(parse_config(raw), pretrained=run, score_test=False)
    assert metrics["pretrained"] is True and math.isfinite(metrics["val_mse"])


def test_load_pretrained_returns_an_own_run_in_eval_mode(tmp_path: Path, tiny_config) -> None:
    """A `simmtm pretrain` run (no recorded shapes: they come from its data) loads with the weights of its
    checkpoint and keeps the model(series, mask) contract."""
    from simmtm.train import pretraining as pretrain
    from simmtm.train.checkpoint import load_state

    config = parse_config(tiny_config({"model": {"projector": "official", "head_dropout": 0.1}}))
    pretrain.run(config, run_dir=tmp_path / "pre")
    model = simmtm.load_pretrained(tmp_path / "pre")
    assert isinstance(model, SimMTM) and not model.training
    saved = load_state(tmp_path / "pre" / "checkpoints" / "last.pt")["model"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    series = torch.randn(4, 24, 1)
    mask = geometric_mask((2, 4, 1, 24), 0.5, 3.0, generator=torch.Generator().manual_seed(0)).transpose(2, 3)
    with torch.no_grad():
        first, second = model(series, mask), model(series, mask)
    assert first.rebuilt.shape == series.shape and torch.isfinite(first.loss)
    torch.testing.assert_close(first.loss, second.loss)  # eval: no dropout


# --- training mode: loss and every parameter's gradient ---------------------------------------------------------


def test_training_mode_with_dropout_0_gives_the_official_loss_and_every_gradient(tmp_path: Path) -> None:
    """Training mode (BatchNorm on batch statistics, autograd through everything) with every dropout at 0: the loss
    and the gradient of every parameter, mapped through the import's own key mapping, agree with the official."""
    from simmtm.weights.official import official_state_to_simmtm

    official = official_model()
    official.pooler.pooler[5].p = 0.0  # dropout 0 (the official head_dropout is 0.1)
    state = {k: v.clone() for k, v in official.state_dict().items()}
    config = official_config(tmp_path, head_dropout=0.0, dropout=0.0, attention_dropout=0.0)
    assert main(["import-official", str(save_official(tmp_path, state)), "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    model = simmtm.load_pretrained(tmp_path / "run").train()

    x, keep = batch(1)
    official.train()
    loss, loss_cl, loss_rb, _ = official(torch.cat([x, x.repeat(M, 1, 1) * keep]), x, torch.cat([torch.ones_like(x), keep]))
    loss.backward()
    hidden = (keep == 0).view(M, B, L, C).permute(0, 1, 3, 2).reshape(M, B * C, L, 1)
    out = model(to_series(x, True), hidden)
    out.loss.backward()

    for ours, theirs in ((out.loss, loss), (out.reconstruction, loss_rb), (out.constraint, loss_cl)):
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    grads = {k: p.grad for k, p in official.named_parameters() if p.grad is not None}
    assert set(dict(official.named_parameters())) - set(grads) == {"enc_embedding.temporal_embedding.embed.weight"}  # F7
    mapped, absent = official_state_to_simmtm({**state, **grads}, model)
    assert absent == []
    checked = 0
    for key, param in model.named_parameters():
        assert param.grad is not None, key
        expected = mapped[key]
        # + 1e-6: the bias of the Linear before BatchNorm has no gradient in exact arithmetic (round-off, ~1e-7)
        assert (param.grad - expected).abs().max() <= 1e-4 * expected.abs().max() + 1e-6, key
        checked += 1
    assert checked == len(grads) - 4 * LAYERS  # the q, k, v projections' 6 tensors are one qkv's 2 in each layer
    assert all(g.abs().max() > 0 for g in grads.values())  # every official gradient is really non-zero


# --- geometric masks against the official Markov chain ---------------------------------------------------------


def official_geometric_keep(series: int, length: int, r: float, lm: float, rng: np.random.Generator) -> np.ndarray:
    """The official chain (utils/augmentations.py ``geom_noise_mask_single``): state 0 masks, 1 keeps; it starts
    masked with probability r and leaves state s with probability [1/lm, (1/lm) r/(1-r)][s] after each step. Run
    here for many independent series at once (the official code runs one chain over the flattened batch, row K2)."""
    p = np.array([1 / lm, 1 / lm * r / (1 - r)])
    state = (rng.random(series) > r).astype(int)
    keep = np.empty((series, length), dtype=bool)
    for i in range(length):
        keep[:, i] = state == 1
        switch = rng.random(series) < p[state]
        state = np.where(switch, 1 - state, state)
    return keep


def mask_statistics(hidden: np.ndarray) -> dict[str, float]:
    """Masked fraction, first step masked, and mean lengths of the masked and unmasked runs that lie inside a series
    (runs cut by a series border are left out, on both sides of the comparison alike)."""
    rows, cols = np.nonzero(hidden[:, 1:] != hidden[:, :-1])  # a run ends at each col
    inside = rows[1:] == rows[:-1]
    lengths = (cols[1:] - cols[:-1])[inside]
    masked = hidden[rows[1:][inside], cols[1:][inside]]
    return {"fraction": hidden.mean(), "first": hidden[:, 0].mean(),
            "masked_run": lengths[masked].mean(), "unmasked_run": lengths[~masked].mean()}


@pytest.mark.parametrize("r", [0.15, 0.3, 0.5, 0.75])
def test_geometric_masks_have_the_official_chains_statistics(r: float) -> None:
    series, length, lm = 20_000, 100, 3.0
    theirs = mask_statistics(~official_geometric_keep(series, length, r, lm, np.random.default_rng(0)))
    ours = mask_statistics(geometric_mask((series, length), r, lm, generator=torch.Generator().manual_seed(0)).numpy())
    first_sigma = (2 * r * (1 - r) / series) ** 0.5  # the difference of two binomial proportions
    assert abs(ours["first"] - theirs["first"]) < 4 * first_sigma
    assert abs(ours["fraction"] - theirs["fraction"]) < 0.005
    for key in ("masked_run", "unmasked_run"):
        assert ours[key] == pytest.approx(theirs[key], rel=0.02), key
    assert theirs["fraction"] == pytest.approx(r, abs=0.01)  # the statistics measure what they should


# --- the optimiser's betas -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finetune_cfg", "expected"),
    [({}, (0.9, 0.999)), ({"lr_schedule": "official"}, (0.95, 0.999)),
     ({"lr_schedule": "official", "betas": [0.8, 0.99]}, (0.8, 0.99))],
)
def test_the_optimisers_get_the_configured_betas(finetune_cfg, expected, tiny_config, monkeypatch) -> None:
    """pretrain.betas and finetune.betas reach Adam; lr_schedule official implies the official fine-tuning's
    beta1 0.95 (its OneCycleLR sets max_momentum on creation) unless finetune.betas is given."""
    from simmtm.train import finetuning as finetune
    from simmtm.train import pretraining as pretrain

    made: list[tuple[float, float]] = []

    class RecordingAdam(torch.optim.Adam):
        def __init__(self, params, **kwargs) -> None:
            super().__init__(params, **kwargs)
            made.append(self.param_groups[0]["betas"])

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    raw = tiny_config({"pretrain": {"betas": [0.85, 0.98], "max_steps": 1}})
    pretrain.run(parse_config(raw))
    raw["finetune"] = {**raw["finetune"], "horizons": [4], "epochs": 1, "max_steps": 1, **finetune_cfg}
    finetune.run(parse_config(raw), score_test=False)
    assert made == [(0.85, 0.98), expected]


# --- data: the official pre-training windows -----------------------------------------------------------------


def test_pretrain_horizon_cut_gives_the_official_etth1_pretraining_windows(shared_data: Path) -> None:
    """The official pre-training loads ETTh1 with pred_len 96: its windows stop as if a 96-step horizon followed
    (8,640 - 336 - 96 + 1 = 8,209 training windows; simmtm's default uses all 8,305)."""
    from simmtm.data.inputs import load_inputs

    def windows(cut: int, horizon: int = 0) -> tuple[int, int]:
        config = parse_config({"data": {"name": "ETTh1", "seq_len": 336, "pretrain_horizon_cut": cut}})
        inputs = load_inputs(config, horizon=horizon)
        return len(inputs.train), len(inputs.val)

    assert windows(0) == (8305, 2881)
    assert windows(96) == (8209, 2785)
    assert windows(96, horizon=96) == windows(0, horizon=96) == (8209, 2785)  # fine-tuning windows: unchanged
