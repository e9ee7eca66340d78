"""Ray Tune studies on a real local Ray: scheduling, PBT, GPU assignment (fake trainer, fast) and real
trainings through scripts/tune.py (slow)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from detune import _fake, tuning
from detune.errors import ConfigError
from detune.study import load_study
from detune.tuning import tune

pytestmark = pytest.mark.slow


def _study(tmp_path: Path, shapes_yaml: Path, **changes) -> dict:
    base = {
        "name": "t", "output_dir": str(tmp_path / "out"),
        "train": {"data": str(shapes_yaml), "epochs": 6, "device": "cpu", "imgsz": 32, "warmup_epochs": 0.0},
        "search_space": {"lr0": {"loguniform": [1.0e-4, 1.0e-1]}},
        "search": "random", "trial_scheduler": "fifo", "num_samples": 4, "max_concurrent_trials": 2,
        "tracking": False, "resources_per_trial": {"cpu": 1},
    }
    for key, value in changes.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key == "train" else value
    return base


def _rows(result) -> list[dict]:
    with open(result.trials_csv) as f:
        return list(csv.DictReader(f))


@pytest.mark.usefixtures("local_ray")
def test_asha_stops_bad_trials_early(tmp_path: Path, shapes_yaml: Path) -> None:
    study = _study(tmp_path, shapes_yaml, trial_scheduler="asha",
                   search_space={"lr0": {"grid": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]}},
                   search="grid", trial_scheduler_params={"grace_period": 1, "reduction_factor": 2}, num_samples=1,
                   confirm=False)  # 8 trials would confirm by default; this test is about ASHA
    snapshots: list[list[dict]] = []
    result = tune(study, fit=_fake.fit, progress=snapshots.append)
    statuses = [t["status"] for t in result.trials]
    final = {r["trial_id"]: r for r in snapshots[-1]}  # the live progress rows agree with trials.csv
    assert {t["trial_id"]: t["status"] for t in result.trials} == {k: r["status"] for k, r in final.items()}
    assert any(r["status"] == "running" for snap in snapshots for r in snap)
    assert len(result.trials) == 8
    assert "stopped" in statuses and "completed" in statuses
    assert result.best_params["lr0"] == pytest.approx(1e-2)
    stopped = [t for t in result.trials if t["status"] == "stopped"]
    assert all(t["epochs_run"] < 6 for t in stopped)
    assert sum(t["epochs_run"] for t in result.trials) < 8 * 6  # compute saved
    assert result.best_yaml.is_file() and result.trials_csv.is_file()
    assert result.report == result.output_dir / "report" / "report.md" and result.report.is_file()  # built once


@pytest.mark.usefixtures("local_ray")
def test_pbt_exploit_copies_weights_and_changes_lr(tmp_path: Path, shapes_yaml: Path) -> None:
    # Deterministic whatever the load: the seeded population (4 lr0 values, so 4 distinct fake scores) and
    # synchronous PBT (every trial waits at epoch 2 until all have reported) make the bottom half exploit the
    # top half at epoch 2 in every run; timing only decides when, never whether. Nor does memory used by other
    # programs: Ray's OOM killer, which once ended a trial at 96% (measured), is off (fixture local_ray).
    study = _study(tmp_path, shapes_yaml, trial_scheduler="pbt", num_samples=4, max_concurrent_trials=4,
                   trial_scheduler_params={"perturbation_interval": 2, "quantile_fraction": 0.5,
                                           "resample_probability": 0.5, "synch": True}, train={"epochs": 4},
                   search_space={"lr0": {"loguniform": [1.0e-5, 1.0e-1]}},
                   resources_per_trial={"cpu": 0.5})
    result = tune(study, fit=_fake.fit)
    first = {r.metrics_dataframe["detune_trial_id"].iloc[0]: r.metrics_dataframe["lr/pg0"].iloc[0]
             for r in result.result_grid}
    again = tune({**study, "name": "again", "output_dir": str(tmp_path / "again"),  # 1 epoch: population only
                  "train": {**study["train"], "epochs": 1}}, fit=_fake.fit)
    assert sorted(first.values()) == sorted(r.metrics_dataframe["lr/pg0"].iloc[0] for r in again.result_grid)
    assert len(set(first.values())) == 4  # the seeded population, the same in every run
    frames = [r.metrics_dataframe for r in result.result_grid]
    exploits = [row for f in frames for row in f.to_dict("records")
                if row.get("detune_restored_from") and row["detune_restored_from"] != row["detune_trial_id"]]
    assert exploits, "PBT performed no exploit"
    ranked = sorted(first, key=lambda t: _fake.score(first[t], 2))
    exploiters = {row["detune_trial_id"] for row in exploits}
    assert exploiters == set(ranked[:2])  # exactly the bottom half, as synchronous PBT decides
    assert {row["detune_restored_from"] for row in exploits} <= set(ranked[2:])  # from the top half
    for row in exploits:  # continued from the donor's epoch, not from its own
        assert row["epoch"] >= 3
    # the exploiting trial continued from the donor's epoch with a different lr
    for frame in frames:
        lrs = frame["lr/pg0"].tolist()
        if any(frame["detune_restored_from"].astype(str).ne("") & frame["detune_restored_from"].ne(
                frame["detune_trial_id"])):
            assert len(set(lrs)) > 1
            break
    else:  # pragma: no cover - the assertion above already failed
        pytest.fail("no exploiting trial found")
    assert [(t["status"], t["epochs_run"]) for t in result.trials] == [("completed", 4)] * 4


@pytest.mark.parametrize("synch", [True, False])
def test_pbt_is_not_consulted_on_the_last_epoch(tmp_path: Path, shapes_yaml: Path, synch: bool) -> None:
    """Synchronous PBT paused trials at a barrier on their last epoch and exploited them from a donor's final
    checkpoint; Ray restored their result.json from an older copy and they were reported "stopped" (2 of 3
    suite runs). A perturbation there has nothing left to train: detune's PBT never makes one."""
    study = load_study(_study(tmp_path, shapes_yaml, trial_scheduler="pbt", train={"epochs": 4},
                              trial_scheduler_params={"perturbation_interval": 2, "synch": synch}))
    pbt = tuning._scheduler(study)
    pbt.set_search_properties("fitness", "max")
    unknown_trial = object()  # PBT itself would look this trial up in its state and fail
    assert pbt.on_trial_result(None, unknown_trial, {"training_iteration": 4, "fitness": 0.5}) == pbt.CONTINUE
    with pytest.raises(KeyError):
        pbt.on_trial_result(None, unknown_trial, {"training_iteration": 3, "fitness": 0.5})


