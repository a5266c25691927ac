"""The typed run config: one YAML file (plus ``key=value`` overrides) describes a whole run.

Every component receives its own small section (``DataConfig``, ``ModelConfig``, ...), never the whole
namespace. Unknown keys, wrong types and out-of-range values are rejected with one line that names the key and
what would be valid (``ConfigError``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from simmtm.config.keys import error_line, set_key
from simmtm.errors import ConfigError

__all__ = [
    "SWEEP_SECTIONS",
    "DataConfig",
    "FinetuneConfig",
    "ModelConfig",
    "PretrainConfig",
    "RunConfig",
    "apply_overrides",
    "config_yaml",
    "dump_config",
    "load_config",
    "parse_config",
]


# The masking strategies ``pretrain.masking`` accepts; each is registered by ``simmtm.method.masking``
# (``register_masking`` refuses a name missing here, tests/test_masking.py checks every one is registered).
MASKING_NAMES = ("geometric", "random")


def _known_masking(name: str) -> str:
    if name not in MASKING_NAMES:
        raise ValueError(f"unknown masking '{name}'; valid: {', '.join(sorted(MASKING_NAMES))}")
    return name


MaskingKind = Annotated[str, AfterValidator(_known_masking)]

# Sections that only `simmtm sweep` reads; a run ignores them so that a sweep file is also a runnable config.
SWEEP_SECTIONS = ("search", "tune", "resources")


Beta = Annotated[float, Field(ge=0, lt=1)]  # one of Adam's betas


class _Section(BaseModel):
    # allow_inf_nan=False: .inf/.nan is never a valid setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    """Where the series come from and how they are cut into windows."""

    name: str | None = None  # a named data set (ETTh1, GunPoint, ...) resolved under the data directory
    path: str | None = None  # any file instead of a name (.csv, .ts, .pt, .npz)
    task: Literal["forecasting", "classification"] | None = None  # inferred from the file when omitted
    seq_len: int = Field(336, ge=2)
    features: Literal["M", "S"] = "M"  # M: all channels; S: the `target` column only
    target: str = "OT"
    stride: int = Field(1, ge=1)  # step between training window starts (evaluation always uses 1)
    # Pre-training windows end this many rows before each split's end, as if a horizon followed: the official code
    # pre-trains on its fine-tuning dataset with pred_len 96 (ETTh1: 8,209 training windows instead of 8,305). 0: all.
    pretrain_horizon_cut: int = Field(0, ge=0)
    val_fraction: float = Field(0.2, gt=0, lt=1)  # classification: share of the train file held out
    # classification .ts with series of unequal lengths: pad to the longest (with a padding mask the masking, the
    # normalisation and the encoders respect), truncate to seq_len, or error (refuse, naming the line)
    unequal_length: Literal["pad", "truncate", "error"] = "error"
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _name_or_path(self) -> DataConfig:
        if self.name is None and self.path is None:
            raise ValueError("set data.name (a named data set) or data.path (a file)")
        return self


class ModelConfig(_Section):
    """The encoder (chosen by name) and the SimMTM heads around it."""

    encoder: str = "transformer"
    d_model: int = Field(32, ge=1)
    n_heads: int = Field(16, ge=1)
    n_layers: int = Field(3, ge=1)
    d_ff: int = Field(64, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    # Dropout on the attention weights (the official code uses `dropout` there too: 0.1, as in sweeps/etth1.yaml).
    # Off by default, as runs made before it existed. The small-head CPU kernel applies it itself (no L x L map kept;
    # the rate rounded to a multiple of 2^-16), elsewhere torch's fused kernels do.
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    patch_len: int = Field(16, ge=1)  # encoder `patch` only
    patch_stride: int = Field(8, ge=1)  # encoder `patch` only
    # encoder `resnet1d`: the convolutions of each block
    kernel_sizes: list[int] = Field(default_factory=lambda: [7, 5, 3])
    channel_independent: bool | None = None  # None: True for forecasting, False for classification
    # The series-wise projector (docs/fidelity.md). official: Flatten, Linear(T*D -> projector_hidden), norm, ReLU,
    # Linear(-> projector_dim), Dropout(head_dropout), the official Pooler_Head (58.5M parameters at ETTh1).
    # lean: Linear(T*D -> projector_dim), norm, ReLU, Linear(projector_dim -> projector_dim), no dropout (1.4M).
    projector: Literal["official", "lean"] = "lean"
    projector_hidden: int | None = Field(None, ge=1)  # official only; None: T*D // 2 as in the official code
    projector_dim: int = Field(128, ge=1)  # the series vector's width (official 128)
    projector_norm: Literal["batch", "layer", "none"] = "batch"
    # Dropout on the projector's output (official only), the reconstruction decoder and the forecasting head;
    # the official code uses 0.1 (sweeps/etth1.yaml). The defaults of this section reproduce runs made before these
    # switches existed; sweeps/etth1.yaml switches the official recipe on (docs/fidelity.md).
    head_dropout: float = Field(0.0, ge=0, lt=1)
    # official: kaiming-normal (fan_in, leaky_relu) on the Transformer's token convolution, as the official
    # TokenEmbedding (sweeps/etth1.yaml); torch: torch's default Conv1d initialisation, as runs made before.
    embedding_init: Literal["official", "torch"] = "torch"
    # Per-series standardisation inside the model (statistics over kept points). The official forecasting code
    # does it; the official classification code does not (its data are standardised beforehand).
    instance_norm: bool = True
    tfc_kernel: int = Field(25, ge=1)  # encoder `tfc`: the first convolution's kernel (then 8, 8)
    tfc_stride: int = Field(3, ge=1)  # encoder `tfc`: the first convolution's stride


class PretrainConfig(_Section):
    """SimMTM pre-training: masking, the objective and the optimiser."""

    mask_ratio: float = Field(0.5, gt=0, lt=1)  # r: fraction of time points masked
    num_masked: int = Field(3, ge=1)  # M: masked copies per series
    mask_length: float = Field(3.0, ge=1)  # lm: mean length of a masked run (geometric masking)
    masking: MaskingKind = "geometric"
    temperature: float = Field(0.2, gt=0)  # tau
    loss_weighting: Literal["auto", "fixed"] = "auto"  # auto: the official learnable weighting
    constraint_weight: float = Field(0.1, ge=0)  # lambda, with loss_weighting: fixed
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(16, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)  # Adam's (beta1, beta2), torch's and the official pre-training's
    scheduler: Literal["cosine", "none"] = "cosine"
    grad_clip: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)  # stop after this many optimiser steps (smoke runs)
    val_batches: int | None = Field(None, ge=1)  # cap on validation batches per epoch
    gather: bool | None = None  # all-gather across data-parallel workers; None: on when workers > 1
    # Which rows the reconstruction loss covers. originals: each original rebuilt from its neighbours, against the
    # original (official forecasting); every_view: every row, masked copies included, against its own input
    # (official classification).
    reconstruction: Literal["originals", "every_view"] = "originals"


class FinetuneConfig(_Section):
    """Downstream training of a head on the (pre-trained or random) encoder."""

    mode: Literal["full", "probe"] = "full"  # probe: frozen encoder, only the head learns
    horizons: list[int] = Field(default_factory=lambda: [96, 192, 336, 720])
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0)
    lr_decay: float = Field(0.5, gt=0, le=1)  # multiply the lr by this after each epoch
    # halving: lr, lr*lr_decay, lr*lr_decay^2, ...; official: the official code's sequence, whose first epoch runs at
    # lr/25 (a OneCycleLR created but never stepped), then lr, lr*lr_decay, ...
    lr_schedule: Literal["halving", "official"] = "halving"
    # Adam's (beta1, beta2); None: (0.9, 0.999), or (0.95, 0.999) with lr_schedule official (the official OneCycleLR,
    # created but never stepped, also sets beta1 to its max_momentum 0.95 for the whole run)
    betas: tuple[Beta, Beta] | None = None
    # which pre-training checkpoint to fine-tune: best (lowest pre-training validation loss, as official) or last
    from_checkpoint: Literal["best", "last"] = "best"
    # Dropout while fine-tuning; None keeps the pre-trained model's value. The model's shapes always come from the
    # checkpoint (or, for the random-init baseline, from the model section).
    dropout: float | None = Field(None, ge=0, lt=1)
    attention_dropout: float | None = Field(None, ge=0, lt=1)
    head_dropout: float | None = Field(None, ge=0, lt=1)
    patience: int = Field(3, ge=1)  # early stopping on the validation score
    max_steps: int | None = Field(None, ge=1)  # per horizon
    eval_batch_size: int = Field(256, ge=1)
    val_batches: int | None = Field(None, ge=1)  # cap on validation batches per epoch

    def adam_betas(self) -> tuple[float, float]:
        """The betas the fine-tuning optimiser runs with (``betas``, else the schedule's default)."""
        if self.betas is not None:
            return self.betas
        return (0.95, 0.999) if self.lr_schedule == "official" else (0.9, 0.999)

    @model_validator(mode="after")
    def _positive_horizons(self) -> FinetuneConfig:
        if not self.horizons or any(h < 1 for h in self.horizons):
            raise ValueError(f"horizons must be a non-empty list of positive integers, got {self.horizons}")
        return self


class RunConfig(_Section):
    """A whole run. Sweep files add `search`, `tune` and `resources`, which only `simmtm sweep` reads."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; None leaves torch's default
    # fp32; tf32 (CUDA matmuls and convolutions in TF32); bf16 (torch.autocast to bfloat16, on CPU too)
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    compile: bool = False  # torch.compile the model (on CUDA with mode="reduce-overhead")
    # glibc's malloc gives large freed blocks back at once (method.memory.return_freed_memory), for the whole process:
    # peak RSS is what a step's tensors need, not that plus the heap fragmentation of earlier steps (-0.6 GB at the
    # paper's ETTh1 config), for ~10 % more CPU time (page faults). auto: on for runs on the CPU. Not a model change.
    return_freed_memory: Literal["auto", True, False] = "auto"
    # float32 values below ~1.2e-38 (denormals) count as zero in CPU arithmetic (torch.set_flush_denormal), which
    # is otherwise far slower on them. auto: on for runs on the CPU, as it was while the small-head kernel was a
    # ctypes library (its -ffast-math start-up code did it to the process); docs/fidelity.md P8. Not a model change.
    flush_denormal: Literal["auto", True, False] = "auto"
    log_every: int = Field(50, ge=1)  # steps between host reads of the losses (TensorBoard, finite check, progress)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    # a run's experiment trackers (train.trackers.RunTrackers): TensorBoard is always written; a sweep: tune.loggers
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = ["tensorboard"]
    search: dict[str, Any] | None = None
    tune: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None

    def run_dict(self) -> dict[str, Any]:
        """The config without the sweep-only sections, as plain data."""
        return self.model_dump(mode="json", exclude={*SWEEP_SECTIONS})


# --- loading -------------------------------------------------------------------------------------------------


def parse_config(raw: dict[str, Any], *, source: str = "config") -> RunConfig:
    """Validate a plain dict into a RunConfig, or raise ConfigError with one line per problem (first shown)."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping of sections (data, model, pretrain, ...), got {type(raw).__name__}"
        )
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(error_line(exc, source, RunConfig)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None, *, source: str = "--set") -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict, in place, and return it."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{source}: '{item}' is not key=value (for example pretrain.mask_ratio=0.3)")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = safe_load_unique(text, name=f"{source} {key}")
        except yaml.YAMLError:
            value = text
        set_key(raw, key, value, source=source)
    return raw


