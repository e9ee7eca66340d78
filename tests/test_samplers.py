"""search: optuna with search_params.sampler tpe | gp | cmaes: built before Ray starts, baseline first."""

from __future__ import annotations

import importlib.util
import math
import statistics
from pathlib import Path

import pytest

from detune.errors import ConfigError
from detune.study import load_study
from detune.tuning import _domain, _search_alg, check_study


def _study(tmp_path: Path, sampler: object) -> object:
    return load_study({"train": {"epochs": 12}, "output_dir": str(tmp_path), "search": "optuna",
                       "num_samples": 12, "search_params": {"sampler": sampler}})


def _searcher(study: object) -> object:
    space = {k: _domain(d) for k, d in study.search_space.items()}
    return _search_alg(study, space)


@pytest.mark.parametrize(("name", "cls"), [("tpe", "TPESampler"), ("gp", "GPSampler")])
def test_a_named_sampler_is_optunas_with_the_studys_seed_and_the_baseline_first(tmp_path: Path, name: str,
                                                                                cls: str) -> None:
    study = _study(tmp_path, name)
    check_study(study)
    searcher = _searcher(study)
    assert type(searcher._sampler).__name__ == cls
    assert searcher._points_to_evaluate[0]["lr0_scale"] == 1.0  # the prior's baseline: the config itself


def test_cmaes_starts_at_the_baseline_or_names_the_missing_package(tmp_path: Path) -> None:
    study = _study(tmp_path, "cmaes")
    if importlib.util.find_spec("cmaes") is None:
        with pytest.raises(ConfigError, match="pip install cmaes"):
            check_study(study)
        return
    sampler = _searcher(study)._sampler
    assert type(sampler).__name__ == "CmaEsSampler"
    assert sampler._x0["lr0_scale"] == 1.0 and "optimizer" not in sampler._x0  # numeric dims only


def test_an_unknown_sampler_name_is_refused_with_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"search_params.sampler \('gps'\) .*tpe, gp, cmaes, local.*did you mean gp"):
        check_study(_study(tmp_path, "gps"))


def test_the_local_sampler_is_built_with_the_studys_seed(tmp_path: Path) -> None:
    study = _study(tmp_path, "local")
    check_study(study)
    searcher = _searcher(study)
    assert type(searcher._sampler).__name__ == "LocalSearchSampler"
    assert searcher._points_to_evaluate[0]["lr0_scale"] == 1.0


def _space() -> dict[str, object]:
    import optuna

    return {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
            "wu": optuna.distributions.FloatDistribution(0.0, 5.0),
            "bs": optuna.distributions.IntDistribution(8, 64, step=8),
            "opt": optuna.distributions.CategoricalDistribution(("SGD", "AdamW", "Adam"))}


def test_local_search_starts_around_the_running_baseline_then_moves_to_the_best_trial() -> None:
    import optuna

    from detune._searchers import LocalSearchSampler

    study = optuna.create_study(direction="maximize", sampler=LocalSearchSampler(seed=0))
    space = _space()
    study.enqueue_trial({"lr": 0.01, "wu": 3.0, "bs": 16, "opt": "SGD"})
    baseline = study.ask(space)  # still running, as under Ray's concurrency
    near = [study.ask(space) for _ in range(40)]
    for t in near:  # every dimension within the range, numeric ones near the baseline
        assert 1e-4 <= t.params["lr"] <= 1e-1 and 0 <= t.params["wu"] <= 5 and t.params["bs"] % 8 == 0
    lr_steps = [abs(math.log(t.params["lr"] / 0.01)) for t in near]
    assert statistics.median(lr_steps) < 0.25 * math.log(1e3)  # a local step, not a draw over the range
    assert sum(t.params["opt"] == "SGD" for t in near) > 20  # the parent's category kept most of the time
    study.tell(baseline, 0.1)
    for t, v in zip(near, range(40), strict=True):
        study.tell(t, 0.2 if v == 7 else 0.05)
    best = near[7].params
    after = [study.ask(space) for _ in range(40)]
    dist_best = statistics.median(abs(math.log(t.params["lr"] / best["lr"])) for t in after)
    dist_base = statistics.median(abs(math.log(t.params["lr"] / 0.01)) for t in after)
    assert dist_best < dist_base or math.isclose(best["lr"], 0.01, rel_tol=0.2)


def test_local_search_with_minimize_follows_the_lowest_value() -> None:
    import optuna

    from detune._searchers import LocalSearchSampler

    study = optuna.create_study(direction="minimize", sampler=LocalSearchSampler(seed=1))
    space = {"wu": optuna.distributions.FloatDistribution(0.0, 100.0)}
    for value in (10.0, 90.0):
        study.enqueue_trial({"wu": value})
        t = study.ask(space)
        study.tell(t, value)  # the objective is wu itself: 10 is the best
    nxt = [study.ask(space).params["wu"] for _ in range(30)]
    assert statistics.median(nxt) < 50  # around 10, not 90
