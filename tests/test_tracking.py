"""MLflow tracking: config forms and key rules (fast), a RunLogger driven by hand-made events against a sqlite
store, and real trainings logged to a real ``mlflow server`` and to the embedded default store (slow)."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detune import tracking
from detune.config import TrainConfig, load_config
from detune.errors import ConfigError, TrackingError
from detune.tracking import RunLogger, TrackingConfig, sanitize_key
from detune.tracking_config import resolve_tracking
from detune.training import TrainResult, resolved_config

SECRET = "sk-fake-123"
# One torch thread: on 2 shared cores, 2 threads next to another busy process run ~5x slower (spin-waiting).
LEAN = {"threads": 1, "lr0": 0.02, "scheduler": "constant"}


# ---- helpers ------------------------------------------------------------------------------------------
def client_for(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def steps_of(client: Any, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def artifact_paths(client: Any, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- resolve_tracking and sanitize_key -----------------------------------------------------------------
def test_resolve_tracking_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking(False) is None and resolve_tracking(None) is None
    default = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="detune")
    assert resolve_tracking(True) == default
    assert resolve_tracking("sqlite:///sub/x.db").uri == f"sqlite:///{tmp_path}/sub/x.db"
    assert resolve_tracking("sqlite:////abs/x.db").uri == "sqlite:////abs/x.db"
    assert resolve_tracking("runs/m.db").uri == f"sqlite:///{tmp_path}/runs/m.db"
    assert resolve_tracking("file:./mlruns").uri == (tmp_path / "mlruns").as_uri()
    assert resolve_tracking("http://127.0.0.1:5000/", default_experiment="s").uri == "http://127.0.0.1:5000"
    assert resolve_tracking("http://h:1", default_experiment="study").experiment == "study"
    mapped = resolve_tracking({"experiment": "e", "run_name": "r", "tags": {"team": 1}, "flush_timeout": 2})
    assert mapped == TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="e", run_name="r",
                                    tags={"team": "1"}, flush_timeout=2)
    assert resolve_tracking(mapped) is mapped
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")  # the standard variable, made absolute
    assert resolve_tracking(True).uri == f"sqlite:///{tmp_path}/env.db"
    assert resolve_tracking({"experiment": "x"}).uri == f"sqlite:///{tmp_path}/env.db"


@pytest.mark.parametrize(("value", "match"), [
    (42, r"tracking \(42\) must be false, true"),
    ("", r"tracking \(''\) must be"),
    ({"urii": "x"}, r"tracking.urii is not a tracking setting; did you mean uri\?"),
    ({"experiment": ""}, None),  # empty -> default experiment, valid
    ({"flush_timeout": -1}, r"flush_timeout \(-1\) must be a number of seconds >= 0"),
])
def test_resolve_tracking_rejects_bad_values(value: Any, match: str | None) -> None:
    if match is None:
        assert resolve_tracking(value).experiment == "detune"
        return
    with pytest.raises(ConfigError, match=match):
        resolve_tracking(value)


@pytest.mark.parametrize(("key", "expected"), [
    ("metrics/mAP50-95(B)", "metrics/mAP50-95_B_"),
    ("train/box_loss", "train/box_loss"),
    ("scheduler_params.gamma", "scheduler_params.gamma"),
    ("/lead//double/", "lead/double"),
    ("../up/./x", "._/up/x"),
    ("a..b", "a._b"),
    ("we!rd key:ok", "we_rd key:ok"),
    ("", "_"),
    ("x" * 300, "x" * 250),
])
def test_sanitize_key_meets_mlflow_rules(key: str, expected: str) -> None:
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name

    assert sanitize_key(key) == expected
    _validate_metric_name(expected)
    _validate_param_name(expected)


def test_redact_and_flatten() -> None:
    assert tracking.redact("https://me:pw@host:8080/x") == "https://me:***@host:8080/x"
    assert tracking.redact("http://host:1") == "http://host:1"
    flat = tracking.flatten_params({"scheduler_params": {"gamma": 0.5, "milestones": [1, 2]}, "lr_mult": {},
                                    "metrics/x(B)": None})
    assert flat == {"scheduler_params.gamma": "0.5", "scheduler_params.milestones": "[1, 2]", "lr_mult": "{}",
                    "metrics/x_B_": "None"}


# ---- a RunLogger driven by hand against a local sqlite store -------------------------------------------
@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module (a fresh MLflow DB costs seconds); tests use their own experiments."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    tracking.prepare_store(TrackingConfig(uri=uri, experiment="warmup"))
    return uri


def fake_run_dir(tmp_path: Path) -> Path:
    save = tmp_path / "run"
    (save / "weights").mkdir(parents=True)
    (save / "weights" / "best.pt").write_bytes(b"weights")
    (save / "results.csv").write_text("epoch,metrics/mAP50-95(B)\n1,0.1\n2,0.2\n")
    (save / "results.png").write_bytes(b"png")
    (save / "lr_schedule.png").write_bytes(b"png")
    return save


def drive(logger: RunLogger, save: Path, *, epochs: int = 2, steps_per_epoch: int = 3,
          ) -> list[dict[str, float]]:
    """Replay what the adapter emits: on_start, on_step per optimizer step, on_epoch per epoch."""
    logger.on_start({"save_dir": str(save), "device": "cpu", "steps_per_epoch": steps_per_epoch})
    history = []
    for epoch in range(epochs):
        for k in range(steps_per_epoch):
            step = epoch * steps_per_epoch + k
            logger.on_step(step, epoch, [0.01 - 0.001 * step, 0.01, 0.1])
        record = {"epoch": epoch + 1, "train/box_loss": 3.0 - epoch, "metrics/mAP50-95": 0.1 * (epoch + 1),
                  "fitness": math.nan if epoch == 0 else 0.2, "lr/pg0": 0.01, "epoch_time": 1.5}
        history.append(record)
        logger.on_epoch(dict(record), save / "weights")
    return history


def result_for(save: Path, history: list[dict[str, float]], cfg: TrainConfig, status: str = "completed",
               reason: str | None = None) -> TrainResult:
    return TrainResult(status=status, history=history, config=resolved_config(cfg), save_dir=save,
                       weights={"best": save / "weights" / "best.pt"}, reason=reason)


def new_logger(uri: str, experiment: str, cfg: TrainConfig, **changes: Any) -> RunLogger:
    tcfg = TrackingConfig(uri=uri, experiment=experiment, **changes)
    dataset = {"data.yaml": "/data/x.yaml", "data.nc": 3}
    return tracking.open_training_run(tcfg, config=resolved_config(cfg), dataset=dataset,
                                      effective_lr0=cfg.effective_lr0)


def test_run_logger_logs_params_curves_artifacts_and_status(tmp_path: Path, sqlite_uri: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_API_TOKEN", SECRET)
    cfg = TrainConfig(epochs=2, imgsz=64, warmup_epochs=0.0, lr0=0.02, scheduler="step",
                      scheduler_params={"step_size": 1, "gamma": 0.5}, lr_mult={"backbone": 0.1},
                      tracking=f"https://me:{SECRET}@example.com")
    logger = new_logger(sqlite_uri, "hand", cfg)
    save = fake_run_dir(tmp_path)
    history = drive(logger, save)
    report = logger.finish(result_for(save, history, cfg))
    assert report["unlogged_points"] == 0 and report["status"] == "FINISHED" and report["status_set"], report
    assert report["logged_points"] == 2 * 3 * 3 + 2 * 5 and report["unlogged_file"] is None

    client = client_for(sqlite_uri)
    run = client.get_run(logger.run_id)
    params, tags = run.data.params, run.data.tags
    assert run.info.status == "FINISHED" and tags["detune.status"] == "completed"
    assert params["lr0"] == "0.02" and params["scheduler"] == "step"
    assert params["scheduler_params.gamma"] == "0.5" and params["scheduler_params.step_size"] == "1"
    assert params["lr_mult.backbone"] == "0.1" and params["effective_lr0"] == "0.02"
    assert params["data.yaml"] == "/data/x.yaml" and params["epochs"] == "2" and params["imgsz"] == "64"
    assert "tracking" not in params and tags["detune.device"] == "cpu" and tags["detune.kind"] == "train"
    assert {f"version.{p}" for p in ("detune", "mlflow", "torch", "ultralytics", "ray")} <= set(tags)
    # no environment variable (nor the tracking URI's password) anywhere in params or tags
    assert not any(SECRET in v or "MY_API_TOKEN" in k for k, v in {**params, **tags}.items())
    # per-epoch metrics at step = epoch (1-based), lr curve at every optimizer step (0-based)
    assert steps_of(client, logger.run_id, "metrics/mAP50-95") == [1, 2]
    assert steps_of(client, logger.run_id, "epoch_time") == [1, 2]
    assert math.isnan(client.get_metric_history(logger.run_id, "fitness")[0].value)
    assert steps_of(client, logger.run_id, "lr_step/pg0") == list(range(6))
    assert "epoch" not in run.data.metrics
    assert artifact_paths(client, logger.run_id) == {"weights/best.pt", "results.csv", "config.yaml",
                                                     "lr_schedule.png", "plots/results.png"}
    config_file = Path(client.download_artifacts(logger.run_id, "config.yaml", str(tmp_path / "dl")))
    assert SECRET not in config_file.read_text()
    again = load_config(config_file)  # re-runnable: detune.train(config.yaml) accepts it
    assert again.lr0 == 0.02 and again.scheduler_params == {"step_size": 1, "gamma": 0.5}


@pytest.mark.parametrize(("status", "reason", "mlflow_status"), [
    ("diverged", "smoothed loss 40 exceeded 10 x its minimum 4 at epoch 2, step 5", "FINISHED"),
    ("failed", "RuntimeError: out of memory", "FAILED"),
])
def test_diverged_and_failed_runs_carry_status_and_reason(tmp_path: Path, sqlite_uri: str, status: str,
                                                          reason: str, mlflow_status: str) -> None:
    cfg = TrainConfig(epochs=2, imgsz=64, warmup_epochs=0.0)
    logger = new_logger(sqlite_uri, "status", cfg)
    save = fake_run_dir(tmp_path)
    logger.finish(result_for(save, drive(logger, save, epochs=1), cfg, status=status, reason=reason))
    run = client_for(sqlite_uri).get_run(logger.run_id)
    assert run.info.status == mlflow_status
    assert run.data.tags["detune.status"] == status and run.data.tags["detune.reason"] == reason


def test_keyboard_interrupt_marks_run_killed(tmp_path: Path, sqlite_uri: str) -> None:
    logger = new_logger(sqlite_uri, "status", TrainConfig(epochs=2, imgsz=64, warmup_epochs=0.0))
    drive(logger, fake_run_dir(tmp_path), epochs=1)
    report = logger.abort(KeyboardInterrupt())
    run = client_for(sqlite_uri).get_run(logger.run_id)
    assert report["status"] == run.info.status == "KILLED" and run.data.tags["detune.status"] == "killed"
    assert "results.csv" in artifact_paths(client_for(sqlite_uri), logger.run_id)


class FlakyClient:
    """Delegates to a real MlflowClient; every write raises ConnectionError while ``down``."""

    def __init__(self, real: Any) -> None:
        self.real, self.down, self.calls = real, True, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name not in ("log_batch", "log_artifact", "log_artifacts", "set_terminated"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.down:
                raise ConnectionError("Connection refused (simulated)")
            return attr(*args, **kwargs)
        return call


def test_store_down_buffers_then_reports_then_flush_unlogged_sends(tmp_path: Path, sqlite_uri: str) -> None:
    cfg = TrainConfig(epochs=2, imgsz=64, warmup_epochs=0.0)
    logger = new_logger(sqlite_uri, "flaky", cfg, flush_timeout=0.5)
    flaky = logger.client = FlakyClient(logger.client)
    save = fake_run_dir(tmp_path)
    start = time.monotonic()
    history = drive(logger, save)  # must neither raise nor wait for the store
    assert time.monotonic() - start < 2
    assert flaky.calls == 1  # one try at on_start, then backoff: the epoch ends do not retry yet
    report = logger.finish(result_for(save, history, cfg))
    assert report["unlogged_points"] == 28 and report["status_set"] is False
    assert report["local_copy"] == str(save / "results.csv") and "ConnectionError" in report["errors"][-1]
    assert len(report["unlogged_artifacts"]) == 5 and Path(report["unlogged_file"]).is_file()

    flaky.down = False  # the store is back: replay what was kept
    assert tracking.flush_unlogged(report["unlogged_file"]) == 28
    client = client_for(sqlite_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["detune.status"] == "completed"
    assert steps_of(client, logger.run_id, "train/box_loss") == [1, 2]
    assert steps_of(client, logger.run_id, "lr_step/pg2") == list(range(6))
    assert not Path(report["unlogged_file"]).exists()


def test_store_back_before_finish_flushes_everything(tmp_path: Path, sqlite_uri: str) -> None:
    cfg = TrainConfig(epochs=2, imgsz=64, warmup_epochs=0.0)
    logger = new_logger(sqlite_uri, "flaky", cfg, flush_timeout=10)
    flaky = logger.client = FlakyClient(logger.client)
    save = fake_run_dir(tmp_path)
    history = drive(logger, save)
    flaky.down = False
    report = logger.finish(result_for(save, history, cfg))
    assert report["unlogged_points"] == 0 and report["unlogged_artifacts"] == [] and report["status_set"]
    assert steps_of(client_for(sqlite_uri), logger.run_id, "metrics/mAP50-95") == [1, 2]


def test_nested_study_runs_and_trial_lookup(tmp_path: Path, sqlite_uri: str) -> None:
    study = TrackingConfig(uri=sqlite_uri, experiment="study")
    parent = tracking.start_study_run(study, name="lr-search",
                                      params={"space": {"lr0": "loguniform"}, "trials": 4})
    cfg = TrainConfig(epochs=2, imgsz=64, warmup_epochs=0.0)
    child = new_logger(sqlite_uri, "study", cfg, parent_run_id=parent, tags={"detune.trial_id": "t_001"})
    assert tracking.find_trial_run(study, parent_run_id=parent, trial_id="t_001") == child.run_id
    assert tracking.find_trial_run(study, parent_run_id=parent, trial_id="t_002") is None
    other = study.replace(experiment="nope")
    assert tracking.find_trial_run(other, parent_run_id=parent, trial_id="t_001") is None
    # resume: the trial's run is reopened (params re-logged without conflict), not duplicated
    resumed = new_logger(sqlite_uri, "study", cfg, parent_run_id=parent, run_id=child.run_id,
                         tags={"detune.trial_id": "t_001"})
    save = fake_run_dir(tmp_path)
    resumed.finish(result_for(save, drive(resumed, save), cfg))
    tracking.finish_run(study, parent, status="completed", metrics={"best/mAP50-95": 0.2},
                        tags={"detune.best_trial": "t_001"}, artifacts=[save / "results.csv"])
    client = client_for(sqlite_uri)
    runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted([parent, child.run_id])
    child_run, parent_run = client.get_run(child.run_id), client.get_run(parent)
    assert child_run.data.tags["mlflow.parentRunId"] == parent and child_run.info.status == "FINISHED"
    assert parent_run.info.run_name == "lr-search" and parent_run.data.params["space.lr0"] == "loguniform"
    assert parent_run.data.tags["detune.kind"] == "study" and parent_run.info.status == "FINISHED"
    assert parent_run.data.metrics["best/mAP50-95"] == 0.2 and "results.csv" in artifact_paths(client, parent)


def test_stopped_trial_is_closed_and_extra_metrics_are_logged(tmp_path: Path, sqlite_uri: str) -> None:
    study = TrackingConfig(uri=sqlite_uri, experiment="stopped")
    parent = tracking.start_study_run(study, name="asha", params={})
    cfg = TrainConfig(epochs=2, imgsz=64, warmup_epochs=0.0)
    stopped = new_logger(sqlite_uri, "stopped", cfg, parent_run_id=parent, tags={"detune.trial_id": "t1"})
    drive(stopped, fake_run_dir(tmp_path / "a"), epochs=1)  # killed by the scheduler: no finish()
    done = new_logger(sqlite_uri, "stopped", cfg, parent_run_id=parent, tags={"detune.trial_id": "t2"})
    done.log_metrics({"lr_finder/loss": 2.5, "odd(key)": 1.0}, step=7)
    save = fake_run_dir(tmp_path / "b")
    done.finish(result_for(save, drive(done, save), cfg))

    assert tracking.close_stopped_trial(study, parent_run_id=parent, trial_id="t1") == stopped.run_id
    assert tracking.close_stopped_trial(study, parent_run_id=parent, trial_id="t2") is None  # closed itself
    assert tracking.close_stopped_trial(study, parent_run_id=parent, trial_id="t3") is None
    client = client_for(sqlite_uri)
    closed = client.get_run(stopped.run_id)
    assert closed.info.status == "FINISHED" and closed.data.tags["detune.status"] == "stopped"
    assert steps_of(client, stopped.run_id, "metrics/mAP50-95") == [1]  # sent at epoch end, before the kill
    assert client.get_run(done.run_id).data.tags["detune.status"] == "completed"
    assert steps_of(client, done.run_id, "lr_finder/loss") == steps_of(client, done.run_id, "odd_key_") == [7]


def test_unreachable_server_fails_fast_with_fix(tiny: dict) -> None:
    """A closed port: TrackingError before any training (no run folder), in well under 15 s."""
    import detune

    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError, match=rf"{url} is not reachable .*set tracking: false"):
        detune.train(**tiny, tracking=url)
    assert time.monotonic() - start < 15
    assert not Path(tiny["project"]).exists()
    with pytest.raises(TrackingError, match="could not finish run"):
        tracking.finish_run(TrackingConfig(uri=url, flush_timeout=0.2), "0" * 32, status="FINISHED")


class Interrupter:
    """Presses Ctrl-C at the end of epoch 1 (after the tracker logged it)."""

    def on_epoch(self, record: dict[str, float], weights_dir: Path) -> None:
        raise KeyboardInterrupt


@pytest.mark.slow
def test_interrupted_training_ends_run_killed(tiny: dict, sqlite_uri: str) -> None:
    from detune.training import run

    tcfg = TrackingConfig(uri=sqlite_uri, experiment="interrupt")
    with pytest.raises(KeyboardInterrupt):
        run(load_config({**tiny, **LEAN}), observers=[Interrupter()], tracking=tcfg)
    client = client_for(sqlite_uri)
    [killed] = client.search_runs([client.get_experiment_by_name("interrupt").experiment_id])
    assert killed.info.status == "KILLED" and killed.data.tags["detune.status"] == "killed"
    assert steps_of(client, killed.info.run_id, "metrics/mAP50-95") == [1]
    assert killed.data.tags["detune.advice"]  # the epoch it ran is diagnosed (the curves leave with the Ctrl-C)


# ---- real trainings (slow) -----------------------------------------------------------------------------
class MlflowServer:
    """A lean ``mlflow server`` (1 worker, no job runner) on 127.0.0.1 with a sqlite backend under tmp."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
               "--artifacts-destination", str(self.root / "artifacts")]
        with open(self.root / "server.log", "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def wait(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError((self.root / "server.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"mlflow server did not answer /health in {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        server.wait()
        yield server
    finally:
        server.stop()


def assert_training_logged(client: Any, result: TrainResult, epochs: int = 2) -> None:
    """The acceptance checks shared by the server and the embedded store."""
    assert result.status == "completed", result.reason
    report = result.info["tracking"]
    assert report["unlogged_points"] == 0 and report["unlogged_artifacts"] == [], report
    assert report["status_set"] and report["unlogged_file"] is None, report
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lr0"] == "0.02" and run.data.params["scheduler"] == "constant"
    assert run.data.params["data.train_images"] == "32" and run.data.tags["detune.device"] == "cpu"
    # exactly one point per epoch for every canonical key: Ultralytics' own MLflow callback did not log too
    for key in ("metrics/mAP50-95", "train/box_loss", "val/box_loss", "fitness", "lr/pg0", "epoch_time"):
        assert steps_of(client, result.run_id, key) == list(range(1, epochs + 1)), key
    assert steps_of(client, result.run_id, "lr_step/pg0") == [int(s["step"]) for s in result.steps]
    assert len(result.steps) == epochs * 4  # 32 images / batch 8, nbs 8: 4 optimizer steps per epoch
    expected = {"weights/best.pt", "config.yaml", "results.csv"}
    expected |= {"lr_schedule.png"} if result.config["plots"] else set()
    assert expected <= artifact_paths(client, result.run_id)


@pytest.mark.slow
def test_training_logged_to_real_server(tiny: dict, mlflow_server: MlflowServer,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import detune

    monkeypatch.setenv("MY_API_TOKEN", SECRET)
    # Were Ultralytics' MLflow callback alive it would log here too, into its own experiment.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    result = detune.train(**{**tiny, **LEAN, "plots": True}, tracking={"uri": mlflow_server.url,
                                                                      "experiment": "http"})
    client = client_for(mlflow_server.url)
    assert_training_logged(client, result)
    artifacts = artifact_paths(client, result.run_id)
    assert any(p.startswith("plots/") and p.endswith(".png") for p in artifacts), artifacts
    run = client.get_run(result.run_id)
    logged = {**run.data.params, **run.data.tags}
    assert not any(SECRET in v or "MY_API_TOKEN" in k for k, v in logged.items())
    names = {e.name for e in client.search_experiments()}
    assert names <= {"Default", "http", "server-down"}, names
    assert client.search_runs(["0"]) == []  # nothing in the Default experiment


