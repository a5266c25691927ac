"""Offline checks of Ray cluster launcher files (``cluster.yaml``, ``cluster/*.yaml``) before ``ray up``.

Two layers, both without cloud credentials or network:

1. Ray's own preparation and schema check (``simmtm.cluster.ray_schema``): unknown keys, non-integer node
   resources, a head type missing from ``available_node_types``, min/max worker conflicts.
2. This project's rules (this module): the head node type carries the driver resource (``simmtm_driver``) that
   sweep jobs ask for, and no worker type does; a cluster that can grow past one node writes to shared storage
   (``metadata.simmtm.storage``); every worker type declares its CPUs and GPUs; each GPU node type can hold one
   trial of every sweep shipped in ``sweeps/``; the AWS security group opens nothing beyond SSH; Ray images run
   the Ray version this machine runs.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simmtm.cluster.ray_schema import prepare_cluster_config, ray_version
from simmtm.cluster.resources import Resources
from simmtm.config.keys import error_line
from simmtm.config.schema import read_yaml
from simmtm.errors import ConfigError

__all__ = [
    "DRIVER_RESOURCE",
    "DRIVER_REQUEST",
    "SHARED_STORAGE_SCHEMES",
    "ClusterCheck",
    "NodeType",
    "TrialDemand",
    "check_cluster",
    "cluster_files",
    "sweep_files",
    "trial_demand",
]

logger = logging.getLogger(__name__)

# The custom resource that marks the node where sweep drivers run (the on-demand head). Jobs request a sliver of
# it, e.g. `ray job submit --entrypoint-resources '{"simmtm_driver": 0.01}'`, so up to 100 drivers share the head.
DRIVER_RESOURCE = "simmtm_driver"
DRIVER_REQUEST = 0.01

# URI schemes that Ray Tune's storage_path (pyarrow.fs / fsspec) reaches from every node.
SHARED_STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "az", "hdfs")

# Keys this project reads from the cluster file's `metadata.simmtm` section (Ray ignores `metadata`).
_METADATA_KEYS = {
    "storage": "where sweeps write (--out): s3://bucket/prefix, gs://bucket/prefix, or an NFS path",
    "shared_filesystem": "true when `storage` is a path on a file system every node mounts (NFS, EFS, Filestore)",
}

# Values in the shipped files that a user must replace before `ray up`; reported as notes, not errors.
_PLACEHOLDERS = ("ACCOUNT_ID", "your-bucket", "your-gcp-project")

# Instance/machine types that come with GPUs (heuristic used only to ask for an explicit GPU count).
_AWS_GPU_INSTANCE = re.compile(r"^(p\d|g\d)")
_GCP_GPU_MACHINE = re.compile(r"^(a2|a3|a4|g2|g4)-")
_RAY_IMAGE = re.compile(r"^(?:docker\.io/)?rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)")


@dataclass(frozen=True)
class NodeType:
    """One entry of ``available_node_types`` as the checks see it."""

    name: str
    resources: dict[str, float]
    min_workers: int
    max_workers: int
    is_head: bool

    @property
    def gpus(self) -> float:
        return float(self.resources.get("GPU", 0))


@dataclass
class ClusterCheck:
    """The outcome of checking one cluster file: ``errors`` block ``ray up``, ``notes`` are reminders."""

    path: Path
    provider: str | None = None
    node_types: list[NodeType] = field(default_factory=list)
    max_nodes: int = 1
    storage: str | None = None
    sweeps: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line: provider, node types with their GPUs and worker range, storage, sweeps checked."""
        types = []
        for node in self.node_types:
            role = "head" if node.is_head else f"{node.min_workers}-{node.max_workers}"
            types.append(f"{node.name} ({role}, {node.resources.get('CPU', 0):g} CPU, {node.gpus:g} GPU)")
        sweeps = f"; {len(self.sweeps)} sweep(s) fit every GPU node type" if self.sweeps else ""
        return f"{self.provider}: {', '.join(types)}; up to {self.max_nodes} node(s); storage {self.storage}{sweeps}"


# --- this project's layer ------------------------------------------------------------------------------------


def _node_types(config: dict[str, Any]) -> list[NodeType]:
    head = config["head_node_type"]
    return [
        NodeType(
            name=name,
            resources={k: float(v) for k, v in (spec.get("resources") or {}).items()},
            min_workers=int(spec.get("min_workers", 0)),
            max_workers=int(spec.get("max_workers", 0)),
            is_head=name == head,
        )
        for name, spec in config["available_node_types"].items()
    ]


def _max_nodes(config: dict[str, Any], nodes: Sequence[NodeType]) -> int:
    workers = sum(n.max_workers for n in nodes if not n.is_head)
    return 1 + min(workers, int(config.get("max_workers", workers)))


def _looks_like_gpu(provider: str, node_config: dict[str, Any]) -> bool:
    if provider == "aws":
        return bool(_AWS_GPU_INSTANCE.match(str(node_config.get("InstanceType", ""))))
    if provider == "gcp":
        return bool(node_config.get("guestAccelerators")) or bool(
            _GCP_GPU_MACHINE.match(str(node_config.get("machineType", "")))
        )
    return False


