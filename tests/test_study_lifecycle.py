"""Studies that start, fail and stop cleanly on a real local Ray with a real MLflow store: every trial's MLflow
child run agrees with trials.csv (ASHA, reused workers), a study that ends early closes its parent run FAILED
or KILLED with the reason and does not block its rerun, and Ctrl-C / a second study on the same folder."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import HeldStudy

from detune import _fake
from detune.errors import DatasetError, TuneError
from detune.tuning import tune

pytestmark = pytest.mark.slow
MLFLOW_STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "diverged": "FINISHED", "failed": "FAILED",
                 "interrupted": "KILLED"}


def _study(tmp_path: Path, data: Path, **changes: Any) -> dict[str, Any]:
    return {"name": "life", "output_dir": str(tmp_path / "out"),
            "train": {"data": str(data), "epochs": 1, "imgsz": 32, "device": "cpu", "warmup_epochs": 0.0},
            "search_space": {"lr0": {"loguniform": [1.0e-4, 1.0e-1]}}, "search": "random",
            "trial_scheduler": "fifo", "num_samples": 1, "max_concurrent_trials": 1,
            "resources_per_trial": {"cpu": 1}, "tracking": f"sqlite:///{tmp_path / 'mlflow.db'}", **changes}


def _runs(tmp_path: Path) -> tuple[list[Any], list[Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return ([r for r in runs if r.data.tags.get("detune.kind") == "study"],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def _csv_rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "trials.csv").read_text().splitlines()))


def _assert_mlflow_agrees_with_trials_csv(tmp_path: Path, out: Path) -> list[dict[str, str]]:
    rows = _csv_rows(out)
    _, children = _runs(tmp_path)
    by_trial = {c.data.tags["detune.trial_id"]: c for c in children}
    assert set(by_trial) <= {r["trial_id"] for r in rows}
    assert {r["trial_id"] for r in rows if int(r["epochs_run"])} <= set(by_trial)
    for row in rows:
        child = by_trial.get(row["trial_id"])
        if child is None:  # never started (pending when the study was interrupted)
            assert row["status"] == "interrupted" and row["epochs_run"] == "0"
            continue
        seen = (child.info.status, child.data.tags.get("detune.status"), child.data.tags.get("detune.reason", ""))
        assert seen == (MLFLOW_STATUS[row["status"]], row["status"], row["reason"]), (row, seen)
    return rows


# ---- MLflow truth: ASHA with reused workers --------------------------------------------------------------------
@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_every_trial_run_agrees_with_trials_csv_in_an_asha_study_with_reused_workers(
        tmp_path: Path, shapes_yaml: Path, attempt: int) -> None:
    """Sequential trials in one reused worker; rungs at epochs 2 and 4 (grace 2, rf 2, 4 epochs). lr0 0.01
    is best, 1e-4 is stopped at epoch 2, 0.03 passes epoch 2 (median of 0.01 and 1e-4) and is below 0.01 at
    epoch 4, its LAST epoch: the case whose run was closed "stopped" while trials.csv said "completed"."""
    study = _study(tmp_path, shapes_yaml, trial_scheduler="asha", search="grid", num_samples=1,
                   search_space={"lr0": {"grid": [0.01, 1.0e-4, 0.03]}}, train={
                       "data": str(shapes_yaml), "epochs": 4, "imgsz": 32, "device": "cpu", "warmup_epochs": 0.0},
                   trial_scheduler_params={"grace_period": 2, "reduction_factor": 2})
    result = tune(study, fit=_fake.fit)
    rows = _assert_mlflow_agrees_with_trials_csv(tmp_path, result.output_dir)
    status = {float(r["lr0"]): r["status"] for r in rows}
    assert status == {0.01: "completed", 1.0e-4: "stopped", 0.03: "completed"}
    assert {r["epochs_run"] for r in rows if r["status"] == "stopped"} == {"2"}
    parents, _ = _runs(tmp_path)
    assert [(p.info.status, p.data.tags["detune.status"]) for p in parents] == [("FINISHED", "completed")]


@pytest.mark.usefixtures("local_ray")
def test_every_trial_run_agrees_with_trials_csv_in_a_real_asha_study(tmp_path: Path, shapes_yaml: Path) -> None:
    """Real Ultralytics trainings, scored on the validation loss so that ASHA really stops trials."""
    study = _study(tmp_path, shapes_yaml, trial_scheduler="asha", search="grid", num_samples=1,
                   metric="val/box_loss", mode="min",
                   search_space={"lr0": {"grid": [0.01, 1.0e-5, 0.05, 0.002]}},
                   train={"data": str(shapes_yaml), "epochs": 2, "batch": 8, "nbs": 8, "imgsz": 32, "fraction": 0.5,
                          "device": "cpu", "warmup_epochs": 0.0, "mosaic": 0.0, "plots": False, "workers": 0},
                   trial_scheduler_params={"grace_period": 1, "reduction_factor": 2})
    result = tune(study)
    rows = _assert_mlflow_agrees_with_trials_csv(tmp_path, result.output_dir)
    assert len(rows) == 4 and {r["status"] for r in rows} <= {"completed", "stopped"}


# ---- studies that end before their trials -------------------------------------------------------------------------
def test_a_study_whose_ray_cannot_start_closes_its_parent_failed_and_does_not_block_the_rerun(
        tmp_path: Path, shapes_yaml: Path) -> None:
    import ray

    ray.shutdown()  # the shared local Ray of the tests above: this study must start (and fail to join) its own
    study = _study(tmp_path, shapes_yaml)
    with pytest.raises(TuneError, match="could not start or join Ray"):
        tune(study, address="localhost:notaport", fit=_fake.fit)
    parents, children = _runs(tmp_path)
    assert [p.info.status for p in parents] == ["FAILED"] and children == []
    assert parents[0].data.tags["detune.status"] == "failed"
    assert "could not start or join Ray" in parents[0].data.tags["detune.reason"]
    result = tune(study, fit=_fake.fit)  # the corrected rerun is not refused
    assert [t["status"] for t in result.trials] == ["completed"]
    parents, _ = _runs(tmp_path)
    assert sorted(p.info.status for p in parents) == ["FAILED", "FINISHED"]


def test_a_bad_dataset_leaves_no_running_parent_and_does_not_block_the_rerun(tmp_path: Path,
                                                                             shapes_yaml: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"path": str(tmp_path / "nowhere"), "train": "images/train",
                                   "val": "images/val", "names": {0: "a"}}))
    with pytest.raises(DatasetError):
        tune(_study(tmp_path, bad), fit=_fake.fit)
    parents, _ = _runs(tmp_path) if (tmp_path / "mlflow.db").exists() else ([], [])
    assert [p for p in parents if p.info.status == "RUNNING"] == []
    result = tune(_study(tmp_path, shapes_yaml), fit=_fake.fit)
    assert [t["status"] for t in result.trials] == ["completed"]


def test_keyboard_interrupt_mid_study_closes_parent_and_open_trials_killed(tmp_path: Path,
                                                                           shapes_yaml: Path) -> None:
    study = _study(tmp_path, shapes_yaml, search="grid", search_space={"lr0": {"grid": [0.01, 0.02]}},
                   train={"data": str(shapes_yaml), "epochs": 30, "imgsz": 32, "device": "cpu",
                          "warmup_epochs": 0.0})

    def progress(rows: list[dict[str, Any]]) -> None:
        if any(r["epoch"] >= 2 for r in rows):
            raise KeyboardInterrupt  # what a second Ctrl-C raises on the driver

    with pytest.raises(KeyboardInterrupt):
        tune(study, fit=_fake.fit, progress=progress)
    parents, children = _runs(tmp_path)
    assert [(p.info.status, p.data.tags["detune.status"]) for p in parents] == [("KILLED", "interrupted")]
    assert "resume with --resume" in parents[0].data.tags["detune.reason"]
    assert children and all((c.info.status, c.data.tags["detune.status"]) == ("KILLED", "interrupted")
                            for c in children)


# ---- Ctrl-C and a second study on the same folder -----------------------------------------------------------
def test_second_study_is_refused_and_sigint_closes_the_study_killed_then_resume_finishes_its_rounds(
        tmp_path: Path, shapes_yaml: Path, held_study: HeldStudy) -> None:
    """A zoom-in study (refine: 2 rounds of 2 trials) interrupted in its first round: Ray saves the rounds'
    searcher with the experiment, so --resume finishes round 1 and runs round 2 around its best trial."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(tmp_path, shapes_yaml, num_samples=4, refine={"rounds": 2, "factor": 3},
                                          train={"data": str(shapes_yaml), "epochs": 3, "imgsz": 32,
                                                 "device": "cpu", "warmup_epochs": 0.0})))
    out = tmp_path / "out"
    first = held_study.start(path, out / "ray" / "life")
    state = (out / "study.json").read_text()
    started = time.monotonic()
    cli = [sys.executable, "-c", "from detune.cli import main; main()", "tune", str(path)]
    second = subprocess.run(cli, env=held_study.env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.poll() is None, "the first study ended too soon for this test"
    assert second.returncode == 1
    assert second.stderr.startswith(f"error: study 'life' is already running in {out} (pid {first.pid})")
    assert time.monotonic() - started < 60
    assert (out / "study.json").read_text() == state
    assert len(_runs(tmp_path)[0]) == 1  # the loser created no parent run
    first.send_signal(signal.SIGINT)  # Ray's handler: the study stops and fit() returns
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    assert "interrupted" in stdout
    parents, children = _runs(tmp_path)
    assert [(p.info.status, p.data.tags["detune.status"]) for p in parents] == [("KILLED", "interrupted")]
    rows = _assert_mlflow_agrees_with_trials_csv(tmp_path, out)
    assert "interrupted" in {r["status"] for r in rows}
    assert not any(c.data.tags.get("detune.status") == "stopped" for c in children)

    resumed = held_study.resume(path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = _assert_mlflow_agrees_with_trials_csv(tmp_path, out)
    assert [r["status"] for r in rows] == ["completed"] * 4
    assert sorted(r["round"] for r in rows) == ["1", "1", "2", "2"]
    lr = float(max((r for r in rows if r["round"] == "1"), key=lambda r: float(r["best_metric"]))["lr0"])
    assert all(lr / 3 * (1 - 1e-9) <= float(r["lr0"]) <= lr * 3 * (1 + 1e-9) for r in rows if r["round"] == "2")
    parents, children = _runs(tmp_path)
    assert sorted(c.data.tags["detune.trial_id"] for c in children) == sorted(r["trial_id"] for r in rows)
    assert [(p.info.status, p.data.tags["detune.status"]) for p in parents] == [("FINISHED", "completed")]
    assert json.loads((out / "study.json").read_text())["parent_run_id"] == parents[0].info.run_id
