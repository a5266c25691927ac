"""The sweep file schema, the Optuna searcher's bookkeeping and the CLI's refusals: fast, no Ray cluster."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from simmtm.cli import main
from simmtm.cluster.ray_session import check_resources, resolve_address
from simmtm.config.schema import load_config
from simmtm.errors import ConfigError
from simmtm.tuning.preflight import concurrency, plan_trials
from simmtm.tuning.search import SweepSearch
from simmtm.tuning.sections import sweep_spec
from simmtm.tuning.space import first_point, flat_config, sampler_seed
from simmtm.tuning.spec import PAPER_DEFAULTS, ResourcesSpec, SweepSpec

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
SWEEP_FILES = ("quick.yaml", "etth1_rm.yaml", "grid_rm.yaml", "grid_rm_etth1.yaml", "gunpoint_sweep.yaml")

R, M, TAU, ENC, PATCH = "pretrain.mask_ratio", "pretrain.num_masked", "pretrain.temperature", "model.encoder", "model.patch_len"

SEARCH = {
    "method": "tpe",
    "params": {
        R: {"type": "float", "low": 0.1, "high": 0.9},
        M: {"type": "int", "low": 1, "high": 10},
        TAU: {"type": "float", "low": 0.02, "high": 1.0, "log": True},
        ENC: {"type": "categorical", "choices": ["transformer", "patch"]},
        PATCH: {"type": "int", "low": 8, "high": 32, "when": {ENC: "patch"}},
    },
}


def sweep_raw(tiny_config, search=None, tune=None, resources=None):
    raw = tiny_config()
    raw["search"] = copy.deepcopy(search or SEARCH)
    raw["tune"] = {"num_samples": 4} if tune is None else tune
    raw["resources"] = resources or {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}
    return raw


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_shipped_sweeps_validate_and_search_r_and_m(name: str) -> None:
    path = SWEEPS / name
    spec = sweep_spec(load_config(path), path)
    assert {R, M} <= set(spec.search.keys)
    assert path.read_text().startswith("#") and f"simmtm sweep sweeps/{name}" in path.read_text()


def test_every_sweep_file_under_sweeps_is_known_here() -> None:
    sweep_files = {p.name for p in SWEEPS.rglob("*.yaml") if "search" in yaml.safe_load(p.read_text())}
    assert sweep_files == set(SWEEP_FILES)


def test_the_cluster_sweep_and_the_grid_are_the_ones_the_issue_asks_for() -> None:
    rm = sweep_spec(load_config(SWEEPS / "etth1_rm.yaml"))
    p = rm.search.params
    assert (p[R].low, p[R].high, p[M].low, p[M].high) == (0.1, 0.9, 1, 10)
    assert (p[TAU].low, p[TAU].high, p[TAU].log) == (0.02, 1.0, True)
    assert p[ENC].choices == ["transformer", "patch"] and p[PATCH].when == {ENC: "patch"}
    assert rm.resources.gpus_per_worker == 1
    grid = sweep_spec(load_config(SWEEPS / "grid_rm_etth1.yaml"))
    assert grid.search.grid[R] == [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875]
    assert grid.search.grid[M] == [1, 2, 3, 5, 8]
    assert len(grid.search.grid_cells()) == 35 and grid.tune.repeats >= 2
    # the measured protocol (docs/benchmarks.md): GunPoint, frozen-encoder probe, 3 seeds a cell, every test score
    measured = load_config(SWEEPS / "grid_rm.yaml")
    grid = sweep_spec(measured)
    assert measured.finetune.mode == "probe" and measured.data.name == "GunPoint"
    assert len(grid.search.grid_cells()) == 25 and grid.tune.repeats == 3 and grid.tune.test_top_k >= 25
    quick = sweep_spec(load_config(SWEEPS / "quick.yaml"))
    # The main job: at least 8 full runs, now 5 search trials plus the confirmation's (1 + 1) x 3 paired seeds
    # (issue 13 resized it to fit about 10 minutes on 2 cores), at least 5 of them searched (importance needs 5).
    searched = quick.tune.resolved_samples(quick.search) * quick.tune.repeats
    confirm = quick.tune.confirm
    assert searched >= 5 and searched + (confirm.top_k + 1) * confirm.seeds >= 8
    assert quick.tune.scheduler.type == "fifo"  # nothing pruned: every search trial finishes (docs/benchmarks.md)


def _param(key, spec):
    return lambda raw: raw["search"]["params"].__setitem__(key, spec)


def _section(name, **values):
    return lambda raw: raw[name].update(values)


BAD = [
    (lambda raw: raw["search"]["params"].__setitem__("pretrain.mask_ration", raw["search"]["params"].pop(R)),
     "unknown parameter 'pretrain.mask_ration' (did you mean 'pretrain.mask_ratio'?)"),
    (_param(R, {"type": "float", "low": 0.9, "high": 0.1}), "low (0.9) must be below high (0.1)"),
    (_param(R, {"type": "float", "low": 0.5, "high": 0.5}), "low (0.5) must be below high (0.5)"),
    (_param(ENC, {"type": "categorical", "choices": []}), "needs a non-empty 'choices' list"),
    (_param(R, {"type": "float", "low": 0.0, "high": 0.9}), "value 0.0 is not valid for the run"),
    (_param(ENC, {"type": "categorical", "choices": ["transformer", "lstm"]}), "unknown encoder 'lstm'"),
    (_param("device", {"type": "categorical", "choices": ["cpu"]}), "'device' cannot be searched"),
    (_param(PATCH, {"type": "int", "low": 8, "high": 32, "when": {ENC: "lstm"}}), "never takes 'lstm'"),
    (_section("search", method="grid"), "method: grid needs a 'grid' mapping"),
    (_section("tune", num_samples=0), "tune.num_samples"),
    (_section("tune", scheduler={"type": "hyperband"}), "tune.scheduler.type"),
    (_section("resources", gpu_per_worker=1), "unknown key 'resources.gpu_per_worker'"),
]


@pytest.mark.parametrize(("change", "expected"), BAD, ids=[e for _, e in BAD])
def test_bad_sweep_files_fail_with_one_line_and_exit_2(tiny_config, write_config, tmp_path, capsys, change, expected) -> None:
    raw = sweep_raw(tiny_config)
    change(raw)
    path = write_config(raw, "sweep.yaml")
    out = tmp_path / "out"
    code = main(["sweep", str(path), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and expected in err[0] and str(path) in err[0], err
    assert not out.exists()  # nothing started, nothing written


def test_resources_this_machine_can_never_hold_fail_before_ray_starts(tiny_config, write_config, tmp_path, capsys) -> None:
    path = write_config(sweep_raw(tiny_config, resources={"workers": 1, "cpus_per_worker": 4096}), "sweep.yaml")
    code = main(["sweep", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "resources: a trial needs 1 worker(s) x (4096 CPU, 0 GPU)" in err[0] and "could never start" in err[0]
    assert not (tmp_path / "out").exists()


def test_resources_decide_how_many_trials_run_at_once() -> None:
    two_gpu_nodes = [{"CPU": 16, "GPU": 2}, {"CPU": 16, "GPU": 2}]
    assert check_resources(ResourcesSpec(workers=1, cpus_per_worker=4, gpus_per_worker=1), nodes=two_gpu_nodes) == 4
    assert check_resources(ResourcesSpec(workers=1, cpus_per_worker=1, gpus_per_worker=0), nodes=[{"CPU": 2}]) == 2
    with pytest.raises(ConfigError, match="could never start"):
        check_resources(ResourcesSpec(workers=3, cpus_per_worker=8, gpus_per_worker=1), nodes=[{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}])
    spec = SweepSpec.model_validate({"search": SEARCH, "tune": {"num_samples": 10}, "resources": {"workers": 2}})
    assert concurrency(spec, 4) == 2  # 4 worker slots / 2 workers per trial: no trial driver waits holding a slot
    spec = SweepSpec.model_validate({"search": SEARCH, "tune": {"num_samples": 1}})
    assert concurrency(spec, 8) == 1  # never more than there are trials


def test_a_joined_cluster_that_cannot_hold_a_trial_yet_starts_and_waits_but_a_local_ray_refuses() -> None:
    gpu_trial = {"workers": 1, "cpus_per_worker": 4, "gpus_per_worker": 1}
    head_only = [{"CPU": 8}]  # an autoscaling cluster when the driver starts: the head, no GPU node yet
    spec = SweepSpec.model_validate({"search": SEARCH, "tune": {"num_samples": 16}, "resources": gpu_trial})
    with pytest.raises(ConfigError, match="could never start"):
        plan_trials(spec, head_only, joined=False)
    plan = plan_trials(spec, head_only, joined=True, address="auto")
    assert plan.max_concurrent == 1 and "the cluster at auto has 8 CPU/0 GPU up now" in plan.waiting
    assert "wait" in plan.waiting and "\n" not in plan.waiting
    set_spec = SweepSpec.model_validate({"search": SEARCH, "tune": {"num_samples": 16, "max_concurrent_trials": 8},
                                         "resources": gpu_trial})
    assert plan_trials(set_spec, head_only, joined=True).max_concurrent == 8  # tune.max_concurrent_trials wins
    assert plan_trials(set_spec, [], joined=True).waiting  # not even a head node listed: still starts
    # Once nodes are up: derived from what they hold, no warning; joined or not makes no difference.
    nodes = [{"CPU": 8}, {"CPU": 16, "GPU": 2}, {"CPU": 16, "GPU": 2}]
    assert plan_trials(spec, nodes, joined=True) == plan_trials(spec, nodes, joined=False)
    assert plan_trials(spec, nodes, joined=True).max_concurrent == 4 and plan_trials(spec, nodes, joined=True).waiting is None


@pytest.mark.parametrize(("address", "environ", "joins"), [
    (None, {}, None),  # a fresh local Ray
    ("auto", {}, "auto"),
    ("ray://head:10001", {"RAY_ADDRESS": "10.0.0.1:6379"}, "ray://head:10001"),  # --address wins
    (None, {"RAY_ADDRESS": "10.0.0.1:6379", "RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}, "10.0.0.1:6379"),  # inside `ray job submit`
    (None, {"RAY_ADDRESS": "10.0.0.1:6379"}, "10.0.0.1:6379"),  # on a cluster node
    (None, {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}, "auto"),  # a job context without RAY_ADDRESS
    (None, {"RAY_ADDRESS": "http://127.0.0.1:8265"}, None),  # a laptop set up for `ray job submit`: not a cluster
    (None, {"RAY_ADDRESS": ""}, None),
])
def test_the_sweep_joins_the_cluster_of_its_ray_job_and_otherwise_starts_a_local_ray(address, environ, joins) -> None:
    resolved, why = resolve_address(address, environ)
    assert resolved == joins
    assert why.startswith("joining") if joins else why.startswith("starting a local Ray")
    if environ.get("RAY_ADDRESS", "").startswith("http"):
        assert "Jobs API URL" in why


def test_the_first_trial_is_the_papers_setting(tiny_config) -> None:
    raw = sweep_raw(tiny_config)
    config = load_config_from(raw)
    spec = sweep_spec(config)
    point = first_point(spec, config.run_dict())
    assert point == {R: PAPER_DEFAULTS[R], M: PAPER_DEFAULTS[M], TAU: PAPER_DEFAULTS[TAU], ENC: "transformer"}


def load_config_from(raw):
    from simmtm.config.schema import parse_config

    return parse_config(raw)


def _searcher(tiny_config, *, search=None, repeats=1, storage=None, seed=3, asha=None):
    """A sweep's study, scheduler and searcher as the driver builds them, on an in-memory (or given) storage."""
    from simmtm.tuning.record import TrialStore
    from simmtm.tuning.search import Rungs, StudyPruner
    from simmtm.tuning.study import SweepStudy

    grid = search is not None and search.get("method") == "grid"
    config = load_config_from(sweep_raw(tiny_config, search=search, tune={} if grid else None))
    spec = sweep_spec(config)
    study = SweepStudy(storage or optuna.storages.InMemoryStorage(), "s", search=spec.search,
                       base_values=flat_config(config.run_dict()), seed=seed, mode="min", repeats=repeats)
    first = first_point(spec, config.run_dict())
    study.enqueue_start(spec.search.grid_cells() if grid else [first] if first else [])
    rungs = Rungs(asha, reduction_factor=2, mode="min") if asha else None
    pruner = StudyPruner(study, "probe_val_mse", rungs)
    searcher = SweepSearch(study, pruner, TrialStore("/nonexistent"), metric="val_mse", mode="min")
    return searcher, study.study


