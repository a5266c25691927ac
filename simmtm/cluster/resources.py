"""What one run or trial occupies: ``workers`` processes of ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs.

One type for the sweep file's ``resources`` section, ``simmtm pretrain --workers`` (``Scaling`` adds where the
workers go) and the offline cluster check. Importing this module imports neither Ray nor torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from simmtm.config.keys import error_line
from simmtm.config.schema import RunConfig
from simmtm.errors import UserError

if TYPE_CHECKING:
    import ray.train

__all__ = ["Resources", "Scaling", "PLACEMENT_STRATEGIES", "describe_nodes"]

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class Resources(BaseModel):
    """``workers`` data-parallel processes with these CPUs and GPUs each (frozen)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise ValueError(
                f"{value:g}: Ray accepts a fraction of one GPU or a whole number of GPUs per worker, "
                "not a fraction above one"
            )
        return value

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker

    def whole_gpus(self) -> int:
        """GPUs one node needs to hold all workers: fractional workers share a GPU only while they fit in it."""
        g = self.gpus_per_worker
        if g <= 0:
            return 0
        if g > 1:
            return math.ceil(self.workers * g)
        per_gpu = math.floor(1 / g + 1e-9)
        return math.ceil(self.workers / per_gpu)

    def worker_slots(self, nodes: Sequence[Mapping[str, float]]) -> int:
        """How many workers of this size the nodes hold at once (each worker on one node)."""
        cpw, gpw = self.cpus_per_worker, self.gpus_per_worker
        slots = 0
        for node in nodes:
            by_cpu = math.floor(node.get("CPU", 0) / cpw + 1e-9)
            by_gpu = math.floor(node.get("GPU", 0) / gpw + 1e-9) if gpw > 0 else by_cpu
            slots += min(by_cpu, by_gpu)
        return slots

    def per_worker(self) -> str:
        return f"{self.workers} worker(s) x ({self.cpus_per_worker:g} CPU, {self.gpus_per_worker:g} GPU)"

    def __str__(self) -> str:
        return f"{self.per_worker()} = {self.cpus:g} CPU + {self.whole_gpus()} GPU"

    def scaling_config(self, placement_strategy: str = "PACK") -> ray.train.ScalingConfig:
        """Ray Train's ScalingConfig for these workers."""
        import ray.train

        per_worker = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            per_worker["GPU"] = self.gpus_per_worker
        return ray.train.ScalingConfig(
            num_workers=self.workers,
            use_gpu=self.gpus_per_worker > 0,
            resources_per_worker=per_worker,
            placement_strategy=placement_strategy,
        )


class Scaling(Resources):
    """The resources of a data-parallel pre-training (``simmtm pretrain --workers``) and where its workers go."""

    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    def scaling_config(self, placement_strategy: str | None = None) -> ray.train.ScalingConfig:
        return super().scaling_config(placement_strategy or self.placement_strategy)

    def check(self, config: RunConfig) -> None:
        """UserError (naming the flags) when the run's device contradicts the GPUs asked for."""
        if config.device == "cuda" and self.gpus_per_worker == 0:
            raise UserError("device: cuda with --workers needs --gpus-per-worker (for example 1)")
        if config.device == "cpu" and self.gpus_per_worker > 0:
            raise UserError(
                f"device: cpu contradicts --gpus-per-worker {self.gpus_per_worker}; set device: auto or cuda"
            )

    @classmethod
    def from_flags(
        cls, *, workers: int, cpus_per_worker: float, gpus_per_worker: float, placement_strategy: str = "PACK"
    ) -> Scaling:
        """The scaling of ``--workers/--cpus-per-worker/--gpus-per-worker/--placement``; UserError naming the flag."""
        if workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        if cpus_per_worker <= 0 or gpus_per_worker < 0:
            raise UserError(
                f"--cpus-per-worker must be > 0 and --gpus-per-worker >= 0; got {cpus_per_worker}, {gpus_per_worker}"
            )
        if placement_strategy not in PLACEMENT_STRATEGIES:
            raise UserError(f"--placement: '{placement_strategy}' is not one of {', '.join(PLACEMENT_STRATEGIES)}")
        try:
            return cls(
                workers=workers,
                cpus_per_worker=cpus_per_worker,
                gpus_per_worker=gpus_per_worker,
                placement_strategy=placement_strategy,
            )
        except ValidationError as exc:
            raise UserError(error_line(exc, "", cls, prefix="--")) from None


def describe_nodes(nodes: Sequence[Mapping[str, float]]) -> str:
    """``8 CPU/1 GPU, 4 CPU/0 GPU`` (or ``no nodes``), for messages about what a cluster holds."""
    return ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no nodes"