def _check_nodes(config: dict[str, Any], nodes: Sequence[NodeType], errors: list[str]) -> None:
    provider = config["provider"]["type"]
    head = next(n for n in nodes if n.is_head)
    if head.resources.get(DRIVER_RESOURCE, 0) < 1:
        errors.append(
            f"available_node_types.{head.name}.resources: the head node type has no '{DRIVER_RESOURCE}' resource; "
            f"add {DRIVER_RESOURCE}: 1 so that sweep drivers (submitted with --entrypoint-resources "
            f"'{{\"{DRIVER_RESOURCE}\": {DRIVER_REQUEST}}}') run on the on-demand head"
        )
    for node in nodes:
        if node.is_head:
            continue
        spec = config["available_node_types"][node.name]
        if node.resources.get(DRIVER_RESOURCE, 0) > 0:
            errors.append(
                f"available_node_types.{node.name}.resources: '{DRIVER_RESOURCE}' belongs on the head only; on a "
                "worker type a sweep driver could land on a (spot) worker and die with it"
            )
        if "CPU" not in node.resources:
            errors.append(
                f"available_node_types.{node.name}.resources: declare CPU (and GPU on a GPU machine) explicitly; "
                "the check cannot look instance types up offline, and the autoscaler then needs no look-up either"
            )
        elif _looks_like_gpu(provider, spec.get("node_config") or {}) and node.gpus <= 0:
            errors.append(
                f"available_node_types.{node.name}.resources: the machine type has GPUs but resources declare none; "
                "set GPU to the machine's GPU count"
            )


