"""The Python API for notebooks and scripts: what the ``simmtm`` commands do, as functions with typed results.

    import simmtm
    pre = simmtm.pretrain("sweeps/quick.yaml", out="runs/pre", overrides={"pretrain.epochs": 1})
    ft = simmtm.finetune("sweeps/quick.yaml", out="runs/ft", pretrained=pre.run_dir)
    both = simmtm.run("sweeps/quick.yaml", out="runs/both")  # pre-train, fine-tune, random-init baseline
    enc = simmtm.export(pre.run_dir, out="runs/encoder")
    sw = simmtm.sweep("sweeps/quick.yaml", out="runs/sweep")
    rec = simmtm.recommend(sw.out, write="best.yaml")

Each takes a config path or a dict (the same mapping a YAML file holds) plus ``overrides`` (``{"key": value}`` or
``["key=value", ...]``, as ``--set``) and returns a small frozen dataclass. Errors are the CLI's: a ``UserError``
whose message is the line the CLI prints. Nothing here imports torch or Ray until a function is called.
Runnable examples of every call: docs/api.md.
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from simmtm.cluster import single_run as runs
from simmtm.cluster.resources import Scaling
from simmtm.config.schema import RunConfig, apply_overrides, config_yaml, parse_config, read_yaml
from simmtm.outdir.rundir import check_run_all_dir, guard_finetune_dir, own
from simmtm.outdir.write_targets import check_output_folder
from simmtm.tuning.outputs import state_counts

if TYPE_CHECKING:
    from simmtm.verdict.recommendation import Recommendation
    from simmtm.weights.exporting import ExportedEncoder

__all__ = [
    "AnalysisResult",
    "FinetuneResult",
    "PretrainResult",
    "RunResult",
    "SweepResult",
    "analyze",
    "config_text",
    "export",
    "finetune",
    "pretrain",
    "recommend",
    "resolve_config",
    "run",
    "sweep",
]

ConfigSource = str | Path | Mapping[str, Any] | RunConfig  # a RunConfig: already validated (the CLI's)
Overrides = Mapping[str, Any] | Sequence[str] | None


# --- results -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainResult:
    run_dir: Path
    config: RunConfig
    metrics: Mapping[str, Any]  # the last epoch: train_* and val_* losses, epoch, step

    @property
    def val_loss(self) -> float:
        return float(self.metrics["val_loss"])


@dataclass(frozen=True)
class FinetuneResult:
    run_dir: Path
    config: RunConfig
    metrics: Mapping[str, Any]  # test mse/mae (per horizon under "horizons") or accuracy/f1, and their val_ twins
    pretrained: Path | None  # None: the random-init baseline


@dataclass(frozen=True)
class RunResult:
    out: Path
    pretrain: PretrainResult
    finetune: FinetuneResult
    baseline: FinetuneResult | None  # None: run with baseline=False
    summary: Path  # summary.yaml: the headline scores of finetune and baseline


@dataclass(frozen=True)
class SweepResult:
    out: Path
    finished: bool  # every trial reached a final state (else: resume with ``sweep(..., resume=True)``)
    metric: str  # what was optimised (e.g. val_mse) and in which direction
    mode: str
    counts: Mapping[str, int]  # trials per state (simmtm.tuning.outputs.STATES)
    best_params: Mapping[str, Any] = field(default_factory=dict)  # the best configuration (empty: none completed)
    best_score: float | None = None  # its mean validation score over repeats
    test_score: float | None = None  # its mean test score (scored once, after the search)
    best_yaml: Path | None = None  # a run config with the best parameters
    wall_s: float = 0.0


@dataclass(frozen=True)
class AnalysisResult:
    report: Path  # report.html
    recommendation_json: Path
    figures: Mapping[str, Path]  # name -> PNG
    counts: Mapping[str, int]
    recommendation: Recommendation  # simmtm.analysis.Recommendation, as ``recommend`` returns it


# --- configs -------------------------------------------------------------------------------------------------


def config_text(config: ConfigSource, overrides: Overrides = None) -> str:
    """``simmtm config``: the resolved run config as YAML, the ``config.yaml`` a run with it would save."""
    return config_yaml(resolve_config(config, overrides)[0])


def resolve_config(config: ConfigSource, overrides: Overrides = None) -> tuple[RunConfig, dict[str, Any]]:
    """The validated config and its raw mapping (sweep sections included) from a path or a dict plus overrides."""
    if isinstance(config, RunConfig):
        config = config.model_dump(mode="json")
    if isinstance(config, Mapping):
        raw, source = copy.deepcopy(dict(config)), "config"
    else:
        raw, source = read_yaml(config), str(config)
    if isinstance(overrides, Mapping):
        overrides = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]  # JSON is YAML
    elif isinstance(overrides, str):
        overrides = [overrides]
    raw = apply_overrides(raw, list(overrides or []), source="overrides")
    return parse_config(raw, source=source), raw


# --- the commands ------------------------------------------------------------------------------------------------


def pretrain(
    config: ConfigSource,
    *,
    out: str | Path,
    overrides: Overrides = None,
    overwrite: bool = False,
    progress: bool = False,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    placement: str = "PACK",
    address: str | None = None,
    storage: str | None = None,
    max_failures: int = 2,
    restart: bool | None = None,
) -> PretrainResult:
    """``simmtm pretrain``: pre-train; an existing run in ``out`` resumes unless ``overwrite``.

    Without ``workers`` the run stays in this process, without Ray. ``workers=N``: N data-parallel Ray Train workers
    (``pretrain.batch_size`` is the global batch), each reserving ``cpus_per_worker`` and ``gpus_per_worker``,
    placed by ``placement`` (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD), on the Ray cluster at ``address`` (default:
    a local Ray), with checkpoints in ``storage`` (default OUT/ray) and up to ``max_failures`` restarts.
    ``restart``: the old name of ``overwrite`` (deprecated).
    """
    if restart is not None:
        warnings.warn("pretrain(restart=...) is deprecated; use overwrite=...", DeprecationWarning, stacklevel=2)
        overwrite = overwrite or restart
    cfg, _ = resolve_config(config, overrides)
    out = Path(out)
    check_output_folder(out)
    targets = runs.tracker_targets(cfg, store=out)
    if workers is None:
        runs.no_distributed_options(
            address=address,
            storage=storage,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            max_failures=max_failures,
            placement=placement,
        )
        metrics = runs.pretrain_here(cfg, out, targets=targets, overwrite=overwrite, progress=progress)
        return PretrainResult(out, cfg, metrics)
    scaling = Scaling.from_flags(
        workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, placement_strategy=placement
    )
    metrics = runs.pretrain_workers(
        cfg,
        out,
        scaling,
        targets=targets,
        overwrite=overwrite,
        address=address,
        storage=storage,
        max_failures=max_failures,
    )
    return PretrainResult(out, cfg, metrics)


def finetune(
    config: ConfigSource,
    *,
    out: str | Path,
    pretrained: str | Path | None = None,
    overrides: Overrides = None,
    overwrite: bool = False,
    progress: bool = False,
) -> FinetuneResult:
    """``simmtm finetune``: fine-tune (or probe) the encoder of ``pretrained``; without it the random-init baseline."""
    from simmtm.train import finetuning  # lazy: torch only when called (the module docstring)

    cfg, _ = resolve_config(config, overrides)
    out = Path(out)
    check_output_folder(out)
    finetuning.check_inputs(cfg, pretrained=pretrained)  # bad input or --from fails before anything is written
    targets = runs.tracker_targets(cfg, store=out)
    with own(out):  # one process per run folder
        guard_finetune_dir(out, overwrite=overwrite)
        metrics = runs.finetune_here(cfg, out, pretrained=pretrained, targets=targets, progress=progress)
    return FinetuneResult(out, cfg, metrics, Path(pretrained) if pretrained is not None else None)


def run(
    config: ConfigSource,
    *,
    out: str | Path,
    overrides: Overrides = None,
    baseline: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> RunResult:
    """``simmtm run``: pre-train (OUT/pretrain), fine-tune it (OUT/finetune) and, unless ``baseline=False``, the
    random-init baseline (OUT/baseline); OUT/summary.yaml holds their headline scores. ``overwrite`` discards an
    earlier pre-training in OUT/pretrain (the fine-tunings are always replaced)."""
    from simmtm.train import finetuning, pretraining  # lazy: torch

    cfg, _ = resolve_config(config, overrides)
    out = Path(out)
    check_output_folder(out)
    pretraining.check_inputs(cfg)  # pre-training's inputs and the fine-tuning's: nothing is written before
    finetuning.check_inputs(cfg)
    targets = runs.tracker_targets(cfg, store=out)  # one W&B group and MLflow experiment for the three runs
    pre_dir, ft_dir, base_dir = out / "pretrain", out / "finetune", out / "baseline"
    with own(out):  # one owner for the folder and the three runs in it
        check_run_all_dir(out)
        for d in (ft_dir, base_dir):
            guard_finetune_dir(d, overwrite=True)
        pre = runs.pretrain_here(cfg, pre_dir, targets=targets, overwrite=overwrite, progress=progress)
        scores = {"SimMTM": runs.finetune_here(cfg, ft_dir, pretrained=pre_dir, targets=targets, progress=progress)}
        if baseline:
            scores["random init"] = runs.finetune_here(
                cfg, base_dir, pretrained=None, targets=targets, progress=progress
            )
        summary = out / "summary.yaml"
        summary.write_text(yaml.safe_dump({k: runs.headline(v) for k, v in scores.items()}, sort_keys=False))
    return RunResult(
        out=out,
        pretrain=PretrainResult(pre_dir, cfg, pre),
        finetune=FinetuneResult(ft_dir, cfg, scores["SimMTM"], pre_dir),
        baseline=FinetuneResult(base_dir, cfg, scores["random init"], None) if baseline else None,
        summary=summary,
    )


def export(run: str | Path, *, out: str | Path) -> ExportedEncoder:
    """``simmtm export``: ``run``'s encoder as safetensors weights, config.json and a model card in ``out``
    (load it with ``simmtm.load_encoder(out)``). ``run``: a pretrain, run or finetune folder, or a sweep's
    best/<trial>."""
    from simmtm.weights.exporting import export_encoder  # lazy: torch

    return export_encoder(run, out)


def sweep(
    config: str | Path | Mapping[str, Any],
    *,
    out: str | Path,
    overrides: Overrides = None,
    resume: bool = False,
    address: str | None = None,
    warm_start: str | Path | None = None,
    verbose: int = 0,
) -> SweepResult:
    """``simmtm sweep``: the search in a sweep file (or dict), on a local Ray unless ``address``."""
    from simmtm.tuning.driver import run_sweep  # lazy: Ray and torch

    if isinstance(config, Mapping):  # the driver reads a file: hand it the dict as one
        with tempfile.TemporaryDirectory(prefix="simmtm-sweep-") as tmp:
            path = Path(tmp) / "sweep.yaml"
            path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
            return sweep(
                path,
                out=out,
                overrides=overrides,
                resume=resume,
                address=address,
                warm_start=warm_start,
                verbose=verbose,
            )
    if isinstance(overrides, Mapping):
        overrides = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    outcome = run_sweep(
        config,
        out,
        resume=resume,
        address=address,
        overrides=list(overrides or []),
        verbose=verbose,
        warm_start=warm_start,
    )
    counts = state_counts(outcome.rows)
    best = outcome.best
    scores = [r.score for r in best if r.score is not None]  # all of them: the ranking keeps scored trials only
    tests = [r.test_score for r in best if r.test_score is not None]
    return SweepResult(
        out=outcome.out,
        finished=outcome.finished,
        metric=outcome.metric,
        mode=outcome.mode,
        counts=counts,
        best_params={k: v for k, v in best[0].params.items() if v is not None} if best else {},
        best_score=sum(scores) / len(scores) if scores else None,
        test_score=sum(tests) / len(tests) if tests else None,
        best_yaml=outcome.out / "best.yaml" if (outcome.out / "best.yaml").is_file() else None,
        wall_s=outcome.wall_s,
    )


def analyze(
    sweep_dir: str | Path,
    *,
    out: str | Path | None = None,
    interactive: bool = True,
    bootstrap: int = 1000,
    seed: int = 0,
) -> AnalysisResult:
    """``simmtm analyze``: report.html, figures and recommendation.json for a sweep directory."""
    from simmtm.analysis.report import write_report  # lazy: pandas, matplotlib, Optuna

    report = write_report(sweep_dir, out, interactive=interactive, n_boot=bootstrap, seed=seed)
    assert report.recommendation is not None  # write_report always recommends (or says why not)
    return AnalysisResult(
        report.html,
        report.recommendation_json,
        dict(report.figures),
        report.sweep.counts(),
        report.recommendation,
    )


def recommend(
    sweep_dir: str | Path, *, write: str | Path | None = None, bootstrap: int = 1000, seed: int = 0
) -> Recommendation:
    """``simmtm recommend``: r, M (tau, encoder) to run next, with an expected score; ``write``: also the run config.

    The result is the one recommendation type (``simmtm.analysis.Recommendation``): the fields that
    ``simmtm recommend --json`` prints, ``summary()`` the lines it prints, ``best_yaml`` the run config written.
    """
    from dataclasses import replace

    from simmtm.analysis.load import load_sweep  # lazy: pandas and Optuna
    from simmtm.analysis.recommend import recommend as recommend_params  # lazy: pandas, scipy and Optuna
    from simmtm.analysis.recommend import write_best_config  # lazy, as the line above

    loaded = load_sweep(sweep_dir)
    rec = recommend_params(loaded, n_boot=bootstrap, seed=seed)
    if write is None or rec.status != "ok":
        return rec
    write_best_config(loaded, rec, write)
    return replace(rec, best_yaml=str(write))
