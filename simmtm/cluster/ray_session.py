"""The Ray session of a driver: which cluster to join, connecting to it, and whether it can hold the work.

Used alike by ``simmtm sweep`` (the Tune driver) and ``simmtm pretrain --workers`` (the Ray Train driver).
Ray is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from simmtm.cluster.resources import Resources, describe_nodes
from simmtm.errors import ConfigError
from simmtm.outdir.process_record import record_children, stop_recorded

__all__ = ["resolve_address", "connect", "disconnect", "is_connected", "alive_nodes", "local_node", "check_resources"]


def resolve_address(address: str | None, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The Ray cluster to join (None: start a fresh local Ray) and a line saying which, and why, for the log.

    ``--address`` wins. Without it, a driver that runs inside a Ray job (``ray job submit``: Ray sets
    ``RAY_ADDRESS`` to the cluster's address and ``RAY_JOB_CONFIG_JSON_ENV_VAR``) or on a node with ``RAY_ADDRESS``
    set joins that cluster, as ``--address auto`` would. ``RAY_ADDRESS`` holding a Jobs API URL (``http://...``,
    as set on a laptop for ``ray job submit``) names no cluster to join and is ignored.
    """
    if address:
        return address, f"joining the Ray cluster at {address} (--address)"
    env = environ.get("RAY_ADDRESS", "").strip()
    is_url = env.startswith(("http://", "https://"))
    if env and env != "local" and not is_url:
        return env, f"joining the Ray cluster at {env} (RAY_ADDRESS is set)"
    if environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return "auto", "joining the cluster of the Ray job this driver runs in (auto)"
    note = f" (RAY_ADDRESS={env} is a Jobs API URL, not a cluster to join)" if is_url else ""
    return None, f"starting a local Ray on this machine{note}"


def is_connected() -> bool:
    import ray

    return ray.is_initialized()


def connect(address: str | None, *, record: Path | None = None) -> bool:
    """Join ``address``, or (None) start a fresh local Ray; return True when this call connected (and so the
    caller disconnects), False when Ray was already initialised in this process.

    None never joins a running cluster by accident (a teammate's ``ray start`` is not ours). Workers inherit the
    data directory (``simmtm.data.registry.worker_env``). ``record``: where to list the processes a fresh local Ray
    started (``simmtm.outdir.process_record``), so that none outlives this driver, even after a ``kill -9``.
    """
    import psutil
    import ray

    from simmtm.data.registry import worker_env  # torch: only when a driver connects

    if ray.is_initialized():
        return False
    env = worker_env()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    context = ray.init(
        address=address or "local",
        include_dashboard=False if address is None else None,
        runtime_env={"env_vars": env} if env else None,
        log_to_driver=True,
    )
    if address is None and record is not None:  # a joined cluster's processes are not ours
        record_children(record, exclude=before, note={"session_dir": context.address_info.get("session_dir")})
    return True


def disconnect(*, record: Path | None = None) -> None:
    """Shut Ray down; then stop anything of the recorded local Ray that is still running (agents that outlive
    their raylet) and drop the record."""
    import ray

    ray.shutdown()
    if record is not None:
        stop_recorded(record)


def alive_nodes() -> list[dict[str, float]]:
    """The resources of each alive node of the connected cluster."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def local_node() -> dict[str, float]:
    """What a fresh local Ray would see on this machine."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def check_resources(
    resources: Resources, *, address: str | None = None, nodes: list[dict[str, float]] | None = None
) -> int:
    """How many workers of ``resources`` the cluster holds at once; ConfigError if it can never hold them all.

    ``nodes``: each node's resources; None asks the connected Ray cluster (its alive nodes).
    """
    if nodes is None:
        nodes = alive_nodes()
    slots = resources.worker_slots(nodes)
    if slots < resources.workers:
        where = f"the cluster at {address}" if address else "this machine's local Ray"
        raise ConfigError(
            f"resources: a trial needs {resources.per_worker()} but {where} has {describe_nodes(nodes)}; it could "
            "never start (lower resources.workers / cpus_per_worker / gpus_per_worker)"
        )
    return slots
