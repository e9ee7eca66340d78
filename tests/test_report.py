"""Study reports from hand-made study folders and an MLflow store written through detune.tracking (fast).

A report built from a real study run through the CLI is tested in test_cli.py (slow)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from detune import report as rep
from detune.errors import ConfigError
from detune.report import FIGURES, build_report

PNG = b"\x89PNG\r\n\x1a\n"
METRIC = "metrics/mAP50-95"
# trial_id: (status, lr0, scheduler, per-epoch metric values, reason)
TRIALS = {
    "ab123_00000": ("completed", 0.01, "linear", [0.10, 0.20, 0.30], ""),  # Ultralytics' defaults
    "ab123_00001": ("completed", 0.03, "cosine", [0.15, 0.30, 0.42], ""),  # the best
    "ab123_00002": ("stopped", 0.001, "linear", [0.05], "stopped by asha after 1 epochs"),
    "ab123_00003": ("diverged", 2.0, "cosine", [], "loss is nan at epoch 1, step 0"),
    "ab123_00004": ("failed", 0.5, "linear", [0.12], "RuntimeError: CUDA out of memory"),
}


def write_study(root: Path, trials: dict = TRIALS, *, ray: bool = True, state: dict | None = None) -> Path:
    """A study output_dir as detune.tuning leaves it: trials.csv, best.yaml, study.json, Ray trial folders."""
    out = root / "out"
    out.mkdir(parents=True)
    rows = []
    for tid, (status, lr0, sched, values, reason) in trials.items():
        best = max(values) if values and status != "diverged" else math.nan
        rows.append({"trial_id": tid, "status": status, "best_metric": best, "best_epoch": len(values) or "",
                     "epochs_run": len(values), "reason": reason, "lr0": lr0, "scheduler": sched})
        folder = out / "ray" / "demo" / f"_trainable_{tid}_0_lr0={lr0:.4f}_2026-01-01_00-00-00"
        if ray:
            folder.mkdir(parents=True)
            (folder / "params.json").write_text(json.dumps({"lr0": lr0, "scheduler": sched}))
            reported = [{"epoch": e + 1, METRIC: v, "lr/pg0": lr0 * (1 - e / 3), "trial_id": tid,
                     "time_total_s": 10.0 * (e + 1)} for e, v in enumerate(values)]
            if status == "diverged":  # the closing report of a diverged trial: worst metric, no new epoch
                reported.append({"epoch": 1, METRIC: -math.inf, "detune_status": "diverged", "trial_id": tid})
            (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in reported))
        else:  # Ultralytics' own results.csv is the fallback
            results = out / "trials" / tid / "results.csv"
            results.parent.mkdir(parents=True)
            results.write_text("epoch,metrics/mAP50-95(B),lr/pg0\n"
                           + "".join(f"{e + 1},{v},{lr0}\n" for e, v in enumerate(values)))
    with (out / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    best = {"model": "yolo11n.yaml", "data": "shapes", "epochs": 3, "lr0": 0.03, "scheduler": "cosine"}
    (out / "best.yaml").write_text(f"# best trial ab123_00001 of study demo: {METRIC} = 0.42 at epoch 3\n"
                                   + yaml.safe_dump(best, sort_keys=False))
    (out / "study.json").write_text(json.dumps(state or {"parent_run_id": None, "name": "demo"}))
    return out


def test_report_has_figures_and_summary(tmp_path: Path) -> None:
    folder = build_report(write_study(tmp_path), top=2)
    assert folder == tmp_path / "out" / "report"
    for name in FIGURES:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    text = (folder / "report.md").read_text()
    assert "# Study report: demo" in text and f"metric: `{METRIC}` (max)" in text
    assert "trials: 5 (2 completed, 1 stopped, 1 diverged, 1 failed)" in text
    assert f"Trial `ab123_00001` (completed): **{METRIC} = 0.4200** after 3 epochs" in text
    assert "lr0=0.03, scheduler=cosine" in text and "scheduler: cosine" in text  # best config as YAML
    assert "detune train " + str(tmp_path / "out" / "best.yaml") in text
    # baseline: the lr0=0.01 / linear trial, 0.30 -> best 0.42
    assert "Trial `ab123_00000` ran the defaults" in text and "0.1200 (+40.0%) better (+0.1200)" in text
    assert "- trial-epochs used: 8" in text  # 3 + 3 + 1 + 0 + 1
    assert "all 3 epochs: 15 (trials ended early saved 7, 47%)" in text
    assert "- trial time: 80 s in total" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`ab123" in line]
    assert [r.split("|")[2].strip() for r in rows] == [
        "`ab123_00001`", "`ab123_00000`", "`ab123_00004`", "`ab123_00002`", "`ab123_00003`"]
    assert "| - | `ab123_00003` | diverged | - | 0 |" in text and "CUDA out of memory" in text
    assert all(f"]({name})" in text for name in FIGURES) and "not drawn" not in text


def test_history_and_lr_curves_come_from_ray_results(tmp_path: Path) -> None:
    data = rep.load_study_dir(write_study(tmp_path))
    trials = {t.trial_id: t for t in data.trials}
    assert [h[METRIC] for h in trials["ab123_00001"].history] == [0.15, 0.30, 0.42]
    assert trials["ab123_00001"].lr_curve == [(1, 0.03), (2, pytest.approx(0.02)), (3, pytest.approx(0.01))]
    assert trials["ab123_00003"].history == []  # the diverged closing row is not an epoch
    assert trials["ab123_00001"].seconds == 30.0
    assert trials["ab123_00000"].config == {"lr0": 0.01, "scheduler": "linear"}
    assert rep.baseline_trial(data).trial_id == "ab123_00000"


def test_results_csv_is_the_fallback_without_ray_results(tmp_path: Path) -> None:
    data = rep.load_study_dir(write_study(tmp_path, ray=False))
    best = next(t for t in data.trials if t.trial_id == "ab123_00001")
    assert [h[METRIC] for h in best.history] == [0.15, 0.30, 0.42] and best.lr_curve[0] == (1, 0.03)
    assert best.params == {"lr0": 0.03, "scheduler": "cosine"}  # from trials.csv, typed
    assert (build_report(tmp_path / "out") / "report.md").is_file()


def test_without_the_defaults_the_report_says_how_to_compare(tmp_path: Path) -> None:
    trials = {k: v for k, v in TRIALS.items() if k != "ab123_00000"}
    text = (build_report(write_study(tmp_path, trials)) / "report.md").read_text()
    assert "No trial ran the defaults" in text and "`lr0: {grid: [0.01, ...]}`" in text


def test_metric_and_mode_come_from_study_json_and_min_ranks_low_first(tmp_path: Path) -> None:
    out = write_study(tmp_path, state={"name": "demo", "metric": "val/box_loss", "mode": "min"})
    data = rep.load_study_dir(out)
    assert (data.metric, data.mode) == ("val/box_loss", "min")
    data = rep.load_study_dir(out, metric=METRIC, mode="min")
    assert data.ranked()[0].trial_id == "ab123_00002"  # 0.05: the lowest


def test_a_figure_that_fails_is_named_and_the_rest_is_written(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: object, ax: object) -> None:
        raise ValueError("no axes today")

    monkeypatch.setattr(rep, "_parallel_coordinates", broken)
    folder = build_report(write_study(tmp_path))
    text = (folder / "report.md").read_text()
    assert "- not drawn: parallel_coordinates.png: ValueError: no axes today" in text
    assert not (folder / "parallel_coordinates.png").exists() and (folder / "metric_vs_lr0.png").is_file()


@pytest.mark.parametrize("setup, kwargs, match", [
    ("empty", {}, "holds no trials.csv, so it is not a study output_dir"),
    ("study", {"top": 0}, r"top \(0\) must be an integer >= 1"),
    ("study", {"mode": "up"}, r"mode \('up'\) must be max or min"),
])
def test_bad_inputs_raise_config_error(tmp_path: Path, setup: str, kwargs: dict, match: str) -> None:
    source = write_study(tmp_path) if setup == "study" else tmp_path
    with pytest.raises(ConfigError, match=match):
        build_report(source, **kwargs)


def test_missing_folder_or_store_is_a_config_error_and_creates_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="study folder '.*nope/dir' does not exist"):
        build_report(tmp_path / "nope" / "dir")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="no study folder 'quick' and no MLflow store at sqlite:///"):
        build_report("quick")
    assert not (tmp_path / "mlflow.db").exists()


def test_report_from_an_mlflow_experiment(tmp_path: Path) -> None:
    from detune import tracking
    from detune.config import TrainConfig
    from detune.training import TrainResult, resolved_config

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = tracking.TrackingConfig(uri=uri, experiment="demo")
    parent = tracking.start_study_run(study, name="demo", params={
        "metric": METRIC, "mode": "max", "search_space.lr0": '{"loguniform": [0.001, 0.1]}',
        "train.epochs": 2})
    for tid, lr0, values, stop in (("t0", 0.01, [0.1, 0.3], False), ("t1", 0.05, [0.05], True)):
        cfg = TrainConfig(epochs=2, imgsz=64, lr0=lr0, warmup_epochs=0.0)
        trial = study.replace(parent_run_id=parent, tags={"detune.trial_id": tid})
        logger = tracking.open_training_run(trial, config=resolved_config(cfg), dataset={}, effective_lr0=lr0)
        history = []
        for epoch, value in enumerate(values):
            for k in range(2):
                logger.on_step(epoch * 2 + k, epoch, [lr0 / (1 + epoch * 2 + k)] * 3)
            history.append({"epoch": epoch + 1, METRIC: value, "lr/pg0": lr0})
            logger.on_epoch(dict(history[-1]), tmp_path)
        if stop:  # what a trial the scheduler stopped leaves: its worker exited mid-run
            logger.abort(SystemExit(0))
        else:
            logger.finish(TrainResult(status="completed", history=history, config=resolved_config(cfg)))
    tracking.finish_run(study, parent, status="completed")

    folder = build_report("demo", tracking_uri=uri, out_dir=tmp_path / "rep")
    text = (folder / "report.md").read_text()
    assert all((folder / name).read_bytes().startswith(PNG) for name in FIGURES)
    assert f"experiment 'demo', run {parent}" in text and "trials: 2 (1 completed, 1 stopped" in text
    assert f"Trial `t0` (completed): **{METRIC} = 0.3000** after 2 epochs, with lr0=0.01." in text
    assert "Trial `t0` ran the defaults" in text and "- trial-epochs used: 3" in text
    data = rep.load_experiment("demo", tracking_uri=uri)
    t0 = next(t for t in data.trials if t.trial_id == "t0")
    assert t0.lr_unit == "step" and [x for x, _ in t0.lr_curve] == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="no study folder and no MLflow experiment named 'other'"):
        build_report("other", tracking_uri=uri)


def test_a_tie_with_the_defaults_is_called_a_tie(tmp_path: Path) -> None:
    trials = {"ab123_00000": ("completed", 0.003, "linear", [0.0, 0.0, 0.0], ""),
              "ab123_00001": ("completed", 0.01, "linear", [0.0, 0.0, 0.0], "")}
    text = (build_report(write_study(tmp_path, trials)) / "report.md").read_text()
    assert "The best trial (`ab123_00000`) ties with it." in text
    assert "- trial-epochs if every trial had run all 3 epochs: 6\n" in text  # nothing ended early