@pytest.mark.slow
def test_training_logged_to_default_embedded_store(tiny: dict, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import detune

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = detune.train(**{**tiny, **LEAN}, tracking=True)
    assert result.info["tracking"]["uri"] == f"sqlite:///{work}/mlflow.db"
    assert (work / "mlflow.db").is_file() and (work / "mlruns").is_dir()
    assert_training_logged(client_for(f"sqlite:///{work}/mlflow.db"), result)
    assert "mlflow.source.git.commit" not in client_for(f"sqlite:///{work}/mlflow.db").get_run(
        result.run_id).data.tags  # the working directory is not a git repository


class ServerKiller:
    """Stops the server after epoch 1 (after the tracker logged it) and restarts it after epoch 2 (after the
    tracker failed to log that one), so epoch 2 and its steps must be buffered and flushed at the end."""

    def __init__(self, server: MlflowServer) -> None:
        self.server = server

    def on_epoch(self, record: dict[str, float], weights_dir: Path) -> None:
        if record["epoch"] == 1:
            self.server.stop()
        elif record["epoch"] == 2:
            self.server.start()


@pytest.mark.slow
def test_server_stopped_mid_training_points_are_flushed_when_back(tiny: dict,
                                                                  mlflow_server: MlflowServer) -> None:
    from detune.config import load_config as load
    from detune.training import run

    cfg = load({**tiny, **LEAN})
    tcfg = TrackingConfig(uri=mlflow_server.url, experiment="server-down", flush_timeout=120)
    try:
        result = run(cfg, observers=[ServerKiller(mlflow_server)], tracking=tcfg)
    finally:
        if mlflow_server.proc is None:
            mlflow_server.start()
        mlflow_server.wait()
    assert result.status == "completed", result.reason
    report = result.info["tracking"]
    assert report["errors"], report  # logging did fail during epoch 2
    assert_training_logged(client_for(mlflow_server.url), result)


# ---- the edges: defaults, bad stores, the environment, long names, concurrent creation ------------------
def test_train_tracking_is_auto_on_with_mlflow_tracking_uri(tmp_path: Path, shapes_yaml: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """detune.train's default follows MLFLOW_TRACKING_URI (a real run there when it is set, nothing when it
    is not); a study keeps its own default (true) and its trials do not follow the variable on their own."""
    from detune import _fake
    from detune._progress import train_summary
    from detune.study import load_study
    from detune.training import run

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = {"data": str(shapes_yaml), "epochs": 2, "project": str(tmp_path / "runs"), "warmup_epochs": 0.0,
            "nbs": 16}
    assert TrainConfig().tracking == "auto" and resolve_tracking("auto") is None
    off = run(load_config(None, **base, name="off"), fit=_fake.fit)
    assert off.status == "completed" and off.run_id is None and not (tmp_path / "mlflow.db").exists()
    study = load_study({"search_space": {"lr0": {"choice": [0.01]}}})
    assert study.tracking is True and study.train.tracking is False

    store = tmp_path / "env" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env/mlflow.db")
    auto = resolve_tracking("auto")
    assert auto is not None and auto.uri == f"sqlite:///{store}" and auto.origin == "MLFLOW_TRACKING_URI"
    on = run(load_config(None, **base, name="on"), fit=_fake.fit)
    assert on.status == "completed" and on.run_id is not None
    logged = client_for(f"sqlite:///{store}").get_run(on.run_id)
    assert logged.info.status == "FINISHED" and logged.data.params["epochs"] == "2"
    assert steps_of(client_for(f"sqlite:///{store}"), on.run_id, "metrics/mAP50-95") == [1, 2]
    assert load_config(None, **base, tracking=False).tracking is False  # an explicit false still wins
    _, lines = train_summary(on, None)
    link = next(line for line in lines if line.startswith("MLflow run:"))
    assert f"detune ui --uri sqlite:///{store} --experiment detune" in link
    assert "workflowType=machine_learning" in link, link


def test_sqlite_uri_on_a_folder_fails_within_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow retries a sqlite URI that names a folder for 100 s and more: detune refuses it at once, saying
    which value and, for the environment variable, where it came from."""
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for value, env in (("sqlite:///runs", None), (True, "sqlite:///")):
        if env is not None:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
        cfg = resolve_tracking(value)
        start = time.monotonic()
        for step in (tracking.check_reachable, tracking.prepare_store):
            with pytest.raises(TrackingError, match=r"is a folder, but a sqlite URI names the database file; "
                                                    r"use e\.g\. sqlite:///.*mlflow\.db") as caught:
                step(cfg)
            assert ("from MLFLOW_TRACKING_URI" in str(caught.value)) == (env is not None), caught.value
        assert time.monotonic() - start < 10


def test_named_stores_pass_through_and_fail_naming_the_environment(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """MLFLOW_TRACKING_URI=databricks is MLflow's Databricks store, not a folder ./databricks: it reaches MLflow
    as it is, and without a workspace the error names the value and the variable it came from."""
    monkeypatch.chdir(tmp_path)
    for name in ("databricks", "databricks-uc", "uc"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", name)
        cfg = resolve_tracking(True)
        assert cfg.uri == name and cfg.origin == "MLFLOW_TRACKING_URI"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "none.cfg"))  # no workspace, whatever ~ holds
    monkeypatch.setenv("HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"databricks \(from MLFLOW_TRACKING_URI\)") as caught:
        tracking.check_reachable(resolve_tracking(True))
    assert time.monotonic() - start < 60
    assert "file:" not in str(caught.value) and not (tmp_path / "databricks").exists()


def test_long_experiment_names_are_refused_and_never_echoed_whole() -> None:
    long = "e" * 600
    with pytest.raises(ConfigError, match=r"600 characters\) is longer than MLflow's limit of 500") as caught:
        resolve_tracking({"uri": "sqlite:////tmp/x.db", "experiment": long})
    assert long not in str(caught.value) and len(str(caught.value)) < 250
    assert resolve_tracking({"uri": "sqlite:////tmp/x.db", "experiment": "e" * 500}).experiment == "e" * 500
    with pytest.raises(ConfigError) as caught:
        resolve_tracking(["x" * 700])
    assert "x" * 100 not in str(caught.value)


_CREATE = """
import sys, time
from detune import tracking
from detune.tracking_config import TrackingConfig
import mlflow.tracking  # imported before the barrier, so both processes open the store at the same instant
from pathlib import Path
barrier = Path(sys.argv[2])
(barrier / sys.argv[3]).touch()
deadline = time.time() + 300
while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
    time.sleep(0.005)
print(tracking.prepare_store(TrackingConfig(uri=sys.argv[1], experiment="race")))
"""


@pytest.mark.slow
def test_two_processes_create_the_same_fresh_sqlite_store(tmp_path: Path) -> None:
    """Two real processes open one fresh sqlite store at the same instant (MLflow alone crashes one with
    "duplicate column name" or "Online migration expected to match one row"): both get the experiment."""
    env = {**os.environ, "PYTHONPATH": str(Path(tracking.__file__).parents[2]), "MLFLOW_DISABLE_TELEMETRY": "true"}
    for attempt in range(2):
        uri = f"sqlite:///{tmp_path / f'race{attempt}' / 'mlflow.db'}"
        barrier = tmp_path / f"barrier{attempt}"
        barrier.mkdir()
        procs = [subprocess.Popen([sys.executable, "-c", _CREATE, uri, str(barrier), str(i)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        outs = [p.communicate(timeout=360) for p in procs]
        errors = [err[-2000:] for p, (_, err) in zip(procs, outs, strict=True) if p.returncode != 0]
        assert not errors, errors
        ids = {out.strip().splitlines()[-1] for out, _ in outs}
        assert len(ids) == 1, outs


def test_reading_a_store_touches_no_ultralytics_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``detune report``/``ui`` read a store: MLflow's environment only, no Ultralytics settings or font copy
    under detune's home (the old client ran the training runtime's setup for every read)."""
    home = tmp_path / "home"
    monkeypatch.setenv("DETUNE_HOME", str(home))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.prepare_store(TrackingConfig(uri=uri, experiment="read"))
    assert "read" in [name for _, name in tracking.list_experiments(uri)]
    assert not (home / "ultralytics").exists(), sorted(p.name for p in home.rglob("*"))


def test_openers_of_an_initialized_sqlite_store_share_its_lock(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the creation of a store's schema is exclusive: eight trials opening the study's (initialized)
    store at once must not wait for each other (under load they did, past the lock's timeout)."""
    import fcntl

    monkeypatch.setattr("detune.tracking._store.LOCK_TIMEOUT", 0.5)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lock = tmp_path / "mlflow.db.lock"
    with open(lock, "w") as held:  # another process creating the schema
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(TrackingError, match="stayed locked by another process"):
            tracking._client(uri)
    tracking.prepare_store(TrackingConfig(uri=uri, experiment="shared"))
    with open(lock, "w") as held:  # another process opening the initialized store
        fcntl.flock(held, fcntl.LOCK_SH)
        assert tracking._client(uri).get_experiment_by_name("shared") is not None