def _result(searcher, tid: str, epoch: int, value: float) -> str:
    """A probe result as Tune hands it on: to the scheduler (which records it), then to the searcher."""
    from types import SimpleNamespace

    trial = SimpleNamespace(config={"number": searcher.numbers[tid]})
    decision = searcher.pruner.on_trial_result(None, trial, {"probe_val_mse": value, "epoch": epoch, "stage": "probe"})
    if decision == "CONTINUE":
        searcher.on_trial_result(tid, {"probe_val_mse": value, "epoch": epoch})
    return decision


def test_search_seed_redraws_the_search_but_keeps_the_training_seed(tiny_config) -> None:
    def draws(search_seed):
        search = {**copy.deepcopy(SEARCH), "first": "none", **({"seed": search_seed} if search_seed is not None else {})}
        config = load_config_from(sweep_raw(tiny_config, search=search))
        seed = sampler_seed(sweep_spec(config), config.seed)
        searcher, _ = _searcher(tiny_config, search=search, seed=seed)
        return config.seed, seed, [searcher.suggest(f"t{i}")[R] for i in range(3)]

    run_seed, default_seed, default = draws(None)
    assert default_seed == run_seed  # unset: the run's seed, as before
    same_seed, seed_7, with_7 = draws(7)
    assert same_seed == run_seed and seed_7 == 7  # the training seed is untouched
    assert with_7 != default and draws(7)[2] == with_7  # another search, and reproducible


