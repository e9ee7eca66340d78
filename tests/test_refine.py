"""Zoom-in search, ``refine: {rounds, factor}``: the narrowing rules (pure), the study settings it refuses, and
a refined study on a real local Ray (fake trainer): the rounds, their narrowed ranges around the best trial,
trials.csv's round column, MLflow's detune.round tags. Its resume mid-study: test_study_lifecycle's Ctrl-C test."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import yaml

from detune import _fake
from detune.errors import ConfigError
from detune.refine import RefineSettings, narrow, parse_refine, round_sizes
from detune.search_space import Dim
from detune.study import load_study
from detune.tuning import tune


def test_round_sizes_split_the_trials_with_the_larger_rounds_first() -> None:
    assert round_sizes(8, 2) == [4, 4]
    assert round_sizes(10, 3) == [4, 3, 3]
    assert sum(round_sizes(31, 4)) == 31


def test_narrow_keeps_each_dimension_inside_its_range_around_the_best_value() -> None:
    dims = {"lr0": Dim("lr0", "loguniform", (1e-4, 1e-1)), "warmup_epochs": Dim("warmup_epochs", "uniform", (0.0, 6.0)),
            "batch": Dim("batch", "quniform", (8, 64, 8)), "nbs": Dim("nbs", "randint", (1, 100)),
            "scheduler": Dim("scheduler", "choice", ("linear", "cosine")), "lrf": Dim("lrf", "loguniform", (0.01, 1.0))}
    out = narrow(dims, {"lr0": 0.01, "warmup_epochs": 0.5, "batch": 32, "nbs": 99, "scheduler": "cosine"}, 3.0)
    assert out["lr0"].args == pytest.approx((0.01 / 3, 0.03))  # log: x[1/3, 3]
    assert out["warmup_epochs"].args == pytest.approx((0.0, 2.0))  # linear: a third of the width, shifted inside
    low, high, q = out["batch"].args
    assert q == 8 and low <= 32 <= high and (low - 8) % 8 == 0 and high - low <= 64 / 3 + 16
    assert out["nbs"].args[1] == 100 and out["nbs"].args[0] <= 99 and out["nbs"].args[1] - out["nbs"].args[0] <= 34
    assert out["scheduler"] == dims["scheduler"] and out["lrf"] == dims["lrf"]  # categorical; not in best
    edge = narrow({"lr0": dims["lr0"]}, {"lr0": 1e-4}, 3.0)["lr0"].args
    assert edge == pytest.approx((1e-4, 3e-4))  # clipped at the range's end
    twice = narrow(out, {"lr0": 0.012}, 3.0)["lr0"].args
    assert twice[0] == pytest.approx(0.012 / 3) and twice[1] == pytest.approx(0.03)  # inside the last round's


@pytest.mark.parametrize(("raw", "message"), [
    ({"rounds": 1}, r"refine.rounds \(1\) must be an integer >= 2"),
    ({"rounds": "2"}, r"refine.rounds \('2'\) must be an integer"),
    ({"factor": 1}, r"refine.factor \(1\) must be a number > 1"),
    ({"factor": float("inf")}, r"refine.factor \(inf\)"),
    ({"rouns": 2}, r"refine.rouns is unknown; did you mean rounds\?"),
    ("yes", r"refine \('yes'\) must be a mapping"),
    ({"rounds": 5}, r"num_samples \(8\) < 2 x refine.rounds \(5\); raise num_samples to 10"),
])
def test_bad_refine_settings_name_the_field_the_value_and_the_fix(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_refine(raw, num_samples=8)


def test_refine_defaults_and_off() -> None:
    assert parse_refine(True, num_samples=8) == RefineSettings(rounds=2, factor=3.0)
    assert parse_refine(False, num_samples=8) is None and parse_refine(None, num_samples=8) is None


@pytest.mark.parametrize(("changes", "message"), [
    ({"search": "grid", "search_space": {"lr0": {"grid": [0.01, 0.02]}}}, "refine cannot narrow the grid"),
    ({"search": "random", "search_space": {"lr0": {"grid": [0.01, 0.02]}}}, "refine cannot narrow the grid"),
    ({"search": "bohb"}, "not search: bohb"),
    ({"search": "random", "trial_scheduler": "pbt"}, "trial_scheduler: pbt"),
])
def test_a_study_refuses_refine_where_rounds_cannot_work(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_study({"train": {"epochs": 4}, "output_dir": str(tmp_path), "num_samples": 8,
                    "search_space": {"lr0": {"loguniform": [1e-4, 1e-1]}}, "refine": True, **changes})


SPACE = {"lr0": {"loguniform": [1.0e-4, 1.0e-1]}, "warmup_epochs": {"uniform": [0.0, 1.5]},
         "scheduler": {"choice": ["linear", "cosine"]}}


def _refined(tmp_path: Path, data: Path, **changes: Any) -> dict[str, Any]:
    return {"name": "zoom", "output_dir": str(tmp_path / "out"),
            "train": {"data": str(data), "epochs": 2, "imgsz": 32, "device": "cpu", "warmup_epochs": 0.0},
            "search_space": SPACE, "search": "random", "trial_scheduler": "fifo", "num_samples": 6,
            "max_concurrent_trials": 2, "refine": {"rounds": 2, "factor": 3}, "confirm": False,
            "resources_per_trial": {"cpu": 1}, "tracking": False, **changes}


def _assert_inside(configs: list[dict[str, Any]], best: dict[str, Any]) -> None:
    """Each config within the round-2 space around ``best``: lr0 x[1/3, 3], warmup_epochs a third of [0, 1.5]."""
    lr, warmup = float(best["lr0"]), float(best["warmup_epochs"])
    start = min(max(warmup - 0.25, 0.0), 1.0)
    for c in configs:
        assert lr / 3 * (1 - 1e-9) <= float(c["lr0"]) <= lr * 3 * (1 + 1e-9), (lr, c)
        assert start - 1e-9 <= float(c["warmup_epochs"]) <= start + 0.5 + 1e-9, (warmup, c)


def _check_rounds(out: Path, per_round: int) -> list[dict[str, str]]:
    """trials.csv: ``per_round`` trials a round; every round-2 trial inside the space around round 1's best."""
    rows = list(csv.DictReader((out / "trials.csv").read_text().splitlines()))
    assert [r["round"] for r in rows].count("1") == per_round and [r["round"] for r in rows].count("2") == per_round
    best = max((r for r in rows if r["round"] == "1"), key=lambda r: float(r["best_metric"]))
    _assert_inside([r for r in rows if r["round"] == "2"], best)
    return rows


