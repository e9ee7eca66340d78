"""Real studies: real Ultralytics trainings in Ray trials, logged to MLflow, through scripts/tune.py."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from detune.config import load_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _write_study(tmp_path: Path, shapes_yaml: Path, **changes) -> Path:
    study = {
        "name": "real", "output_dir": str(tmp_path / "out"),
        "train": {"data": str(shapes_yaml), "epochs": 2, "batch": 8, "nbs": 8, "imgsz": 32, "fraction": 0.5,
                  "device": "cpu", "warmup_epochs": 0.0, "mosaic": 0.0, "plots": False, "workers": 0},
        "search_space": {"lr0": {"loguniform": [1.0e-3, 1.0e-1]}},
        "search": "random", "trial_scheduler": "fifo", "num_samples": 2, "max_concurrent_trials": 1,
        "resources_per_trial": {"cpu": 1}, "tracking": f"sqlite:///{tmp_path / 'mlflow.db'}",
        **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix sockets live under it
    return {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}


def _children(uri: str) -> tuple[list, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    parents = [r for r in runs if r.data.tags.get("detune.kind") == "study"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _kill_new_ray_processes(before: set[int]) -> None:
    """After a SIGKILL of the driver, Ray's daemons survive as orphans (DashboardAgent, RuntimeEnvAgent
    rename themselves and ignore SIGTERM): kill the Ray processes this test started, by PID."""
    import psutil

    mine = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        if proc.pid in before or proc.pid in mine:
            continue
        text = f"{proc.info['name']} {' '.join(proc.info['cmdline'] or [])}"
        if "ray" in text:
            try:
                proc.kill()
            except psutil.Error:
                continue


def test_sigkill_mid_study_then_resume_completes_without_reruns(tmp_path: Path, shapes_yaml: Path) -> None:
    """A real study through scripts/tune.py (real Ultralytics trainings in Ray trials, logged to MLflow),
    SIGKILLed with one trial done and another mid-way, then resumed to the end."""
    study = _write_study(tmp_path, shapes_yaml, num_samples=3,
                         train={"data": str(shapes_yaml), "epochs": 3, "batch": 8, "nbs": 8, "imgsz": 32,
                                "fraction": 0.5, "device": "cpu", "warmup_epochs": 0.0, "mosaic": 0.0,
                                "plots": False, "workers": 0})
    import psutil

    env = _env(tmp_path)
    before = set(psutil.pids())
    cmd = [sys.executable, str(REPO / "scripts" / "tune.py"), "--config", str(study)]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path,
                              start_new_session=True)
    experiment = tmp_path / "out" / "ray" / "real"
    finished: dict[str, float] = {}
    deadline = time.time() + 600
    try:
        # wait until one trial has finished all 3 epochs and another has reported at least one
        while time.time() < deadline:
            results = {}
            for f in experiment.glob("*/result.json"):
                lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
                results[f.parent.name] = lines
            done = {k: v for k, v in results.items() if v and v[-1].get("epoch") == 3}
            running = [k for k, v in results.items() if v and v[-1].get("epoch", 0) < 3]
            if done and running:
                finished = {v[-1]["detune_trial_id"]: max(x["metrics/mAP50-95"] for x in v) for v in done.values()}
                break
            assert driver.poll() is None, "the study ended before it could be killed"
            time.sleep(0.5)
        assert finished, "no trial finished in time"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
        _kill_new_ray_processes(before)

    out = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "best config:" in out.stdout
    cfg = load_config(tmp_path / "out" / "best.yaml")  # detune.train accepts it
    assert 1e-3 <= cfg.lr0 <= 1e-1 and cfg.epochs == 3
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").read_text().splitlines()))
    assert len(rows) == 3 and {r["status"] for r in rows} == {"completed"}
    for trial_id, metric in finished.items():  # finished trials were not rerun: same results
        row = next(r for r in rows if r["trial_id"] == trial_id)
        assert float(row["best_metric"]) == pytest.approx(metric)
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parents, children = _children(uri)
    assert len(parents) == 1 and len(children) == 3  # reused, not duplicated
    assert parents[0].info.status == "FINISHED"
    assert {c.data.tags["detune.trial_id"] for c in children} == {r["trial_id"] for r in rows}
    client = MlflowClient(tracking_uri=uri)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.status == "FINISHED"
        steps = [p.step for p in client.get_metric_history(child.info.run_id, "metrics/mAP50-95")]
        assert set(steps) == {1, 2, 3}, steps  # one point per epoch (a resumed trial may re-log its last epoch)
        if child.data.tags["detune.trial_id"] in finished:
            assert sorted(steps) == [1, 2, 3]  # a finished trial was not rerun: no point logged twice


# ---- every shipped config runs (real trainings, tiny overrides) -------------------------------------------------
SHIPPED_STUDIES = {
    "quick.yaml": {},
    "pbt.yaml": {},
    "lr_search.yaml": {},  # 1 trial: below the default confirmation's 8
}


@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize("name", sorted(SHIPPED_STUDIES))
def test_every_shipped_study_config_runs(tmp_path: Path, shapes_yaml: Path, name: str) -> None:
    from detune.tuning import tune

    tiny = {"train.data": str(shapes_yaml), "train.epochs": 1, "train.imgsz": 32, "train.batch": 8, "train.nbs": 8,
            "train.fraction": 0.5, "train.workers": 0, "train.device": "cpu", "train.warmup_epochs": 0.0,
            "train.plots": False, "num_samples": 1, "max_concurrent_trials": 1, "resources_per_trial.cpu": 1,
            "resources_per_trial.gpu": 0, "output_dir": str(tmp_path / "out"),
            "tracking": f"sqlite:///{tmp_path / 'mlflow.db'}", **SHIPPED_STUDIES[name]}
    result = tune(REPO / "configs" / name, **tiny)
    assert [t["status"] for t in result.trials] == ["completed"], result.trials
    assert result.best_yaml is not None and load_config(result.best_yaml).epochs == 1
    parents, children = _children(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [p.info.status for p in parents] == ["FINISHED"] and [c.info.status for c in children] == ["FINISHED"]


def test_shipped_train_config_runs(tmp_path: Path, shapes_yaml: Path) -> None:
    import detune

    result = detune.train(REPO / "configs" / "train.yaml", data=str(shapes_yaml), epochs=1, imgsz=32, batch=8,
                          nbs=8, fraction=0.5, device="cpu", warmup_epochs=0.0, plots=False, threads=1,
                          project=str(tmp_path / "runs"), name="t")
    assert result.status == "completed", result.reason
    assert len(result.history) == 1


@pytest.mark.usefixtures("local_ray")
def test_a_default_study_and_its_best_yaml_repeats_its_trials_curve(tmp_path: Path, shapes_yaml: Path) -> None:
    """The default design for real (the prior, Optuna's TPE sampler, the detection rungs; a confirmation
    stage); best.yaml records what changes the numerics (the trial's CPU threads beside the seed and the
    deterministic flag), so a retraining on the same machine repeats its trial epoch for epoch."""
    import detune
    from detune.tuning import tune

    study = yaml.safe_load(_write_study(tmp_path, shapes_yaml, tracking=False).read_text())
    for key in ("search_space", "search", "trial_scheduler"):
        del study[key]
    result = tune({**study, "num_samples": 3, "confirm": {"top_k": 1, "seeds": 1}})
    assert {"lr0_scale", "optimizer", "scheduler"} <= set(result.trials[0]) and len(result.trials) == 3
    assert result.confirm["seeds"] == [1000] and result.confirm["confirmed"][result.confirm["best"]["trial_id"]]
    best_id = result.best_yaml.read_text().split()[3]  # "# best trial <id> of study ..."
    assert yaml.safe_load(result.best_yaml.read_text())["threads"] == 1  # the trial's resources_per_trial.cpu
    again = detune.train(result.best_yaml, project=str(tmp_path / "again"), name="r", tracking=False)

    def curve(run_dir: Path) -> list[dict[str, str]]:
        with (run_dir / "results.csv").open(newline="") as f:
            return [{k.strip(): v for k, v in row.items() if k.strip() != "time"} for row in csv.DictReader(f)]

    trial = curve(tmp_path / "out" / "trials" / best_id)
    assert again.status == "completed" and len(trial) == 2 and curve(tmp_path / "again" / "r") == trial