def test_searcher_records_complete_pruned_and_failed_trials_honestly(tiny_config) -> None:
    searcher, study = _searcher(tiny_config, asha=[1, 2])
    configs = {tid: searcher.suggest(tid) for tid in ("a", "b", "c")}
    assert configs["a"][R] == 0.5 and configs["a"][M] == 3 and configs["a"]["repeat"] == 0  # the paper's first
    assert [configs[t]["number"] for t in "abc"] == [0, 1, 2]  # a trial is known by its Optuna number
    assert _result(searcher, "a", 1, 0.5) == _result(searcher, "a", 2, 0.4) == "CONTINUE"
    assert _result(searcher, "b", 1, 0.9) == "STOP"  # worse than the rung's best half (of one): ASHA stops it
    assert _result(searcher, "c", 1, 0.3) == "CONTINUE"
    searcher.on_trial_complete("a", {"val_mse": 0.42, "stage": "final", "epoch": 2, "time_total_s": 3.0})
    searcher.on_trial_complete("b", {"probe_val_mse": 0.9, "epoch": 1, "stage": "probe"})
    searcher.on_trial_complete("c", None, error=True)
    trials = {t.user_attrs["trial_id"]: t for t in study.get_trials()}
    assert set(trials) == {"trial-0000", "trial-0001", "trial-0002"}
    a, b, c = (trials[f"trial-000{i}"] for i in range(3))
    assert a.state == TrialState.COMPLETE and a.value == pytest.approx(0.42) and a.user_attrs["wall_s"] == 3.0
    assert a.intermediate_values == {1: 0.5, 2: 0.4}  # every probe score, the record pruning reads
    assert b.state == TrialState.PRUNED and b.intermediate_values == {1: 0.9}
    # Its probe score stays an intermediate value only: sorting the study by value ranks final scores alone
    # (optuna's own tell would have copied 0.9 into the value).
    assert b.value is None
    assert c.state == TrialState.FAIL and "no error recorded" in c.user_attrs["reason"]
    assert all(PATCH in t.params for t in trials.values() if t.params[ENC] == "patch")
    assert all(PATCH not in t.params for t in trials.values() if t.params[ENC] == "transformer")


