"""The default prior through a real local Ray study (fake trainer: fast, no Ultralytics)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from detune import _fake
from detune.tuning import tune

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


@pytest.mark.parametrize(("search", "params"), [("optuna", {}), ("random", {}), ("optuna", {"sampler": "gp"})])
def test_a_study_without_search_space_searches_the_prior_baseline_first(tmp_path: Path, shapes_yaml: Path,
                                                                         search: str, params: dict) -> None:
    result = tune({"name": f"prior-{search}", "output_dir": str(tmp_path / "out"), "search": search,
                   "search_params": params,
                   "train": {"data": str(shapes_yaml), "epochs": 6, "device": "cpu", "imgsz": 32},
                   "trial_scheduler": "detection", "num_samples": 3, "max_concurrent_trials": 1,
                   "tracking": False, "resources_per_trial": {"cpu": 1}}, fit=_fake.fit)
    assert len(result.trials) == 3 and {t["status"] for t in result.trials} <= {"completed", "stopped"}
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    first = rows[0]
    assert (first["optimizer"], first["scheduler"], float(first["lr0_scale"])) == ("SGD", "linear", 1.0)
    assert (float(first["lr0"]), float(first["momentum"])) == (0.01, 0.937)  # what the trial trained with
    for row in rows:  # lr0 follows the family: x[1/10, 10] around 0.01 (SGD) or 0.001 (AdamW)
        centre = 0.01 if row["optimizer"] == "SGD" else 0.001
        assert float(row["lr0"]) == pytest.approx(centre * float(row["lr0_scale"]))
    assert len({r["lr0_scale"] for r in rows}) == 3  # the other trials sample the prior
    best = yaml.safe_load(result.best_yaml.read_text())
    assert "lr0_scale" not in best and "one_minus_momentum" not in best  # best.yaml holds real settings
    assert 0 < best["lr0"] <= 0.1 and 0.7 <= best["momentum"] <= 0.98
