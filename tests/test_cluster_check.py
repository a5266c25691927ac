"""`simmtm cluster check`: the shipped cluster files pass offline; broken copies fail with a line naming the key."""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from simmtm.cli import main
from simmtm.cluster.cluster_check import DRIVER_RESOURCE, check_cluster, cluster_files, trial_demand
from simmtm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = cluster_files(REPO)


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def write(tmp_path: Path, raw: dict[str, Any], name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def gpu_type(raw: dict[str, Any]) -> str:
    return next(n for n, t in raw["available_node_types"].items() if t["resources"].get("GPU", 0) == 1)


# The Ray of the shipped files' images (the newest declared Ray); the image rule compares it with the local Ray.
SHIPPED_RAY = load(REPO / "cluster.yaml")["docker"]["image"].split(":")[1].split("-")[0]


@pytest.fixture(autouse=True)
def laptop_runs_the_shipped_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checks run as on a laptop with the shipped files' Ray; the launcher's own check runs on the installed Ray (the
    oldest declared one in scripts/test_oldest.sh), whose version the image rule alone reads."""
    import ray

    monkeypatch.setattr(ray, "__version__", SHIPPED_RAY)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network and no cloud credentials: any connection attempt fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the check tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


def test_ships_an_aws_and_a_gcp_cluster_file() -> None:
    assert [p.relative_to(REPO).as_posix() for p in SHIPPED] == ["cluster.yaml", "cluster/gcp.yaml"]
    assert [load(p)["provider"]["type"] for p in SHIPPED] == ["aws", "gcp"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_cluster_file_passes_offline(path: Path, offline: None) -> None:
    result = check_cluster(path)
    assert result.ok, result.errors
    raw = load(path)
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"][DRIVER_RESOURCE] == 1
    gpu_types = [t for t in raw["available_node_types"].values() if t["resources"].get("GPU", 0) > 0]
    assert sorted(t["resources"]["GPU"] for t in gpu_types) == [1, 4]
    assert all(t["min_workers"] == 0 for t in gpu_types)  # autoscale from zero
    assert result.max_nodes > 1 and result.storage.split("://")[0] in ("s3", "gs")
    # Every shipped sweep with a resources section was checked against every GPU node type.
    sweeps = [p for p in (REPO / "sweeps").rglob("*.yaml") if "resources" in load(p) or "search" in load(p)]
    assert sorted(result.sweeps) == sorted(str(p) for p in sweeps)
    assert any("your-bucket" in note for note in result.notes)  # placeholders are flagged, not fatal


def test_cli_checks_every_shipped_file_by_default(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    assert main(["cluster", "check"]) == 0
    out = capsys.readouterr().out
    assert "ok   cluster.yaml: aws:" in out and "ok   cluster/gcp.yaml: gcp:" in out


def _misspelt_top_level(raw: dict[str, Any]) -> None:
    raw["max_worker"] = raw.pop("max_workers")


def _misspelt_node_key(raw: dict[str, Any]) -> None:
    node = raw["available_node_types"][gpu_type(raw)]
    node["min_worker"] = node.pop("min_workers")


def _fractional_gpu(raw: dict[str, Any]) -> None:
    raw["available_node_types"][gpu_type(raw)]["resources"]["GPU"] = 0.5


def _head_not_a_node_type(raw: dict[str, Any]) -> None:
    raw["head_node_type"] = "head"


BROKEN = {
    "misspelt-top-level-key": (_misspelt_top_level, "unknown key 'max_worker' (did you mean 'max_workers'?)"),
    "misspelt-node-key": (_misspelt_node_key, ".min_worker' (did you mean 'min_workers'?)"),
    "fractional-gpu": (_fractional_gpu, ".resources.GPU: 0.5 is not a whole number"),
    "head-not-a-node-type": (_head_not_a_node_type, "head_node_type: 'head' is not one of available_node_types"),
}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
@pytest.mark.parametrize("breakage", list(BROKEN))
def test_broken_copy_fails_with_the_key(path: Path, breakage: str, tmp_path: Path, offline: None,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    raw = load(path)
    mutate, expected = BROKEN[breakage]
    mutate(raw)
    broken = write(tmp_path, raw)
    assert main(["cluster", "check", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"FAIL {broken}: " in err and expected in err, err
    assert "1 of 1 cluster file(s) invalid" in err


# --- the project's rules, on a copy of the AWS file -----------------------------------------------------------


@pytest.fixture
def aws() -> dict[str, Any]:
    return load(REPO / "cluster.yaml")


def errors_of(tmp_path: Path, raw: dict[str, Any], sweeps: list[Path] | None = None) -> list[str]:
    return check_cluster(write(tmp_path, raw), sweeps=sweeps or []).errors


def test_head_must_carry_the_driver_resource(aws: dict[str, Any], tmp_path: Path) -> None:
    del aws["available_node_types"]["cpu_head"]["resources"][DRIVER_RESOURCE]
    [error] = errors_of(tmp_path, aws)
    assert error.startswith("available_node_types.cpu_head.resources: the head node type has no 'simmtm_driver'")


def test_driver_resource_stays_off_spot_workers(aws: dict[str, Any], tmp_path: Path) -> None:
    aws["available_node_types"]["gpu_1x"]["resources"][DRIVER_RESOURCE] = 1
    [error] = errors_of(tmp_path, aws)
    assert "available_node_types.gpu_1x.resources: 'simmtm_driver' belongs on the head only" in error


def test_multi_node_cluster_needs_shared_storage(aws: dict[str, Any], tmp_path: Path) -> None:
    aws["metadata"]["simmtm"]["storage"] = "/home/ubuntu/runs"
    [error] = errors_of(tmp_path, aws)
    assert "metadata.simmtm.storage: '/home/ubuntu/runs' is a path on each node's own disk" in error
    aws["metadata"]["simmtm"]["shared_filesystem"] = True  # an NFS mount on every node is fine
    assert errors_of(tmp_path, aws) == []
    del aws["metadata"]
    [error] = errors_of(tmp_path, aws)
    assert error.startswith("metadata.simmtm.storage: missing; the cluster can grow to 9 nodes")


def test_single_node_cluster_may_use_local_disk(aws: dict[str, Any], tmp_path: Path) -> None:
    aws["max_workers"] = 0
    for name in ("gpu_1x", "gpu_4x"):
        aws["available_node_types"][name]["max_workers"] = 0
    aws["metadata"]["simmtm"]["storage"] = "/home/ubuntu/runs"
    assert errors_of(tmp_path, aws) == []


def test_metadata_keys_are_checked(aws: dict[str, Any], tmp_path: Path) -> None:
    aws["metadata"]["simmtm"]["storag"] = "s3://b/p"
    [error] = errors_of(tmp_path, aws)
    assert error.startswith("unknown key 'metadata.simmtm.storag' (did you mean 'storage'?)")


def test_worker_types_declare_cpus_and_gpus(aws: dict[str, Any], tmp_path: Path) -> None:
    aws["available_node_types"]["gpu_1x"]["resources"] = {"CPU": 8}  # g5.2xlarge has a GPU
    aws["available_node_types"]["gpu_4x"]["resources"] = {}
    errors = errors_of(tmp_path, aws)
    assert len(errors) == 2
    assert "gpu_1x.resources: the machine type has GPUs but resources declare none" in errors[0]
    assert "gpu_4x.resources: declare CPU (and GPU on a GPU machine) explicitly" in errors[1]


def test_security_group_opens_only_ssh(aws: dict[str, Any], tmp_path: Path) -> None:
    aws["provider"]["security_group"]["IpPermissions"] = [
        {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "203.0.113.7/32"}]},
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    ]
    [error] = errors_of(tmp_path, aws)
    assert error.startswith("provider.security_group.IpPermissions[1]: opens ports 8265-8265")


def test_images_run_this_machines_ray(aws: dict[str, Any], tmp_path: Path) -> None:
    import ray

    aws["docker"]["image"] = "rayproject/ray:2.49.0-py311-gpu"
    [error] = errors_of(tmp_path, aws)
    assert error.startswith(
        f"docker.image: 'rayproject/ray:2.49.0-py311-gpu' runs Ray 2.49.0, but this machine runs Ray {ray.__version__}")


def test_check_says_when_ray_moved_its_launcher_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check's one private Ray use degrades to a line naming the Ray version when a release moves it."""
    import sys

    import ray

    monkeypatch.setitem(sys.modules, "ray.autoscaler._private.util", None)  # import fails as if the module moved
    assert main(["cluster", "check", str(REPO / "cluster.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"cannot check cluster files with Ray {ray.__version__}: its launcher's offline check" in err
    assert "Traceback" not in err


def sweep(tmp_path: Path, name: str, resources: dict[str, Any] | None) -> Path:
    raw: dict[str, Any] = {"data": {"name": "ETTh1"}, "search": {"pretrain.mask_ratio": {"low": 0.1, "high": 0.9}}}
    if resources is not None:
        raw["resources"] = resources
    return write(tmp_path, raw, name)


def test_each_gpu_node_type_holds_one_trial(aws: dict[str, Any], tmp_path: Path) -> None:
    fits = sweep(tmp_path, "fits.yaml", {"workers": 2, "cpus_per_worker": 2, "gpus_per_worker": 0.5})
    cpu_only = sweep(tmp_path, "cpu.yaml", None)
    assert errors_of(tmp_path, aws, [fits, cpu_only]) == []
    two_gpus = sweep(tmp_path, "two.yaml", {"workers": 2, "cpus_per_worker": 2, "gpus_per_worker": 1})
    [error] = errors_of(tmp_path, aws, [two_gpus])
    assert error == (f"sweep {two_gpus}: one trial needs 2 worker(s) x (2 CPU, 1 GPU) = 4 CPU + 2 GPU (its resources "
                     "section), but node type gpu_1x has 8 CPU + 1 GPU; lower the sweep's resources or use a bigger "
                     "machine type")
    many_cpus = sweep(tmp_path, "cpus.yaml", {"workers": 1, "cpus_per_worker": 16, "gpus_per_worker": 1})
    [error] = errors_of(tmp_path, aws, [many_cpus])
    assert "node type gpu_1x has 8 CPU + 1 GPU" in error
    typo = sweep(tmp_path, "typo.yaml", {"gpus_per_workers": 1})
    [error] = errors_of(tmp_path, aws, [typo])
    assert error == (f"sweep {typo}: resources.gpus_per_workers: unknown key; "
                     "valid keys: workers, cpus_per_worker, gpus_per_worker")


def test_gpu_sweep_needs_a_gpu_node_type(aws: dict[str, Any], tmp_path: Path) -> None:
    for name in ("gpu_1x", "gpu_4x"):
        aws["available_node_types"][name]["resources"]["GPU"] = 0
        aws["available_node_types"][name]["node_config"]["InstanceType"] = "m5.2xlarge"
    gpu = sweep(tmp_path, "gpu.yaml", {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1})
    [error] = errors_of(tmp_path, aws, [gpu])
    assert error.endswith("but no worker node type has a GPU")


@pytest.mark.parametrize(("resources", "cpus", "gpus"), [
    ({"workers": 1, "cpus_per_worker": 4, "gpus_per_worker": 1}, 4, 1),
    ({"workers": 3, "cpus_per_worker": 1, "gpus_per_worker": 0.5}, 3, 2),   # two halves share a GPU, the third not
    ({"workers": 5, "cpus_per_worker": 1, "gpus_per_worker": 0.6}, 5, 5),   # 0.6 + 0.6 > 1: one per GPU
    ({"workers": 2, "cpus_per_worker": 2, "gpus_per_worker": 2}, 4, 4),
    ({"workers": 2, "cpus_per_worker": 2, "gpus_per_worker": 0}, 4, 0),
])
def test_trial_demand(resources: dict[str, Any], cpus: float, gpus: int) -> None:
    demand = trial_demand(resources)
    assert (demand.cpus, demand.whole_gpus()) == (cpus, gpus)


def test_trial_demand_rejects_a_fraction_above_one_gpu() -> None:
    with pytest.raises(ConfigError, match="resources.gpus_per_worker: 1.5: Ray accepts a fraction of one GPU"):
        trial_demand({"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1.5})


def test_not_a_cluster_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["cluster", "check", str(missing)]) == 2
    assert f"FAIL {missing}: no such config file" in capsys.readouterr().err
    no_provider = write(tmp_path, {"cluster_name": "x"})
    assert main(["cluster", "check", str(no_provider)]) == 2
    assert "missing key 'provider.type' (one of: " in capsys.readouterr().err
    unknown = write(tmp_path, {"cluster_name": "x", "provider": {"type": "awss"}})
    assert main(["cluster", "check", str(unknown)]) == 2
    assert "provider.type: unknown provider 'awss' (did you mean 'aws'?)" in capsys.readouterr().err


def test_input_is_not_modified(aws: dict[str, Any], tmp_path: Path) -> None:
    before = copy.deepcopy(aws)
    path = write(tmp_path, aws)
    text = path.read_text()
    assert check_cluster(path).ok
    assert path.read_text() == text and aws == before