def test_a_trial_stopped_with_the_sweep_stays_running_and_a_resume_hands_it_out_first(tiny_config, tmp_path) -> None:
    """No final result and not pruned (Ctrl-C, a time budget, a killed driver): the trial is the study's to finish.
    The next driver gets it back first, with its number and parameters, then the sampler's next proposal."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher, study = _searcher(tiny_config, storage=storage, asha=[1])
    searcher.suggest("a")
    second = searcher.suggest("b")
    _result(searcher, "a", 1, 0.5)
    searcher.on_trial_complete("a", {"val_mse": 0.4, "stage": "final", "epoch": 1})
    searcher.on_trial_complete("b", {"probe_val_mse": 0.7, "epoch": 1, "stage": "probe"})  # stopped, not pruned
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.RUNNING]

    again, _ = _searcher(tiny_config, storage=storage, asha=[1])  # the next driver
    resumed = again.suggest("x")
    assert resumed == second  # same number, parameters and repeat
    assert again.pruner.rungs.values[1] == {0: -0.5}  # the rung holds the earlier trial's probe score
    assert _result(again, "x", 1, 0.9) == "STOP"  # and the resumed trial is compared against it
    assert again.suggest("y")["number"] == 2


def test_a_resumed_study_proposes_what_an_uninterrupted_one_would(tiny_config, tmp_path) -> None:
    """The sampler of trial n is seeded by n: a driver that stops after trial k and a fresh one that opens the same
    study propose trial k+1 as one driver that ran on would."""
    search = {**copy.deepcopy(SEARCH), "first": "none"}

    def run(storage, numbers, searcher=None):
        searcher = searcher or _searcher(tiny_config, search=search, storage=storage)[0]
        out = []
        for i in numbers:
            config = searcher.suggest(f"t{i}")
            searcher.on_trial_complete(f"t{i}", {"val_mse": config[R] ** 2, "stage": "final"})
            out.append(config)
        return out

    whole = run(optuna.storages.InMemoryStorage(), range(14))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    parts = run(storage, range(11)) + run(storage, range(11, 14))
    assert parts == whole  # TPE's proposals after its 10 random ones included


def test_a_trial_whose_driver_died_while_asking_is_drawn_on_resume_as_it_would_have_been(tiny_config, tmp_path) -> None:
    """A driver killed between Optuna's ask and drawing the trial's values leaves a RUNNING trial without parameters:
    the next driver draws it (its number, its seeded sampler) before anything else, so no trial stays RUNNING and the
    values equal those an uninterrupted driver drew; a repeat left the same way keeps its enqueued values."""
    search = {**copy.deepcopy(SEARCH), "first": "none"}

    def complete(searcher, numbers):
        for i in numbers:
            config = searcher.suggest(f"t{i}")
            searcher.on_trial_complete(f"t{i}", {"val_mse": config[R] ** 2, "stage": "final"})

    whole, _ = _searcher(tiny_config, search=search, repeats=2)
    complete(whole, range(4))
    expected = [whole.suggest(f"t{i}") for i in (4, 5)]  # trial 4 and its repeat

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    first, study = _searcher(tiny_config, search=search, repeats=2, storage=storage)
    complete(first, range(4))
    optuna.load_study(study_name="s", storage=storage).ask()  # the driver dies here: trial 4 has no values
    assert [t.params for t in study.get_trials()][4] == {}

    again, study = _searcher(tiny_config, search=search, repeats=2, storage=storage)
    resumed = [again.suggest(f"r{i}") for i in (4, 5)]
    assert resumed == expected, (resumed, expected)
    assert [t.number for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))] == [4, 5]
    assert all(t.params and t.user_attrs["trial_id"] == f"trial-{t.number:04d}" for t in study.get_trials())


def test_searcher_runs_each_configuration_once_per_repeat(tiny_config) -> None:
    searcher, study = _searcher(tiny_config, repeats=2)
    configs = [searcher.suggest(f"t{i}") for i in range(6)]
    strip = [{k: v for k, v in c.items() if k not in ("repeat", "number")} for c in configs]
    assert [c["repeat"] for c in configs] == [0, 1, 0, 1, 0, 1]
    assert strip[0] == strip[1] and strip[2] == strip[3] and strip[4] == strip[5] and strip[0] != strip[2]
    assert [t.user_attrs["repeat"] for t in study.get_trials()] == [0, 1, 0, 1, 0, 1]


def test_grid_search_enqueues_every_cell_times_repeats(tiny_config, tmp_path) -> None:
    grid = {"method": "grid", "grid": {R: [0.25, 0.5, 0.75], M: [1, 3]}}
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher, study = _searcher(tiny_config, search=grid, repeats=2, storage=storage)
    seen = [searcher.suggest(f"t{i}") for i in range(12)]
    cells = sorted((c[R], c[M], c["repeat"]) for c in seen)
    assert cells == sorted((r, m, k) for r in (0.25, 0.5, 0.75) for m in (1, 3) for k in (0, 1))
    assert study.trials[0].distributions[R].__class__.__name__ == "FloatDistribution"  # numeric axes stay numeric


def test_asha_rungs_cut_at_the_best_fraction_of_earlier_scores_and_replay_from_the_study() -> None:
    from simmtm.tuning.search import Rungs

    rungs = Rungs([1, 3], reduction_factor=3, mode="min")
    assert [rungs.decide(n, 1, v) for n, v in enumerate([0.5, 0.4, 0.6, 0.45])] == [False, False, True, False]
    assert rungs.decide(1, 3, 0.3) is False and rungs.decide(0, 2, 0.1) is False  # epoch 2: no rung reached
    assert rungs.decide(3, 3, 0.35) is True  # 0.35 is outside the best third of {0.3}: cutoff 0.3
    assert rungs.decide(3, 3, 0.0) is False  # a trial is judged once per rung
    assert rungs.values == {3: {1: -0.3, 3: -0.35}, 1: {0: -0.5, 1: -0.4, 2: -0.6, 3: -0.45}}


def test_search_startup_trials_hands_over_to_tpe_earlier() -> None:
    """search.startup_trials: the first draws equal a default TPE's (both random), later ones come from the model."""
    from simmtm.tuning.spec import SearchSpec
    from simmtm.tuning.study import make_sampler

    def draws(startup: int | None) -> list[float]:
        spec = SearchSpec.model_validate(
            {"params": {"x": {"type": "float", "low": 0.0, "high": 1.0}}, "startup_trials": startup}
        )
        study = optuna.create_study(sampler=make_sampler(spec, seed=3))
        study.optimize(lambda t: (t.suggest_float("x", 0.0, 1.0) - 0.2) ** 2, n_trials=8)
        return [t.params["x"] for t in study.trials]

    early, default = draws(3), draws(None)
    assert early[:3] == default[:3]  # random start, same seed
    assert early[3:] != default[3:]  # TPE's model from trial 4 on, the default still random until trial 11
    with pytest.raises(Exception, match="startup_trials"):
        SearchSpec.model_validate({"params": {"x": {"type": "float", "low": 0, "high": 1}}, "startup_trials": 0})