@pytest.mark.usefixtures("local_ray")
def test_diverged_and_crashing_trials_do_not_stop_the_study(tmp_path: Path, shapes_yaml: Path) -> None:
    study = _study(tmp_path, shapes_yaml, search="grid", search_space={"lr0": {"grid": [0.01, 0.7, 2.0]}},
                   num_samples=1, train={"epochs": 3})
    result = tune(study, fit=_fake.fit)
    by_lr = {round(float(t["lr0"]), 4): t for t in result.trials}
    assert by_lr[0.01]["status"] == "completed"
    assert by_lr[2.0]["status"] == "diverged" and "nan" in by_lr[2.0]["reason"]
    assert by_lr[0.7]["status"] == "failed" and "out of memory" in by_lr[0.7]["reason"]
    assert result.best_params == {"lr0": 0.01}
    rows = _rows(result)
    assert {r["status"] for r in rows} == {"completed", "diverged", "failed"}


def test_gpu_trials_get_distinct_gpus_on_a_simulated_two_node_cluster(tmp_path: Path, shapes_yaml: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from detune import _runtime

    ray.shutdown()  # the module's shared local Ray, if a test before this one started it
    _runtime.prepare()
    _runtime.local_ray_auth()  # the simulated cluster uses detune's token (else Ray writes ~/.ray/auth_token)
    tuning._reload_ray_auth()  # Ray cached its auth mode when this test imported it, before prepare()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 2})
    cluster.add_node(num_cpus=1, num_gpus=2)
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        study = _study(tmp_path, shapes_yaml, num_samples=4, max_concurrent_trials=4, train={"device": "auto"},
                       resources_per_trial={"cpu": 0.25, "gpu": 1})
        result = tune(study, fit=_fake.fit)
        seen = set()
        for r in result.result_grid:
            last = r.metrics
            assert last["detune_device"] == "0"  # Ray's CUDA_VISIBLE_DEVICES makes the assigned GPU index 0
            seen.add((last["detune_node"], last["detune_gpu_ids"]))
        assert len(seen) == 4  # four trials at once: 2 nodes x 2 GPUs, each trial its own GPU
        assert len({node for node, _ in seen}) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_bad_study_fails_before_ray_starts(tmp_path: Path, shapes_yaml: Path) -> None:
    with pytest.raises(ConfigError, match=r"trial_scheduler \('ashaa'\).*did you mean asha"):
        tune(_study(tmp_path, shapes_yaml, trial_scheduler="ashaa"))
    with pytest.raises(ConfigError, match=r"search_space.lr0.loguniform \(\[0.1, 0.001\]\)"):
        load_study(_study(tmp_path, shapes_yaml, search_space={"lr0": {"loguniform": [0.1, 0.001]}}))
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize("search", ["optuna", "random"])
def test_searchers_try_the_baseline_first_within_num_samples(tmp_path: Path, shapes_yaml: Path, search: str) -> None:
    space = {"lr0": {"loguniform": [1.0e-4, 1.0e-1]}, "scheduler": {"choice": ["linear", "cosine"]}}
    study = _study(tmp_path, shapes_yaml, search=search, num_samples=4, max_concurrent_trials=1,
                   search_space=space, train={"epochs": 2})
    result = tune(study, fit=_fake.fit)
    first = min(result.result_grid, key=lambda r: r.metrics_dataframe["timestamp"].min()).config  # one at a time
    assert len(result.trials) == 4 and (first["lr0"], first["scheduler"]) == (0.01, "linear")
    assert len({round(float(t["lr0"]), 9) for t in result.trials}) == 4  # then the searcher's own samples
    off = tune({**study, "name": "off", "baseline_first": False}, fit=_fake.fit)
    assert len(off.trials) == 4 and 0.01 not in {float(t["lr0"]) for t in off.trials}
