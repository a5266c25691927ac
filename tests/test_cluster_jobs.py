"""The `ray up` -> sweep path on a real multi-node Ray cluster on one machine.

A head node and two worker nodes run as separate `ray start --block` processes (each with its own temporary folder,
all with token authentication and the same token), like the machines of cluster.yaml: the head carries the
`simmtm_driver` resource and the sweep is submitted through the Ray Jobs API with the command docs/cluster.md shows.
The test checks that trials ran on more than one node, that every result landed in the shared storage folder, and
that `simmtm analyze` reads it. It stops only the processes it started (SIGTERM to each `ray start --block`; `ray
stop` would stop every Ray process of the user).
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from ray_nodes import free_port, stop_nodes

from simmtm.cli import main
from simmtm.cluster.cluster_check import DRIVER_REQUEST, DRIVER_RESOURCE

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow




@dataclass
class LocalCluster:
    """Ray nodes on this machine, started as the cluster launcher starts machines: ``nodes`` maps a node's name
    (``head``, ``worker1``, ...) to its own temporary folder."""

    dashboard: str  # http://127.0.0.1:PORT: the Jobs API
    env: dict[str, str]  # what a client needs: RAY_AUTH_MODE=token and the token
    nodes: dict[str, Path]
    processes: list[subprocess.Popen]
    trial_pids: set[int] = field(default_factory=set)  # trial processes seen; none may outlive the cluster

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)

    def state(self, kind: str) -> list[dict]:
        """Ray's state API (`ray list nodes|actors`), through the dashboard like any remote client."""
        done = self.ray("list", kind, f"--address={self.dashboard}", "--detail", "--format=json", "--limit=1000")
        if done.returncode != 0 or not done.stdout.strip():
            raise RuntimeError(f"ray list {kind} failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout)

    def alive_nodes(self) -> list[str]:
        return [n["node_id"] for n in self.state("nodes") if n["state"] == "ALIVE"]


def _start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        # Its own session: the test can signal this node, and nothing else, later.
        return subprocess.Popen([str(BIN / "ray"), "start", "--block", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(check, what: str, timeout: float, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in processes:
            assert proc.poll() is None, f"a Ray node exited while waiting for {what} (code {proc.returncode})"
        try:
            if check():
                return
        except (OSError, ValueError, RuntimeError):  # not up yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(processes: list[subprocess.Popen]) -> None:
    """Stop each `ray start --block` we started (``ray_nodes.stop_nodes``); what a node leaves behind is in the
    session the test made for it: SIGKILL that group."""
    stop_nodes(processes)
    for proc in processes:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A head like cluster.yaml's (the driver resource; here no CPUs, so trials must go to workers) and two
    1-CPU worker nodes, all with token authentication and one shared token."""
    # Short paths: Ray's unix socket paths must stay under ~107 characters.
    root = Path(f"/tmp/simmtm-cl-{secrets.token_hex(3)}")
    nodes = {name: root / name for name in ("head", "worker1", "worker2")}
    for folder in nodes.values():
        folder.mkdir(parents=True)
    logs = tmp_path_factory.mktemp("cluster-logs")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_memory_monitor_refresh_ms": "0", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    if "SIMMTM_DATA_DIR" in env:  # jobs run in the uploaded working dir: a relative data path would not resolve
        env["SIMMTM_DATA_DIR"] = str(Path(env["SIMMTM_DATA_DIR"]).resolve())
    gcs, dashboard = free_port(), free_port()
    common = ["--node-ip-address=127.0.0.1", "--object-store-memory=200000000"]
    processes: list[subprocess.Popen] = []
    try:
        processes.append(_start_node(
            ["--head", f"--temp-dir={nodes['head']}", f"--port={gcs}", *common,
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
             f"--resources={json.dumps({DRIVER_RESOURCE: 1})}", "--num-cpus=0"],
            env, logs / "head.log"))
        url = f"http://127.0.0.1:{dashboard}"
        request = urllib.request.Request(f"{url}/api/version",
                                         headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
        _wait_for(lambda: urllib.request.urlopen(request, timeout=2).status == 200, "the head's dashboard", 90,
                  processes)
        for name in ("worker1", "worker2"):
            processes.append(_start_node(
                [f"--address=127.0.0.1:{gcs}", f"--temp-dir={nodes[name]}", *common,
                 f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=1"],
                env, logs / f"{name}.log"))
        cluster = LocalCluster(url, env, nodes, processes)
        _wait_for(lambda: len(cluster.alive_nodes()) == 3, "the worker nodes to join", 90, processes)
        yield cluster
    finally:
        _stop(processes)
        shutil.rmtree(root, ignore_errors=True)
    # Stopping the nodes left nothing of ours running: no trial process, nothing in the nodes' process groups.
    deadline = time.monotonic() + 15
    while _still_running(cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _still_running(cluster), _still_running(cluster)


def _still_running(cluster: LocalCluster) -> list[str]:
    left = [f"trial pid {pid}" for pid in sorted(cluster.trial_pids) if _alive(pid)]
    for proc in cluster.processes:
        try:
            os.killpg(proc.pid, 0)
            left.append(f"process group {proc.pid}")
        except ProcessLookupError:
            pass
    return left


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# One CPU per worker node and two trials at once: the two concurrent trials run on different nodes. Both workers
# start cold (each sets up the job's code before its first trial process), so neither finishes its trial before the
# other is ready; a head that ran trials too would win that race (it holds the job's code already) and, as the
# sweep reuses trial processes, could take every trial. 90 pre-training steps keep each trial several seconds long.
TINY_SWEEP = """\
# A sweep small enough for the multi-node test: 2 random (r, M) trials of a tiny Transformer on ETTh1 at once, then
# the better one and the paper's r = 0.5, M = 3 again on a fresh seed.
# Run it:   simmtm sweep tiny.yaml --out runs/tiny
seed: 0
threads: 1
data: {name: ETTh1, seq_len: 48, stride: 16}
model: {encoder: transformer, d_model: 8, n_heads: 2, n_layers: 1, d_ff: 16, dropout: 0.0, projector_dim: 8}
pretrain: {epochs: 3, batch_size: 8, max_steps: 90, val_batches: 1}
finetune: {horizons: [24], epochs: 1, batch_size: 16, max_steps: 4, val_batches: 2}
search:
  method: random
  params:
    pretrain.mask_ratio: {type: float, low: 0.2, high: 0.8}
    pretrain.num_masked: {type: int, low: 1, high: 3}
tune:
  num_samples: 2
  max_concurrent_trials: 2
  probe_steps: 3
  scheduler: {type: fifo}
  confirm: {top_k: 1, seeds: 1}
resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}
"""


@pytest.mark.usefixtures("shared_data")
@pytest.mark.parametrize("layout", ["shared-out", "storage-uri"])
def test_sweep_job_runs_trials_on_both_nodes_into_shared_storage(local_cluster: LocalCluster, tmp_path: Path,
                                                                  layout: str, capsys) -> None:
    """shared-out: --out on a folder every node mounts (EFS/NFS). storage-uri: --out on the head's own disk and
    Ray's experiment (checkpoints, results) under tune.storage_path, a URI as s3:// is (file:// here)."""
    cluster = local_cluster
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(TINY_SWEEP)
    shared = tmp_path / "shared"  # the storage every node reaches
    if layout == "shared-out":
        out, extra = shared / "tiny", []
        experiment = out / "ray"
    else:
        out, extra = tmp_path / "head-disk" / "tiny", ["--set", f"tune.storage_path={(shared / 'tiny').as_uri()}"]
        experiment = shared / "tiny" / "ray"

    # The submission of docs/cluster.md: the checkout as the job's working dir, the driver pinned to the head.
    started = time.monotonic()
    job = cluster.ray(
        "job", "submit", f"--address={cluster.dashboard}", "--working-dir", ".",
        "--entrypoint-resources", json.dumps({DRIVER_RESOURCE: DRIVER_REQUEST}),
        "--", "simmtm", "sweep", str(sweep_file), "--address", "auto", "--out", str(out), *extra, "--quiet-table",
        timeout=240,
    )
    logs = job.stdout + job.stderr
    assert job.returncode == 0 and "succeeded" in logs, logs[-4000:]
    assert "sweep: 2 trials (2 complete)" in logs, logs[-4000:]
    job_s = time.monotonic() - started

    # Every result landed in shared storage: each trial's folder (checkpoint, result) and Tune's results; the tables
    # and study in --out.
    with (out / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and {r["state"] for r in rows} == {"COMPLETE"}
    for name in ("sweep.json", "optuna.db", "best.yaml"):
        assert (out / name).is_file(), name
    pids = {}
    for row in rows:
        trial_dir = experiment / row["trial_id"]
        results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        assert results[-1]["stage"] == "final"
        own = experiment.parent / "trials" / row["trial_id"]  # the trial's own folder, beside Ray's experiment
        assert (own / "checkpoint.pt").is_file() and (own / "result.json").is_file(), f"no record of {own}"
        [pids[row["trial_id"]]] = {r["pid"] for r in results}
    cluster.trial_pids.update(pids.values())
    assert len(list((experiment.parent / "trials").glob("confirm-*/result.json"))) == 2  # 2 configurations x 1 seed
    if layout == "storage-uri":
        assert not (out / "ray").exists()  # nothing of Ray's experiment on the head's disk
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 2
    # Nothing was checkpointed on a node's own disk.
    for node_dir in cluster.nodes.values():
        assert not [p for p in node_dir.rglob("checkpoint_*") if p.is_dir()], node_dir

    # The trials ran on both worker nodes: Ray's own record of each trial process (the actor with the pid that
    # result.json names) gives its node, and that node's own temp folder holds the process's log.
    node_ids = {n["node_id"]: n for n in cluster.state("nodes")}
    actors = {a["pid"]: a for a in cluster.state("actors")}
    trial_nodes = {trial: actors[pid]["node_id"] for trial, pid in pids.items()}
    assert len(set(trial_nodes.values())) == 2, trial_nodes
    assert not any(node_ids[n]["is_head_node"] for n in trial_nodes.values())
    logged_in = {trial: [name for name, folder in cluster.nodes.items()
                         if list(folder.glob(f"session_*/logs/worker-*-{pid}.out"))] for trial, pid in pids.items()}
    assert sorted({where for names in logged_in.values() for where in names}) == ["worker1", "worker2"], logged_in
    assert all(len(names) == 1 for names in logged_in.values()), logged_in

    # `simmtm analyze` reads the sweep folder (in this process: it needs no Ray and no fresh interpreter).
    capsys.readouterr()
    assert main(["analyze", str(out), "--bootstrap", "50", "--no-interactive"]) == 0
    printed = capsys.readouterr().out
    [report] = [line.split(": ", 1)[1] for line in printed.splitlines() if line.startswith("report: ")]
    assert report.endswith("report.html") and Path(report).stat().st_size > 0, printed
    print(f"{layout}: sweep job {job_s:.0f} s; trials per node: {[names[0] for names in logged_in.values()]}")