@pytest.mark.parametrize(
    ("grace", "probe_every", "epochs", "rung"),
    [(1, 5, 20, 5), (2, 1, 3, 2), (5, 5, 20, 5), (7, 5, 20, 10), (30, 5, 20, 20), (1, 1, 4, 1), (2, 3, 4, 3)],
)
def test_the_first_rung_is_the_first_probed_epoch_at_or_after_the_grace_period(
    grace: int, probe_every: int, epochs: int, rung: int
) -> None:
    from simmtm.tuning.spec import first_rung

    assert first_rung(grace, probe_every, epochs) == rung


def test_drivers_opening_one_new_study_database_at_once_all_get_it(tmp_path: Path) -> None:
    """Shared-study mode: drivers that start together race to create the database's schema; none may fail."""
    import threading

    from simmtm.tuning.study import open_storage

    for round_ in range(3):  # every round races (both failure forms seen within three): 5 cost 10-30 s
        url = f"sqlite:///{tmp_path / f'optuna{round_}.db'}"
        barrier, errors = threading.Barrier(6), []

        def open_it(url: str = url, barrier: threading.Barrier = barrier, errors: list = errors) -> None:
            barrier.wait()
            try:
                open_storage(url)
            except Exception as exc:  # what a losing driver would have died of
                errors.append(repr(exc)[:200])

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
