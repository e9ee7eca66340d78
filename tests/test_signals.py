"""SIGTERM (``timeout``, ``kill``) stops a command the way Ctrl-C does: exit 143, nothing of what it started
left running, logs moved to their run folder."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

DETUNE = str(Path(sys.executable).with_name("detune"))


def _env(tmp_path: Path) -> dict[str, str]:
    ray_tmp = f"/tmp/ray-sig-{os.getpid()}-{time.monotonic_ns() % 100000}"  # short: Ray's socket paths
    return {**os.environ, "RAY_TMPDIR": ray_tmp, "DETUNE_HOME": str(tmp_path / "home"),
            "MLFLOW_TRACKING_URI": "", "PYTHONPATH": os.pathsep.join(sys.path)}


def _same_session(ray_tmp: str) -> list:
    """Every live process that inherited this test's RAY_TMPDIR: the driver and everything Ray started
    for it (workers rename themselves to ray::IDLE, so names and command lines cannot tell)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("RAY_TMPDIR") == ray_tmp and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def _kill(procs: list) -> None:
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"ended before {what}: {proc.stderr.read().decode()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.5)


def _train(shapes_yaml: Path, **changes: object) -> dict:
    return {"model": "yolo11n.yaml", "data": str(shapes_yaml), "batch": 8, "nbs": 8, "imgsz": 32,
            "fraction": 0.5, "device": "cpu", "workers": 0, "plots": False, "warmup_epochs": 0.0, "mosaic": 0.0,
            "threads": 1, **changes}


def test_sigterm_mid_study_stops_every_ray_process_it_started(tmp_path: Path, shapes_yaml: Path) -> None:
    import psutil

    study = {"name": "sig", "output_dir": str(tmp_path / "out"), "train": _train(shapes_yaml, epochs=20),
             "search_space": {"lr0": {"grid": [0.01, 0.02]}}, "search": "grid", "trial_scheduler": "fifo",
             "num_samples": 1, "max_concurrent_trials": 1, "tracking": False, "resources_per_trial": {"cpu": 1}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    env = _env(tmp_path)
    proc = subprocess.Popen([DETUNE, "tune", str(tmp_path / "study.yaml")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    experiment = tmp_path / "out" / "ray" / "sig"
    try:
        def reported() -> bool:  # a trial has trained and reported an epoch: its worker is busy
            return any(f.stat().st_size > 0 for f in experiment.glob("*/result.json"))

        _wait_for(reported, "reported epoch", proc)
        started = _same_session(env["RAY_TMPDIR"])
        names = {p.name() for p in started}
        assert {"raylet", "gcs_server"} <= names and any(n.startswith("ray::") for n in names), names
        proc.send_signal(signal.SIGTERM)  # what `timeout` does: to the driver only, not its group
        _, err = proc.communicate(timeout=120)
        text = err.decode()
        assert proc.returncode == 143, text[-3000:]
        assert "terminated (SIGTERM)" in text and "--resume" in text and "Traceback" not in text, text[-3000:]
        _, alive = psutil.wait_procs(started, timeout=20)
        left = [p for p in _same_session(env["RAY_TMPDIR"]) if p.pid != os.getpid()]
        assert not alive and not left, [(p.pid, p.name()) for p in alive + left]
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill(_same_session(env["RAY_TMPDIR"]))  # by PID, only what this test started


def test_sigterm_mid_training_moves_its_log_and_leaves_no_temp_log(tmp_path: Path, shapes_yaml: Path) -> None:
    project = tmp_path / "runs"
    args = [f"{k}={v}" for k, v in _train(shapes_yaml, epochs=50, project=str(project), name="sig").items()]
    proc = subprocess.Popen([DETUNE, "train", *args], env=_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(lambda: (project / "sig" / "results.csv").is_file(), "first epoch", proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err.decode()
    assert proc.returncode == 143, text[-3000:]
    assert "terminated (SIGTERM)" in text and "Traceback" not in text, text[-3000:]
    assert not list(project.glob(".detune-*.log")), list(project.iterdir())
    assert (project / "sig" / "detune.log").is_file()


def test_cli_restores_the_sigterm_handler_it_installs() -> None:
    from typer.testing import CliRunner

    from detune.cli import app

    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    result = CliRunner().invoke(app, ["data", "check", "/nonexistent/data.yaml"])
    assert result.exit_code == 1
    assert signal.getsignal(signal.SIGTERM) == before  # nothing leaks into the calling process
