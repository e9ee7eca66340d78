"""The ``detune`` CLI through its entry point (typer's CliRunner).

Fast: the library patched at its boundary (exact arguments asserted), a bad config per command, schedule /
data / report for real (no training). Slow: train, lr-find and a 2-trial study for real on tiny data, the
study's report, and the report read back from its MLflow experiment.
"""

from __future__ import annotations

import inspect
import io
import json
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from detune.cli import app, run_tune
from detune.report import FIGURES, build_report
from detune.study import StudyConfig
from detune.study_files import StudyResult

PNG = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def invoke(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def study_yaml(tmp_path: Path, data: Path, **changes: Any) -> Path:
    study = {
        "name": "cli", "output_dir": str(tmp_path / "out"),
        "train": {"data": str(data), "epochs": 1, "batch": 8, "nbs": 8, "imgsz": 32, "fraction": 0.5,
                  "device": "cpu", "warmup_epochs": 0.0, "mosaic": 0.0, "plots": False, "workers": 0},
        "search_space": {"lr0": {"grid": [0.01, 0.03]}, "scheduler": {"grid": ["linear"]}},
        "search": "grid", "trial_scheduler": "fifo", "num_samples": 1, "resources_per_trial": {"cpu": 1},
        "tracking": f"sqlite:///{tmp_path / 'mlflow.db'}", **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


# ---- tune, with detune.tuning.tune patched at the boundary ------------------------------------------------
class FakeTune:
    """Records its arguments, feeds the progress callable like the Ray driver callback, returns a result."""

    def __init__(self, *, raise_error: BaseException | None = None, ray_sigint: bool = False) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.raise_error, self.ray_sigint = raise_error, ray_sigint

    def __call__(self, *args: Any, **kwargs: Any) -> StudyResult:
        self.calls.append((args, kwargs))
        study: StudyConfig = args[0]
        if self.ray_sigint:  # what ray.tune.tune.run does: its handler saves ours, restores it when fired
            previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, lambda *a: signal.signal(signal.SIGINT, previous))
        rows = [{"trial_id": f"t{i}", "status": "running", "params": {"lr0": lr}, "epoch": 0, "metric": None,
                 "best": None} for i, lr in enumerate((0.01, 0.03))]
        for _ in range(50):  # repeated snapshots must not repeat lines
            kwargs["progress"]([dict(r) for r in rows])
        if self.raise_error is not None:
            raise self.raise_error
        if self.ray_sigint:
            signal.raise_signal(signal.SIGINT)
        rows[0].update(status="completed", epoch=1, metric=0.25, best=0.25)
        rows[1].update(status="diverged", epoch=1, metric=float("-inf"))
        kwargs["progress"](rows)
        out = study.output_dir
        out.mkdir(parents=True, exist_ok=True)
        (out / "trials.csv").write_text("trial_id,status,best_metric,best_epoch,epochs_run,reason,lr0\n"
                                        "t0,completed,0.25,1,1,,0.01\n"
                                        "t1,diverged,nan,nan,1,loss is nan,0.03\n")
        (out / "best.yaml").write_text("lr0: 0.01\n")
        trials = [{"trial_id": "t0", "status": "completed", "best_metric": 0.25, "epochs_run": 1,
                   "lr0": 0.01},
                  {"trial_id": "t1", "status": "diverged", "best_metric": float("nan"), "epochs_run": 1,
                   "lr0": 0.03}]
        report = build_report(out, metric=study.metric, mode=study.mode) / "report.md"  # as tune writes it
        return StudyResult(name=study.name, metric=study.metric, mode=study.mode, best_config={"lr0": 0.01},
                           best_params={"lr0": 0.01}, best_metrics={study.metric: 0.25}, trials=trials,
                           output_dir=out, best_yaml=out / "best.yaml", trials_csv=out / "trials.csv",
                           report=report)


@pytest.fixture
def fake_tune(monkeypatch: pytest.MonkeyPatch) -> FakeTune:
    fake = FakeTune()
    monkeypatch.setattr("detune.tuning.tune", fake)
    return fake


def test_tune_passes_the_validated_study_and_flags_to_the_library(tmp_path: Path, shapes_yaml: Path,
                                                                   fake_tune: FakeTune) -> None:
    config = study_yaml(tmp_path, shapes_yaml)
    result = invoke("tune", config, "num_samples=3", "train.epochs=2", "--address", "auto")
    assert result.exit_code == 0, result.output
    (args, kwargs), = fake_tune.calls
    study = args[0]
    assert isinstance(study, StudyConfig) and study.name == "cli" and study.num_samples == 3
    assert study.train.epochs == 2 and study.output_dir == tmp_path / "out"
    assert set(kwargs) == {"resume", "address", "progress", "fit"}
    assert kwargs["fit"] is None  # no trainer injected (obj={"fit": ...}): the Ultralytics adapter
    assert kwargs["resume"] is False and kwargs["address"] == "auto" and callable(kwargs["progress"])
    first = result.stdout.splitlines()[0]
    assert first.startswith("study cli: 2 trials (1 completed, 1 diverged), 2 trial-epochs in ")
    assert "best metrics/mAP50-95: 0.2500 with lr0=0.01" in result.stdout
    assert f"report: {tmp_path / 'out' / 'report' / 'report.md'}" in result.stdout
    assert (tmp_path / "out" / "report" / "report.md").is_file()
    # no terminal: one line per trial and status, not one per snapshot
    lines = result.stderr.splitlines()
    assert lines[0] == "study cli: 6 trials x 2 epochs; starting Ray"  # grid of 2 x num_samples 3
    assert sum("trial t0 running" in line for line in lines) == 1
    assert any("trial t1 diverged" in line and "best metrics/mAP50-95 -" in line for line in lines)
    assert len(lines) == 5


def test_tune_json_and_resume(tmp_path: Path, shapes_yaml: Path, fake_tune: FakeTune) -> None:
    experiment = tmp_path / "out" / "ray" / "cli"  # --resume needs a study to resume (Ray's tuner.pkl)
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"")
    result = invoke("tune", study_yaml(tmp_path, shapes_yaml), "--resume", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert fake_tune.calls[0][1]["resume"] is True and result.stderr == ""
    data = json.loads(result.stdout)
    assert data["best_params"] == {"lr0": 0.01} and data["interrupted"] is False
    assert data["trials"][1]["best_metric"] is None  # NaN is not JSON


def test_run_tune_keeps_the_signature_scripts_tune_uses(tmp_path: Path, shapes_yaml: Path,
                                                        fake_tune: FakeTune) -> None:
    params = inspect.signature(run_tune).parameters
    assert list(params)[:2] == ["config", "overrides"]
    assert {"resume", "address", "debug"} <= {k for k, p in params.items() if p.kind == p.KEYWORD_ONLY}
    code = run_tune(str(study_yaml(tmp_path, shapes_yaml)), ["num_samples=2"], resume=False, address=None,
                    debug=False)
    assert code == 0 and fake_tune.calls[0][0][0].num_samples == 2


def test_ctrl_c_during_tune_prints_how_to_resume(tmp_path: Path, shapes_yaml: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("detune.tuning.tune", FakeTune(raise_error=KeyboardInterrupt()))
    config = study_yaml(tmp_path, shapes_yaml)
    result = invoke("tune", config, "num_samples=2")
    assert result.exit_code == 130
    assert result.stderr.splitlines()[-1] == (f"interrupted: the study in {tmp_path / 'out'} can be resumed "
                                              f"with: detune tune {config} num_samples=2 --resume")
    assert "Traceback" not in result.output


def test_ray_stopping_on_ctrl_c_is_reported_as_interrupted(tmp_path: Path, shapes_yaml: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's own handler takes the first Ctrl-C, saves the study and returns: the CLI still says so."""
    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr("detune.tuning.tune", FakeTune(ray_sigint=True))
    config = study_yaml(tmp_path, shapes_yaml)
    result = invoke("tune", config)
    assert result.exit_code == 130, result.output
    assert result.stdout.startswith("study cli (interrupted): 2 trials")
    assert result.stderr.splitlines()[-1].endswith(f"detune tune {config} --resume")
    assert signal.getsignal(signal.SIGINT) is before


# ---- errors: one message, exit code 1, no traceback ---------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["train", "lr0=-1"], "error: lr0 (-1) must be > 0; use a positive learning rate"),
    (["train", "lr00=0.1"], "error: unknown setting 'lr00'; did you mean lr0"),
    (["train", "configs/missing.yaml"], "error: config file 'configs/missing.yaml' does not exist"),
    (["tune", "STUDY", "search=grdi"], "error: search ('grdi') must be one of random, grid"),
    (["lr-find", "min_lr=0.1", "max_lr=0.01"], "error: max_lr (0.01) must be above min_lr (0.1)"),
    (["lr-find", "DATA", "optimizer=auto"], "error: optimizer ('auto') makes Ultralytics choose the"),
    (["schedule", "scheduler=cosin"], "error: scheduler ('cosin') is not a known schedule"),
    (["schedule", "data=missing.yaml"], "error: steps per epoch come from the dataset, which cannot be read"),
    (["report", "no/such/study"], "error: study folder 'no/such/study' does not exist"),
    (["data", "make-shapes", "OUT", "n_trian=8"], "error: make-shapes overrides: unknown key 'n_trian'; "
                                                  "did you mean 'n_train'?"),
    (["data", "check", "missing.yaml"], "error: missing.yaml: data YAML not found"),
])
def test_bad_config_exits_1_with_one_message(tmp_path: Path, shapes_yaml: Path, args: list[str],
                                             message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    placeholders = {"STUDY": str(study_yaml(tmp_path, shapes_yaml)), "OUT": str(tmp_path / "o"),
                    "DATA": f"data={shapes_yaml}"}
    result = invoke(*(placeholders.get(a, a) for a in args))
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def test_debug_raises_the_error_itself() -> None:
    from detune.errors import ConfigError

    result = invoke("train", "lr0=-1", "--debug")
    assert result.exit_code == 1 and isinstance(result.exception, ConfigError)


def test_train_passes_the_config_and_a_progress_observer(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from detune.training import TrainResult

    seen: dict[str, Any] = {}

    def fake_run(cfg: Any, **kwargs: Any) -> TrainResult:
        seen.update(cfg=cfg, **kwargs)
        observer, = kwargs["observers"]
        observer.on_start({"steps_per_epoch": 2, "save_dir": str(tmp_path), "device": "cpu"})
        history = []
        for epoch in range(2):
            for k in range(2):
                observer.on_step(epoch * 2 + k, epoch, [0.02, 0.02, 0.1])
            history.append({"epoch": epoch + 1, "metrics/mAP50": 0.5, "metrics/mAP50-95": 0.3, "fitness": 0.3,
                            "train/box_loss": 1.0})
            observer.on_epoch(history[-1], tmp_path)
        return TrainResult(status="completed", history=history, config={"scheduler": "onecycle"},
                           save_dir=tmp_path, info={"effective_lr0": 0.02})

    monkeypatch.setattr("detune.training.run", fake_run)
    result = invoke("train", "lr0=0.02", "scheduler=onecycle", "epochs=2", "warmup_epochs=0",
                    f"project={tmp_path}", "--json")
    assert result.exit_code == 0, result.output
    assert set(seen) == {"cfg", "observers", "fit"} and seen["fit"] is None  # no trainer injected: the adapter
    assert (seen["cfg"].lr0, seen["cfg"].scheduler, seen["cfg"].epochs) == (0.02, "onecycle", 2)
    data = json.loads(result.stdout)
    assert data["status"] == "completed" and data["best_epoch"] == 1
    assert data["log"] == str(tmp_path / "detune.log")
    assert [line.split("  ")[0] for line in result.stderr.splitlines()[1:]] == ["epoch 1/2", "epoch 2/2"]


# ---- commands that need no training, for real ---------------------------------------------------------
def test_schedule_plots_and_prints_key_points(tmp_path: Path, shapes_yaml: Path) -> None:
    out = tmp_path / "lr.png"
    result = invoke("schedule", f"data={shapes_yaml}", "batch=8", "nbs=8", "epochs=3", "warmup_epochs=1",
                    "scheduler=step", "scheduler_params.step_size=1", "scheduler_params.gamma=0.5",
                    "--out", out)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("step schedule, lr0 0.01, 3 epochs x 4 steps (32 images / batch 8 = 4 batches")
    assert lines[1].split() == ["step", "epoch", "lr", "bias", "lr", "momentum"]
    assert lines[2].split() == ["0", "1", "0", "0.1", "0.8"]  # warmup from 0 (bias from warmup_bias_lr)
    assert lines[3].split() == ["4", "2", "0.005", "0.005", "0.937"]
    assert lines[-1] == f"plot: {out}" and out.read_bytes().startswith(PNG)


def test_schedule_json_with_given_steps_per_epoch(tmp_path: Path) -> None:
    result = invoke("schedule", "scheduler=constant", "epochs=2", "warmup_epochs=0", "--steps-per-epoch", "5",
                    "--json", "--out", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["steps_per_epoch"] == 5 and [p["step"] for p in data["key_points"]] == [0, 5, 9]
    assert {p["lr"] for p in data["key_points"]} == {0.01}


def test_schedule_shows_lr_mult_and_layer_decay(tmp_path: Path) -> None:
    result = invoke("schedule", "lr_layer_decay=0.8", "lr_mult.backbone=0.1", "epochs=2", "--steps-per-epoch", "5",
                    "--out", tmp_path / "d.png")
    assert result.exit_code == 0, result.output
    assert "lr_mult: backbone weights at lr x 0.1" in result.stdout
    assert ("lr_layer_decay 0.8: layer k below the head at lr x 0.8^k (the head at lr: x0.8 at k=1, x0.328 at "
            "k=5, x0.107 at k=10, x0.0115 at k=20)") in result.stdout
    assert (tmp_path / "d.png").stat().st_size > 10_000


def test_data_make_shapes_then_check(tmp_path: Path) -> None:
    result = invoke("data", "make-shapes", tmp_path / "shapes", "n_train=4", "n_val=2", "imgsz=64")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"wrote {tmp_path / 'shapes' / 'data.yaml'}",
        "4 train / 2 val images at 64 px, classes: circle, square, triangle"]
    result = invoke("data", "check", tmp_path / "shapes" / "data.yaml", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["data.train_images"] == 4 and data["names"] == ["circle", "square", "triangle"]


def test_report_command_on_a_study_folder(tmp_path: Path) -> None:
    from test_report import write_study

    out = write_study(tmp_path)
    result = invoke("report", out, "--top", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"report: {out / 'report' / 'report.md'}", f"figures: {', '.join(FIGURES)}",
        "Trial ab123_00001 (completed): metrics/mAP50-95 = 0.4200 after 3 epochs, with lr0=0.03, "
        "scheduler=cosine."]


def test_capture_sends_library_output_to_the_log_and_restores_streams(tmp_path: Path) -> None:
    import logging
    import sys

    from detune._progress import capture

    before = sys.stdout, sys.stderr
    log = tmp_path / "x" / "detune.log"
    with capture(log, verbose=False):
        print("chatter")
        handler = logging.StreamHandler()  # bound to sys.stderr now, as a library's handler would be
        noisy = logging.getLogger("detune-test-noisy")
        noisy.addHandler(handler)
        noisy.warning("library warning")
    assert (sys.stdout, sys.stderr) == before
    assert "chatter" in log.read_text() and "library warning" in log.read_text()
    sink = io.StringIO()
    sys.stderr = sink  # outside a capture, the handler follows the real stderr
    try:
        noisy.warning("later")
    finally:
        sys.stderr = before[1]
        noisy.removeHandler(handler)
    assert "later" in sink.getvalue() and "later" not in log.read_text()
    sys.stderr = sink
    try:
        with capture(log, verbose=True) as path:  # verbose: no file, library stdout goes to stderr
            print("shown")
    finally:
        sys.stderr = before[1]
    assert path is None and "shown" in sink.getvalue() and sys.stdout is before[0]


def test_version_and_help() -> None:
    assert invoke("--version").stdout.startswith("detune ")
    assert invoke().exit_code in (0, 2) and "train" in invoke("--help").stdout


# ---- for real (slow) --------------------------------------------------------------------------------------
LEAN = ["device=cpu", "workers=0", "threads=1", "imgsz=32", "batch=8", "nbs=8", "warmup_epochs=0", "mosaic=0",
        "plots=false"]


@pytest.mark.slow
def test_train_runs_for_real_with_epoch_progress(tmp_path: Path, shapes_yaml: Path) -> None:
    result = invoke("train", f"data={shapes_yaml}", "epochs=1", "lr0=0.02", *LEAN, f"project={tmp_path}")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "status: completed" and lines[1] == "epochs: 1  best epoch: 1"
    assert lines[-2] == f"results: {tmp_path / 'train'}"
    assert lines[-1] == f"log: {tmp_path / 'train' / 'detune.log'}"
    assert lines[-3].startswith("advice: ")  # the training-health advisor's verdict
    assert len(lines) == 7  # nothing else on stdout: Ultralytics' output went to the log
    assert result.stderr.splitlines()[-1].startswith("epoch 1/1  loss ")
    assert (tmp_path / "train" / "detune.log").is_file() and not list(tmp_path.glob(".detune-*.log"))


@pytest.mark.slow
def test_lr_find_runs_for_real(tmp_path: Path, shapes_yaml: Path) -> None:
    plot = tmp_path / "lr.png"
    result = invoke("lr-find", f"data={shapes_yaml}", "batch=2", "imgsz=32", "device=cpu", "workers=0",
                    "threads=1", "num_iters=12", "--out", plot, "--json")
    data = json.loads(result.stdout)
    assert len(data["lrs"]) == 12 and data["lrs"][0] == pytest.approx(1e-6)
    assert data["plot"] == str(plot) and plot.read_bytes().startswith(PNG)
    assert result.exit_code == (0 if data["suggestion"] is not None else 1), result.output
    assert "LR range test on cpu: up to 12 steps" in result.stderr


@pytest.fixture(scope="module")
def real_study(tmp_path_factory: pytest.TempPathFactory, shapes_yaml: Path) -> tuple[Path, Any]:
    """One real 2-trial, 1-epoch study (lr0 0.01 and 0.03, linear) through ``detune tune``."""
    tmp = tmp_path_factory.mktemp("cli-study")
    result = invoke("tune", study_yaml(tmp, shapes_yaml))
    return tmp, result


@pytest.mark.slow
def test_tune_runs_a_real_study(real_study: tuple[Path, Any]) -> None:
    tmp, result = real_study
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("study cli: 2 trials (2 completed), 2 trial-epochs in ")
    assert [line.split(":")[0] for line in lines[1:]] == ["best metrics/mAP50-95", "best config", "trials",
                                                           "report", "log", "MLflow"]
    assert "trial " in result.stderr and (tmp / "out" / "detune.log").is_file()
    assert len((tmp / "out" / "trials.csv").read_text().splitlines()) == 3


@pytest.mark.slow
def test_report_of_a_real_study_has_pngs_and_summary(real_study: tuple[Path, Any]) -> None:
    from detune.report import build_report

    tmp, _ = real_study
    for folder in (tmp / "out" / "report", build_report(tmp / "out", out_dir=tmp / "again")):
        assert all((folder / name).read_bytes().startswith(PNG) for name in FIGURES)
        text = (folder / "report.md").read_text()
        assert "trials: 2 (2 completed, 0 stopped, 0 diverged, 0 failed)" in text
        assert "ran the defaults" in text and "- trial-epochs used: 2" in text


@pytest.mark.slow
def test_report_command_reads_the_mlflow_experiment(real_study: tuple[Path, Any]) -> None:
    tmp, _ = real_study
    result = invoke("report", "cli", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--out", tmp / "mf")
    assert result.exit_code == 0, result.output
    assert all((tmp / "mf" / name).is_file() for name in FIGURES)
    assert "trials: 2 (2 completed" in (tmp / "mf" / "report.md").read_text()


@pytest.mark.slow
def test_parent_run_holds_the_report(real_study: tuple[Path, Any]) -> None:
    from mlflow.tracking import MlflowClient

    tmp, _ = real_study
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cli")
    parent, = client.search_runs([exp.experiment_id], filter_string="tags.`detune.kind` = 'study'")
    names = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id)}
    names |= {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report.md", *FIGURES} <= names
