"""Rung rules for early stopping on detection curves (detune.rungs), replayed on recorded per-epoch data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from detune.rungs import NOISE_FLOOR, AsyncRungs, default_grace, first_rung, milestones, rung_signal

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# The shapes search benchmark (results/search.json): 6 epochs, 1 warmup epoch, ASHA grace 2, reduction factor 2
EPOCHS, WARMUP, RF = 6, 1.0, 2
BASELINE_CURVE = [0.0, 0.0, 0.00048, 0.00182, 0.04701, 0.06319]  # Ultralytics' defaults (trial 0 of both)


def _runs(strategy: str) -> list[dict]:
    return json.loads((RESULTS / "search.json").read_text())["datasets"]["shapes"]["runs"][strategy]["trials"]


def _replay(trials: list[dict], rungs: AsyncRungs) -> dict[str, int]:
    """Feed every recorded epoch to ``rungs`` in the order the epochs finished; return the epochs each trial
    trained before it was stopped (or all of its recorded epochs)."""
    events = sorted(((e["t"], i, e) for i, t in enumerate(trials) for e in t["epochs"]), key=lambda x: x[:2])
    trained: dict[str, int] = {}
    stopped: set[str] = set()
    for _, i, e in events:
        trial = trials[i]["trial"]
        if trial in stopped:
            continue
        trained[trial] = e["epoch"]
        if rungs.on_result(trial, e["epoch"], {"metrics/mAP50-95": e["fitness"]}):
            stopped.add(trial)
    return trained


def test_the_grace_period_scales_with_the_epochs_of_a_trial() -> None:
    assert [default_grace(e) for e in (1, 6, 8, 20, 100)] == [2, 2, 2, 5, 25]


def test_no_rung_before_warmup_has_ended() -> None:
    assert first_rung(epochs=20, warmup_epochs=3.0) == 5  # grace 5 already past the warmup
    assert first_rung(epochs=6, warmup_epochs=3.0) == 4  # grace 2, but warmup runs through epoch 3
    assert first_rung(epochs=6, warmup_epochs=2.5) == 3
    assert first_rung(epochs=6, warmup_epochs=0.0, grace=1) == 1
    assert milestones(epochs=6, warmup_epochs=1.0, reduction_factor=2) == [2, 4]  # the last epoch is never one
    assert milestones(epochs=20, warmup_epochs=3.0, reduction_factor=2) == [5, 10]
    assert milestones(epochs=4, warmup_epochs=3.0, reduction_factor=2) == []


def test_the_signal_falls_back_to_validation_loss_while_map_is_within_its_noise_floor() -> None:
    def rec(m: float, box: float = 2.0, cls: float = 3.0) -> dict[str, float]:
        return {"metrics/mAP50-95": m, "val/box_loss": box, "val/cls_loss": cls, "val/dfl_loss": 1.0}

    assert rung_signal(rec(0.05)) == 0.05
    low, lower_loss = rung_signal(rec(0.001)), rung_signal(rec(0.001, box=1.0))
    assert 0 <= low < lower_loss < NOISE_FLOOR  # below the floor: ordered by validation loss, below any mAP off it
    assert rung_signal(rec(0.009, box=1.0)) == pytest.approx(lower_loss)  # mAP differences there are noise
    assert rung_signal({"metrics/mAP50-95": 0.002}) == 0.002  # no validation loss recorded: the metric itself
    assert rung_signal({"metrics/mAP50-95": math.nan, "val/box_loss": math.inf}) is None


def test_the_signal_on_a_recorded_fine_tuning_curve_orders_epochs_before_map_leaves_the_floor() -> None:
    history = json.loads((RESULTS / "pretrain_probe.json").read_text())["history"]  # 8 epochs, val losses
    signals = [rung_signal(r) for r in history]
    assert history[0]["metrics/mAP50-95"] < NOISE_FLOOR and history[1]["metrics/mAP50-95"] < NOISE_FLOOR
    assert signals[0] < signals[1] < NOISE_FLOOR <= signals[2]  # the falling val loss shows progress at ~0 mAP
    assert signals == sorted(signals)


def test_plain_asha_replayed_on_the_shapes_benchmark_stops_the_baseline_at_epoch_4_as_recorded() -> None:
    # The replay is faithful: Ray's ASHA (grace 2, rf 2, raw mAP, no floor) stopped the baseline at epoch 4,
    # and the replay of the plain rule stops exactly the trials Ray stopped, at the epochs it stopped them.
    trials = _runs("detune_default")
    assert [e["fitness"] for e in trials[0]["epochs"]] == BASELINE_CURVE[:4]
    plain = AsyncRungs([2, 4], reduction_factor=RF, floor=0.0)
    _replay(trials, plain)
    assert plain.stopped[trials[0]["trial"]] == 4
    assert plain.stopped == {t["trial"]: len(t["epochs"]) for t in trials if len(t["epochs"]) < EPOCHS}


def test_the_rung_rules_do_not_stop_the_shapes_baseline_which_goes_on_to_0_063() -> None:
    fifo = _runs("detune_random_fifo")  # same trainings, every trial's full 6 epochs
    assert [e["fitness"] for e in fifo[0]["epochs"]] == BASELINE_CURVE
    for trials in (_runs("detune_default"), fifo):
        rungs = AsyncRungs(milestones(EPOCHS, WARMUP, RF), reduction_factor=RF)
        _replay(trials, rungs)
        assert trials[0]["trial"] not in rungs.stopped
    # with the full curves, the plain rule stops it too (and 3 others that then reach 0.04-0.07)
    plain = AsyncRungs([2, 4], reduction_factor=RF, floor=0.0)
    _replay(fifo, plain)
    assert fifo[0]["trial"] in plain.stopped


def test_a_rung_whose_kept_trials_left_the_floor_stops_the_trials_below_it() -> None:
    rungs = AsyncRungs([2], reduction_factor=2)
    assert not rungs.on_result("a", 2, {"metrics/mAP50-95": 0.05})
    assert not rungs.on_result("b", 2, {"metrics/mAP50-95": 0.08})
    assert rungs.on_result("c", 2, {"metrics/mAP50-95": 0.002, "val/box_loss": 1.0})  # below the floor
    assert rungs.on_result("d", 2, {"metrics/mAP50-95": 0.03})  # off the floor, below the median
    assert not rungs.on_result("e", 2, {"metrics/mAP50-95": 0.09})
    assert not rungs.on_result("a", 3, {"metrics/mAP50-95": 0.0})  # not a rung: never stopped there
    assert rungs.stopped == {"c": 2, "d": 2}


def test_a_rung_still_within_the_noise_floor_stops_nothing() -> None:
    rungs = AsyncRungs([2], reduction_factor=2)
    for i, m in enumerate([0.004, 0.009, 0.0, 0.001, 0.0]):
        assert not rungs.on_result(f"t{i}", 2, {"metrics/mAP50-95": m, "val/box_loss": 1.0 + i})  # worse and worse
    assert rungs.stopped == {}


def test_rung_rules_refuse_bad_settings() -> None:
    from detune.errors import ConfigError

    with pytest.raises(ConfigError, match="reduction_factor"):
        AsyncRungs([2], reduction_factor=1)
    with pytest.raises(ConfigError, match="floor"):
        AsyncRungs([2], floor=-0.1)