def _check_metadata(config: dict[str, Any], nodes: Sequence[NodeType], max_nodes: int, errors: list[str]) -> str | None:
    meta = (config.get("metadata") or {}).get("simmtm")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        errors.append("metadata.simmtm: expected a mapping with keys: " + ", ".join(_METADATA_KEYS))
        return None
    for key in meta:
        if key not in _METADATA_KEYS:
            close = difflib.get_close_matches(str(key), list(_METADATA_KEYS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            valid = "; ".join(f"{k}: {v}" for k, v in _METADATA_KEYS.items())
            errors.append(f"unknown key 'metadata.simmtm.{key}'{hint}; valid keys: {valid}")
    storage = meta.get("storage")
    if storage is not None and not isinstance(storage, str):
        errors.append(f"metadata.simmtm.storage: expected a URI or path, got {storage!r}")
        return None
    if max_nodes <= 1:
        return storage
    grow = f"the cluster can grow to {max_nodes} nodes"
    if not storage:
        errors.append(
            f"metadata.simmtm.storage: missing; {grow}, so sweeps need shared storage for checkpoints and results: "
            f"set it to {' or '.join(s + '://bucket/prefix' for s in SHARED_STORAGE_SCHEMES[:2])} (and pass it as "
            "--out), or to an NFS path with shared_filesystem: true"
        )
        return None
    scheme = storage.split("://", 1)[0].lower() if "://" in storage else None
    if scheme in SHARED_STORAGE_SCHEMES:
        return storage
    if scheme not in (None, "file"):
        errors.append(
            f"metadata.simmtm.storage: '{storage}': unknown scheme '{scheme}://'; shared schemes: "
            + ", ".join(f"{s}://" for s in SHARED_STORAGE_SCHEMES)
        )
    elif meta.get("shared_filesystem") is not True:
        errors.append(
            f"metadata.simmtm.storage: '{storage}' is a path on each node's own disk, but {grow}: a trial resumed on "
            "another node would not find its checkpoints. Use s3:// or gs:// storage, or mount a shared file "
            "system on every node and set metadata.simmtm.shared_filesystem: true"
        )
    return storage


def _check_images(config: dict[str, Any], errors: list[str], notes: list[str]) -> None:
    """Ray images must run the Ray this machine runs: launcher, job client and cluster agree."""
    local = ray_version()
    docker = config.get("docker") or {}
    images = {f"docker.{k}": docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)}
    for name, spec in config["available_node_types"].items():
        image = (spec.get("docker") or {}).get("worker_image")
        if image:
            images[f"available_node_types.{name}.docker.worker_image"] = image
    for key, image in images.items():
        match = _RAY_IMAGE.match(str(image))
        if not match:
            continue
        tag = match.group(1)
        if tag.split(".")[:2] != local.split(".")[:2]:
            errors.append(
                f"{key}: '{image}' runs Ray {tag}, but this machine runs Ray {local} (the version "
                f"`ray up` uses); use rayproject/ray:{local}-... so launcher, jobs and cluster agree"
            )
        elif tag != local:
            notes.append(f"{key}: '{image}' runs Ray {tag}, this machine Ray {local}")


def _check_security(config: dict[str, Any], errors: list[str]) -> None:
    if config["provider"]["type"] != "aws":
        return
    rules = ((config["provider"].get("security_group") or {}).get("IpPermissions")) or []
    for i, rule in enumerate(rules):
        ports = (rule.get("FromPort"), rule.get("ToPort"))
        if ports != (22, 22) or str(rule.get("IpProtocol", "tcp")) != "tcp":
            errors.append(
                f"provider.security_group.IpPermissions[{i}]: opens ports {ports[0]}-{ports[1]}; nothing beyond SSH "
                "may be open to the internet: reach the dashboard and Jobs API with `ray dashboard <cluster file>`"
            )


def _placeholder_notes(value: Any, path: str = "") -> Iterable[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _placeholder_notes(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _placeholder_notes(v, f"{path}[{i}]")
    elif isinstance(value, str):
        for token in _PLACEHOLDERS:
            if token in value:
                yield f"{path}: replace the placeholder '{token}' before `ray up`"


# --- sweeps --------------------------------------------------------------------------------------------------


# What one trial of a sweep occupies (a sweep file's ``resources`` section): the project's one resources type.
TrialDemand = Resources


def trial_demand(resources: dict[str, Any] | None) -> Resources:
    """Read a sweep file's ``resources`` section (``{workers, cpus_per_worker, gpus_per_worker}``); missing keys
    take the sweep schema's defaults."""
    if resources is not None and not isinstance(resources, dict):
        raise ConfigError("resources: expected a mapping with keys workers, cpus_per_worker, gpus_per_worker")
    section = dict(resources or {})
    valid = list(Resources.model_fields)
    unknown = sorted(set(section) - set(valid))
    if unknown:
        raise ConfigError(f"resources.{unknown[0]}: unknown key; valid keys: {', '.join(valid)}")
    try:
        return Resources.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(error_line(exc, "", Resources, prefix="resources.")) from None


def sweep_files(directory: Path) -> list[Path]:
    """The sweep files under ``directory`` (recursively): YAML files with a ``search`` or ``resources`` section."""
    found = []
    for path in sorted(directory.rglob("*.y*ml")):
        try:
            raw = read_yaml(path)
        except ConfigError:
            continue  # not a config; `simmtm validate` reports it
        if "search" in raw or "resources" in raw:
            found.append(path)
    return found


def _check_sweeps(nodes: Sequence[NodeType], sweeps: Sequence[Path], errors: list[str]) -> list[str]:
    gpu_nodes = [n for n in nodes if not n.is_head and n.gpus > 0]
    checked = []
    for path in sweeps:
        try:
            demand = trial_demand(read_yaml(path).get("resources"))
        except ConfigError as exc:
            errors.append(f"sweep {path}: {exc}")
            continue
        checked.append(str(path))
        if demand.gpus > 0 and not gpu_nodes:
            errors.append(f"sweep {path}: one trial needs {demand}, but no worker node type has a GPU")
        for node in gpu_nodes:
            have_cpu = node.resources.get("CPU", 0.0)
            if demand.cpus > have_cpu + 1e-9 or demand.whole_gpus() > node.gpus:
                errors.append(
                    f"sweep {path}: one trial needs {demand} (its resources section), but node type {node.name} "
                    f"has {have_cpu:g} CPU + {node.gpus:g} GPU; lower the sweep's resources or use a bigger "
                    "machine type"
                )
    return checked


# --- entry point ---------------------------------------------------------------------------------------------


def cluster_files(root: Path) -> list[Path]:
    """The cluster launcher files a checkout ships: ``cluster.yaml`` and ``cluster/*.yaml``."""
    files = [root / "cluster.yaml"] if (root / "cluster.yaml").is_file() else []
    return files + sorted(p for p in (root / "cluster").glob("*.y*ml") if p.is_file())


def _default_sweeps_dir(path: Path) -> Path | None:
    for parent in [path.resolve().parent, *path.resolve().parents]:
        if (parent / "sweeps").is_dir():
            return parent / "sweeps"
    return None


def check_cluster(path: str | Path, *, sweeps: Sequence[Path] | None = None) -> ClusterCheck:
    """Check one cluster file offline. ``sweeps``: the sweep files whose trials every GPU node type must hold
    (default: the sweep files in the nearest ``sweeps/`` folder above ``path``)."""
    path = Path(path)
    result = ClusterCheck(path=path)
    try:
        raw = read_yaml(path)
    except ConfigError as exc:
        result.errors.append(str(exc).removeprefix(f"{path}: "))
        return result
    try:
        config = prepare_cluster_config(raw, source=str(path))
    except ConfigError as exc:
        result.errors.append(str(exc).removeprefix(f"{path}: "))
        return result
    result.provider = config["provider"]["type"]
    nodes = _node_types(config)
    result.node_types = nodes
    result.max_nodes = _max_nodes(config, nodes)
    _check_nodes(config, nodes, result.errors)
    result.storage = _check_metadata(config, nodes, result.max_nodes, result.errors)
    _check_security(config, result.errors)
    _check_images(config, result.errors, result.notes)
    if sweeps is None:
        folder = _default_sweeps_dir(path)
        sweeps = sweep_files(folder) if folder is not None else []
    result.sweeps = _check_sweeps(nodes, sweeps, result.errors)
    result.notes.extend(_placeholder_notes(raw))
    return result
