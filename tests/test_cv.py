"""Cross-validated search, ``cv: {folds, seed}``: folds that partition the train images by class presence
(pure), the study settings it needs, and a real cross-validated study whose metric is the mean of its real
fold trainings, each fold an MLflow run nested under its trial's run."""

from __future__ import annotations

import csv
import os
import statistics
from pathlib import Path
from typing import Any

import pytest

from detune.cv import CVSettings, assign_folds, fold_mean, parse_cv, write_folds
from detune.datasets import check_dataset, make_shapes, split_images
from detune.errors import ConfigError, DatasetError
from detune.study import load_study


@pytest.mark.parametrize(("raw", "message"), [
    ({"folds": 1}, r"cv.folds \(1\) must be an integer from 2 to 20"),
    ({"folds": 2.5}, r"cv.folds \(2.5\)"),
    ({"seed": "x"}, r"cv.seed \('x'\) must be an integer"),
    ({"fold": 3}, r"cv.fold is unknown; did you mean folds\?"),
    (3, r"cv \(3\) must be a mapping"),
])
def test_bad_cv_settings_name_the_field_the_value_and_the_fix(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cv(raw)


def test_cv_defaults_and_its_trial_scheduler(tmp_path: Path) -> None:
    assert parse_cv(True) == CVSettings(folds=3, seed=0) and parse_cv(False) is None
    base = {"train": {"epochs": 4}, "output_dir": str(tmp_path), "num_samples": 4}
    study = load_study({**base, "cv": {"folds": 2}})
    assert study.cv == CVSettings(folds=2, seed=0) and study.trial_scheduler == "fifo"  # nothing to stop early
    assert load_study(study.to_dict()).cv == study.cv
    assert load_study(base).cv is None and load_study(base).trial_scheduler == "detection"
    with pytest.raises(ConfigError, match="cv cannot run with trial_scheduler: asha.*use trial_scheduler: fifo"):
        load_study({**base, "cv": True, "trial_scheduler": "asha"})


def test_folds_put_every_image_in_one_fold_and_spread_each_class() -> None:
    rare, common = frozenset({0}), frozenset({1, 2})
    classes = [rare] * 6 + [common] * 24 + [frozenset()] * 6  # 6 images of a rare class, 6 without objects
    folds = assign_folds(classes, 3, seed=0)
    assert len(folds) == len(classes) and set(folds) == {0, 1, 2}
    for kind in (rare, common, frozenset()):
        per_fold = [sum(1 for c, f in zip(classes, folds, strict=True) if c == kind and f == i) for i in range(3)]
        assert max(per_fold) - min(per_fold) <= 1, (kind, per_fold)  # stratified, not left to chance
    assert assign_folds(classes, 3, seed=0) == folds and assign_folds(classes, 3, seed=1) != folds


def test_the_fold_datasets_partition_the_train_images_and_leave_val_alone(tmp_path: Path) -> None:
    data = make_shapes(tmp_path / "shapes", n_train=30, n_val=8, imgsz=32, seed=0)
    dataset = check_dataset(data)
    train = split_images(dataset, "train")
    yamls = write_folds(dataset, CVSettings(folds=3, seed=0), tmp_path / "cv")
    held = []
    for fold_yaml in yamls:
        fold = check_dataset(fold_yaml)  # a valid Ultralytics data YAML, labels found beside the images
        fold_train = [os.path.realpath(p) for p in split_images(fold, "train")]
        fold_val = [os.path.realpath(p) for p in split_images(fold, "val")]
        assert sorted(fold_train + fold_val) == sorted(train) and not set(fold_train) & set(fold_val)
        assert fold.names == dataset.names and fold.val_instances > 0
        held += fold_val
    assert sorted(held) == sorted(train)  # every train image held out exactly once
    assert not set(held) & set(split_images(dataset, "val"))  # the val split is not in any fold
    assert write_folds(dataset, CVSettings(folds=3, seed=0), tmp_path / "again") != yamls  # other folders ...
    assert [check_dataset(y).val_images for y in yamls] == [
        check_dataset(y).val_images for y in write_folds(dataset, CVSettings(folds=3, seed=0), tmp_path / "again")]
    with pytest.raises(DatasetError, match=r"cv.folds \(20\) needs at least 40 train images, but .* has 30"):
        write_folds(dataset, CVSettings(folds=20), tmp_path / "many")


def test_fold_mean_averages_each_epoch_and_reports_the_spread() -> None:
    a = [{"epoch": 1, "m": 0.1, "val/box_loss": 2.0}, {"epoch": 2, "m": 0.3, "val/box_loss": 1.0}]
    b = [{"epoch": 1, "m": 0.3, "val/box_loss": 4.0}, {"epoch": 2, "m": 0.5, "val/box_loss": float("nan")}]
    mean = fold_mean([a, b], "m")
    assert [r["m"] for r in mean] == pytest.approx([0.2, 0.4]) and mean[0]["val/box_loss"] == 3.0
    assert "val/box_loss" not in mean[1]  # not a number in every fold: left out, not averaged wrongly
    assert mean[1]["cv/std"] == pytest.approx(statistics.stdev([0.3, 0.5])) and mean[1]["cv/fold1"] == 0.5
    assert fold_mean([a, a[:1]], "m") == fold_mean([a[:1], a[:1]], "m")  # the epochs every fold reached


def test_a_trials_folds_run_at_once_when_the_cluster_holds_them_all() -> None:
    from detune.tuning import folds_at_once

    assert folds_at_once(2, {"cpu": 1, "gpu": 0}, {"CPU": 2.0})
    assert not folds_at_once(3, {"cpu": 1, "gpu": 0}, {"CPU": 2.0})  # one after the other in 1 CPU
    assert folds_at_once(4, {"cpu": 2, "gpu": 0.5}, {"CPU": 8.0, "GPU": 2.0})
    assert not folds_at_once(4, {"cpu": 2, "gpu": 1}, {"CPU": 8.0, "GPU": 2.0})


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_cross_validated_study_scores_each_trial_by_the_mean_of_its_real_fold_trainings(
        tmp_path: Path, shapes_yaml: Path) -> None:
    from mlflow.tracking import MlflowClient

    from detune.tuning import tune

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = tune({"name": "cv", "output_dir": str(tmp_path / "out"), "cv": {"folds": 2, "seed": 0},
                   "train": {"data": str(shapes_yaml), "epochs": 2, "batch": 8, "nbs": 8, "imgsz": 32,
                             "device": "cpu", "warmup_epochs": 0.0, "mosaic": 0.0, "plots": False, "workers": 0},
                   "search_space": {"lr0": {"choice": [0.01]}}, "search": "random", "num_samples": 1,
                   "resources_per_trial": {"cpu": 1}, "tracking": uri})
    (trial,) = result.trials
    assert trial["status"] == "completed" and trial["epochs_run"] == 2
    folder = result.output_dir / "trials" / trial["trial_id"]
    folds = []
    for i in range(2):
        with (folder / f"fold{i}" / "results.csv").open(newline="") as f:
            rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
        folds.append([float(r["metrics/mAP50-95(B)"]) for r in rows])
    means = [statistics.fmean(values) for values in zip(*folds, strict=True)]
    reported = result.result_grid[0].metrics_dataframe
    assert list(reported["metrics/mAP50-95"]) == pytest.approx(means, abs=1e-5)  # the study metric: the fold mean
    assert float(trial["best_metric"]) == pytest.approx(max(means), abs=1e-5)
    spread = statistics.stdev([fold[means.index(max(means))] for fold in folds])
    rows = list(csv.DictReader(result.trials_csv.read_text().splitlines()))
    assert float(rows[0]["cv/std"]) == pytest.approx(spread, abs=1e-5)
    client = MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    trial_run = next(r for r in runs if r.data.tags.get("detune.trial_id") == trial["trial_id"]
                     and "detune.fold" not in r.data.tags)
    fold_runs = sorted((r for r in runs if "detune.fold" in r.data.tags), key=lambda r: r.data.tags["detune.fold"])
    assert [r.data.tags["mlflow.parentRunId"] for r in fold_runs] == [trial_run.info.run_id] * 2
    assert [r.info.status for r in fold_runs + [trial_run]] == ["FINISHED"] * 3
    history = client.get_metric_history(trial_run.info.run_id, "metrics/mAP50-95")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(means, abs=1e-5)
    parent = next(r for r in runs if r.data.tags.get("detune.kind") == "study")
    assert trial_run.data.tags["mlflow.parentRunId"] == parent.info.run_id and parent.data.params["cv.folds"] == "2"


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_trials_folds_train_at_once_when_the_cluster_holds_them(tmp_path: Path, shapes_yaml: Path) -> None:
    """Two folds on a 2-CPU Ray: the trial's placement group holds both, so the second fold trains while the
    first is held after its first epoch (one after the other, it would not start until the hold ends)."""
    import threading
    import time

    import ray

    from detune import _fake
    from detune.tuning import tune

    if ray.cluster_resources().get("CPU", 0) < 2:
        pytest.skip("two folds at once need 2 CPUs; this Ray has 1")
    hold, states, seen = tmp_path / "hold", tmp_path / "out" / "trials", []
    hold.touch()

    def release() -> None:  # when both folds are held mid-training (or after 120 s), let them go
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not seen:
            if len(list(states.glob("*/fold*/weights/detune_state.json"))) == 2:
                seen.append(True)
            time.sleep(0.2)
        hold.unlink()

    threading.Thread(target=release, daemon=True).start()
    result = tune({"name": "folds", "output_dir": str(tmp_path / "out"), "cv": {"folds": 2},
                   "train": {"data": str(shapes_yaml), "epochs": 2, "imgsz": 32, "device": "cpu",
                             "warmup_epochs": 0.0},
                   "search_space": {"lr0": {"choice": [0.01]}}, "search": "random", "num_samples": 1,
                   "resources_per_trial": {"cpu": 1}, "tracking": False}, fit=_fake.Fake(hold=hold))
    assert seen == [True] and result.trials[0]["status"] == "completed"