@pytest.mark.parametrize("search", ["optuna", "hyperopt", "random"])
def test_the_refine_searcher_waits_for_a_round_then_searches_around_its_best(tmp_path: Path, search: str) -> None:
    """The searcher alone (no Ray trials): each round's searcher is the study's own, round 2 starts when round 1
    has ended, inside the narrowed space; its state survives save and restore (what --resume loads)."""
    from detune._searchers import RefineSearcher
    from detune.tuning import _new_search_alg

    if search == "hyperopt":
        pytest.importorskip("hyperopt")
    study = load_study({"train": {"epochs": 4, "warmup_epochs": 0.0}, "output_dir": str(tmp_path),
                        "search_space": SPACE,
                        "search": search, "num_samples": 8, "refine": True, "confirm": False})
    searcher = _new_search_alg(study, {k: d for k, d in study.search_space.items()})
    assert isinstance(searcher, RefineSearcher)
    first = [searcher.suggest(f"a{i}") for i in range(4)]
    assert first[0]["lr0"] == 0.01 and {c["detune_round"] for c in first} == {1}  # the baseline first
    assert searcher.suggest("a4") is None  # round 1 still running
    for i, c in enumerate(first):
        searcher.on_trial_result(f"a{i}", {"metrics/mAP50-95": _fake.score(c["lr0"], 2), "training_iteration": 1})
        searcher.on_trial_complete(f"a{i}", {"metrics/mAP50-95": _fake.score(c["lr0"], 1)})
    best = max(first, key=lambda c: _fake.score(c["lr0"], 2))  # each trial's best reported value ranks it
    saved = tmp_path / "searcher.pkl"
    searcher.save(str(saved))
    second = [searcher.suggest(f"b{i}") for i in range(4)]
    assert {c["detune_round"] for c in second} == {2}
    _assert_inside(second, best)
    assert searcher.suggest("b4") == "FINISHED"
    again = _new_search_alg(study, dict(study.search_space))
    again.restore(str(saved))
    assert [again.suggest(f"c{i}")["detune_round"] for i in range(4)] == [2] * 4


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_refined_study_runs_its_second_round_around_the_first_rounds_best(tmp_path: Path,
                                                                            shapes_yaml: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = tune(_refined(tmp_path, shapes_yaml, tracking=uri), fit=_fake.fit)
    rows = _check_rounds(result.output_dir, 3)
    assert all(r["status"] == "completed" for r in rows)
    ended = {r.metrics["detune_trial_id"]: r.metrics_dataframe["timestamp"] for r in result.result_grid}
    round_1 = {r["trial_id"] for r in rows if r["round"] == "1"}
    assert max(ended[t].max() for t in round_1) <= min(ended[t].min() for t in ended if t not in round_1)
    assert "detune_round" not in result.best_params and "round" not in result.best_params
    assert "detune_round" not in yaml.safe_load(result.best_yaml.read_text())
    assert "round=2" in result.report.read_text()  # the report's trials table
    client = MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    tags = {r.data.tags["detune.trial_id"]: r.data.tags.get("detune.round") for r in runs
            if "detune.trial_id" in r.data.tags}
    assert tags == {r["trial_id"]: r["round"] for r in rows}
    parent = next(r for r in runs if r.data.tags.get("detune.kind") == "study")
    assert parent.data.params["refine.rounds"] == "2" and parent.data.params["refine.factor"] == "3.0"
