"""trial_scheduler: detection, Ray's scheduler interface driven with synthetic results (no cluster, no training)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from detune.errors import ConfigError
from detune.study import load_study
from detune.tuning import _scheduler, check_study


def _study(tmp_path: Path, **changes: object) -> object:
    base = {"train": {"epochs": 20, "warmup_epochs": 1.0}, "output_dir": str(tmp_path),
            "search_space": {"lr0": {"loguniform": [1e-3, 1e-1]}}, "trial_scheduler": "detection"}
    return load_study({**base, **changes})


def _result(epoch: int, m: float, loss: float = 5.0) -> dict[str, float]:
    return {"training_iteration": epoch, "metrics/mAP50-95": m, "val/box_loss": loss}


def test_detection_rungs_follow_the_epochs_and_the_largest_warmup_the_space_can_sample(tmp_path: Path) -> None:
    assert _scheduler(_study(tmp_path)).rungs.rungs == [5, 10]  # grace max(2, 20 // 4)
    wide = _study(tmp_path, search_space={"warmup_epochs": {"uniform": [0.0, 6.5]}})
    assert _scheduler(wide).rungs.rungs == [7, 14]
    assert _scheduler(_study(tmp_path, trial_scheduler_params={"grace_period": 3, "reduction_factor": 3})
                      ).rungs.rungs == [3, 9]


def test_detection_scheduler_stops_below_the_cutoff_only_once_the_cutoff_left_the_noise_floor(
        tmp_path: Path) -> None:
    sched = _scheduler(_study(tmp_path))
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(4)]
    decide = [sched.on_trial_result(None, t, _result(5, m, loss))
              for t, m, loss in zip(trials, [0.002, 0.0, 0.001, 0.0], [4.0, 6.0, 7.0, 8.0], strict=True)]
    assert set(decide) == {sched.CONTINUE}  # every mAP ~0: nothing is stopped at epoch 5
    sched = _scheduler(_study(tmp_path))
    assert sched.on_trial_result(None, trials[0], _result(5, 0.05)) == sched.CONTINUE
    assert sched.on_trial_result(None, trials[1], _result(4, 0.0)) == sched.CONTINUE  # not a rung
    assert sched.on_trial_result(None, trials[1], _result(5, 0.004)) == sched.STOP
    assert sched.on_trial_result(None, trials[2], _result(19, 0.0)) == sched.CONTINUE  # the last epoch: never


def test_detection_needs_a_metric_to_maximise_and_known_params(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trial_scheduler: detection.*mode: max"):
        _study(tmp_path, mode="min", metric="val/box_loss")
    with pytest.raises(ConfigError, match="trial_scheduler_params.grace is not a parameter.*grace_period"):
        check_study(_study(tmp_path, trial_scheduler_params={"grace": 2}))
    check_study(_study(tmp_path, trial_scheduler_params={"noise_floor": 0.02}))
    with pytest.raises(ConfigError, match="noise floor"):
        check_study(_study(tmp_path, trial_scheduler_params={"noise_floor": 2}))
