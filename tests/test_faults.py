"""The fault matrix (README "What happens when"): each row a test that fails if the behaviour regresses."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detune import _fake, study_files
from detune.errors import ConfigError, TrackingError, TuneError
from detune.tuning import tune

pytestmark = pytest.mark.slow


def _study(tmp_path: Path, shapes_yaml: Path, **changes) -> dict:
    base = {
        "name": "f", "output_dir": str(tmp_path / "out"),
        "train": {"data": str(shapes_yaml), "epochs": 3, "device": "cpu", "imgsz": 32, "warmup_epochs": 0.0},
        "search_space": {"lr0": {"grid": [0.01, 0.7, 2.0]}}, "search": "grid", "trial_scheduler": "fifo",
        "num_samples": 1, "max_concurrent_trials": 2, "resources_per_trial": {"cpu": 1},
        "tracking": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    return {**base, **changes}


def _runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_unknown_search_and_trial_scheduler_fail_before_compute(tmp_path: Path, shapes_yaml: Path) -> None:
    with pytest.raises(ConfigError, match=r"search \('tpe'\) must be one of random, grid, optuna"):
        tune(_study(tmp_path, shapes_yaml, search="tpe"))
    with pytest.raises(ConfigError, match=r"trial_scheduler \('pbt2'\)"):
        tune(_study(tmp_path, shapes_yaml, trial_scheduler="pbt2"))
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("local_ray")
def test_diverged_and_failed_trials_are_tagged_in_mlflow_and_the_study_goes_on(tmp_path: Path,
                                                                             shapes_yaml: Path) -> None:
    result = tune(_study(tmp_path, shapes_yaml), fit=_fake.fit)
    statuses = sorted(t["status"] for t in result.trials)
    assert statuses == ["completed", "diverged", "failed"]
    children = [r for r in _runs(f"sqlite:///{tmp_path / 'mlflow.db'}") if "mlflow.parentRunId" in r.data.tags]
    by_status = {r.data.tags.get("detune.status"): r for r in children}
    assert by_status["diverged"].info.status == "FINISHED" and "nan" in by_status["diverged"].data.tags[
        "detune.reason"]
    assert by_status["failed"].info.status == "FAILED" and "out of memory" in by_status["failed"].data.tags[
        "detune.reason"]
    assert by_status["completed"].info.status == "FINISHED"


@pytest.mark.usefixtures("local_ray")
def test_eight_concurrent_trials_lose_no_metric_point(tmp_path: Path, shapes_yaml: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The default local store (sqlite in the working directory) with 8 trials logging at once."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = _study(tmp_path, shapes_yaml, tracking=True, num_samples=8, max_concurrent_trials=8,
                   search="random", search_space={"lr0": {"loguniform": [1e-3, 1e-1]}},
                   resources_per_trial={"cpu": 0.25}, train={"data": str(shapes_yaml), "epochs": 4,
                                                              "device": "cpu", "imgsz": 32, "warmup_epochs": 0.0})
    result = tune(study, fit=_fake.fit)
    assert [t["status"] for t in result.trials] == ["completed"] * 8
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    children = [r for r in _runs(uri) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 8
    for child in children:
        for key in ("metrics/mAP50-95", "train/box_loss", "lr/pg0", "fitness"):
            assert [p.step for p in client.get_metric_history(child.info.run_id, key)] == [1, 2, 3, 4]
        assert len(client.get_metric_history(child.info.run_id, "lr_step/pg0")) == 4 * _fake.STEPS_PER_EPOCH


def test_tracking_server_down_at_start_fails_before_ray(tmp_path: Path, shapes_yaml: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.time()
    with pytest.raises(TrackingError, match=f"127.0.0.1:{port}"):
        tune(_study(tmp_path, shapes_yaml, tracking=f"http://127.0.0.1:{port}"), fit=_fake.fit)
    assert time.time() - started < 30
    assert not (tmp_path / "out" / "ray").exists()


def test_unwritable_output_dir_is_a_clear_error(tmp_path: Path, shapes_yaml: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TuneError, match=r"output_dir .* cannot be created"):
        tune(_study(tmp_path, shapes_yaml, output_dir=str(blocker / "out")), fit=_fake.fit)


def test_disk_full_leaves_no_partial_best_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "best.yaml"
    real_write = Path.write_text

    def full(self: Path, text: str, *args, **kwargs):
        real_write(self, text[: len(text) // 2])  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(TuneError, match=r"could not write .*best.yaml: No space left on device"):
        study_files.write_atomic(target, "model: yolo11n.yaml\n" * 10)
    monkeypatch.undo()
    assert not target.exists() and list(tmp_path.iterdir()) == []


# ---- untrusted checkpoints ------------------------------------------------------------------------------

class _Payload:
    """Unpickling this runs code (it creates ``marker``): what a hostile ``.pt`` file can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return open, (self.marker, "w")