def _refuse_repeated_keys(node: yaml.Node, where: str, name: str) -> None:
    """Walk a composed YAML tree; a key given twice in one mapping is an error naming it and both lines."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            dotted = f"{where}.{key}" if where else key
            if isinstance(key_node, yaml.ScalarNode) and key in seen:
                raise ConfigError(f"{name}: key '{dotted}' appears twice, at lines {seen[key]} and {line}; keep one")
            seen[key] = line
            _refuse_repeated_keys(value_node, dotted, name)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_repeated_keys(item, f"{where}[{i}]", name)


def safe_load_unique(text: str, *, name: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys at any depth (plain YAML keeps the last one silently)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_repeated_keys(node, "", name)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file (a key given twice in one mapping is one)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; expected a YAML config file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = safe_load_unique(path.read_text(), name=str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; a config needs at least a data section")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, pretrain, ...)")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run (or sweep) file, apply ``--set`` overrides, validate."""
    raw = apply_overrides(read_yaml(path), overrides)
    return parse_config(raw, source=str(path))


def config_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (the run-only part: sweep sections are left out), as a run folder saves it."""
    return yaml.safe_dump(config.run_dict(), sort_keys=False)


def dump_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (``config_yaml``)."""
    Path(path).write_text(config_yaml(config))
