"""search: optuna with search_params.sampler tpe | gp | cmaes: built before Ray starts, baseline first."""

from __future__ import annotations

import importlib.util
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
    with pytest.raises(ConfigError, match=r"search_params.sampler \('gps'\) .*tpe, gp, cmaes.*did you mean gp"):
        check_study(_study(tmp_path, "gps"))