def _plant(path: Path, marker: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Payload(marker), "epoch": 0}, path)
    return path


def test_checkpoints_detune_did_not_write_are_never_loaded(tmp_path: Path, tiny: dict) -> None:
    import hashlib
    import json

    from detune.adapters.base import STATE_FILE
    from detune.config import from_dict
    from detune.errors import AdapterError
    from detune.training import run

    marker = tmp_path / "code-ran"
    evil = _plant(tmp_path / "elsewhere" / "last.pt", marker)
    cfg = from_dict(tiny)
    # a resume source without detune's state file beside it is refused before anything is unpickled
    with pytest.raises(AdapterError, match=r"not a checkpoint detune wrote.*state file"):
        run(cfg, resume_from=evil)
    # ... and so is one whose content is not what detune recorded when it saved it
    (evil.parent / STATE_FILE).write_text(json.dumps({"step": 4, "epoch": 0, "last_sha256": "0" * 64}))
    with pytest.raises(AdapterError, match=r"not a checkpoint detune wrote.*checksum"):
        run(cfg, resume_from=evil)
    assert not marker.exists()
    # hostile last.pt / best.pt left in the run folder are overwritten, never loaded, even with exist_ok
    weights = Path(tiny["project"]) / tiny["name"] / "weights"
    _plant(weights / "last.pt", marker), _plant(weights / "best.pt", marker)
    kept = tmp_path / "kept"

    class KeepCheckpoint:  # what a study trial does at each epoch end: copy last.pt and the state file
        def on_epoch(self, record: dict, weights_dir: Path) -> None:
            shutil.copytree(weights_dir, kept, dirs_exist_ok=True)

    first = run(from_dict({**tiny, "epochs": 1, "exist_ok": True}), observers=[KeepCheckpoint()])
    assert first.status == "completed", first.reason
    assert not marker.exists()
    # the checkpoints detune did write carry their checksum, and resume
    state = json.loads((kept / STATE_FILE).read_text())
    assert state["last_sha256"] == hashlib.sha256((kept / "last.pt").read_bytes()).hexdigest()
    assert "plateau" not in state  # a closed-form schedule learns nothing: no empty plateau state stored
    resumed = run(from_dict({**tiny, "name": "resumed"}), resume_from=kept / "last.pt")
    assert resumed.status == "completed", resumed.reason
    assert [h["epoch"] for h in resumed.history] == [2] and resumed.info["start_epoch"] == 1
    assert not marker.exists()


# ---- the MLflow UI ------------------------------------------------------------------------------------------

def test_detune_ui_serves_the_store_on_loopback_only(tmp_path: Path) -> None:
    import json
    import socket
    import urllib.request

    import psutil

    store = tmp_path / "mlflow.db"
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{store}").create_experiment("seen-in-ui")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = [str(Path(sys.executable).with_name("detune")), "ui", "--uri", f"sqlite:///{store}", "--port", str(port)]
    proc = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search"
                                            "?max_results=10", timeout=2) as r:
                    names = {e["name"] for e in json.loads(r.read())["experiments"]}
                    break
            except OSError:
                assert time.monotonic() < deadline, "detune ui did not answer in 120 s"
                time.sleep(0.5)
        assert "seen-in-ui" in names
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        listening = {c.laddr for p in tree for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}, listening
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    text = out.decode()
    assert f"http://127.0.0.1:{port}" in text and "Traceback" not in text, text
    assert proc.returncode in (0, 130), text


def test_detune_ui_refuses_a_missing_store_and_warns_off_loopback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from detune.cli import app

    result = CliRunner().invoke(app, ["ui", "--uri", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 1 and "none.db" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["ui", "--uri", "http://127.0.0.1:5000"])
    assert result.exit_code == 1 and "not a local store" in result.output
    import socket

    from detune.ui import ui_command

    with socket.socket() as s:  # a port free on every interface, so the check that it is free passes
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
    store = tmp_path / "mlflow.db"
    store.touch()
    exposed = ui_command(f"sqlite:///{store}", host="0.0.0.0", port=port)
    assert exposed.cmd[exposed.cmd.index("--host") + 1] == "0.0.0.0" and "no login" in exposed.warning
    local = ui_command(f"sqlite:///{store}", port=port)
    assert local.cmd[local.cmd.index("--host") + 1] == "127.0.0.1" and local.warning is None
    assert local.url == f"http://127.0.0.1:{port}" and local.env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    with socket.socket() as taken:  # a port in use: an error naming it and the fix, before any server starts
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(TrackingError, match=rf"127.0.0.1:{busy}.*--port"):
            ui_command(f"sqlite:///{store}", port=busy)
