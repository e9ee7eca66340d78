"""Confirmation stage (detune.confirm): settings, top-k selection, aggregation, the choice of best.yaml."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from detune.confirm import ConfirmSettings, aggregate, choose_best, confirm_seeds, parse_confirm, select_top
from detune.errors import ConfigError
from detune.study import load_study


def _row(trial: str, metric: float, status: str = "completed", **params: object) -> dict[str, object]:
    return {"trial_id": trial, "status": status, "best_metric": metric, **params}


def test_settings_parse_validate_and_round_trip() -> None:
    assert parse_confirm({"top_k": 3, "seeds": 2}, num_samples=12) == ConfirmSettings(top_k=3, seeds=2)
    assert parse_confirm(True, num_samples=12) == ConfirmSettings()
    assert parse_confirm(False, num_samples=12) is None
    assert parse_confirm(None, num_samples=12) is None  # absent: load_study turns it on for CONFIRM_FROM trials
    assert parse_confirm({"top_k": 2}, num_samples=12) == ConfirmSettings(top_k=2, seeds=2)
    settings = ConfirmSettings(top_k=4, seeds=3)
    assert parse_confirm(settings.to_dict(), num_samples=12) == settings


@pytest.mark.parametrize(("raw", "match"), [
    ({"top_k": 0}, r"confirm.top_k \(0\) must be an integer >= 1"),
    ({"top_k": 2.5}, r"confirm.top_k"),
    ({"seeds": True}, r"confirm.seeds \(True\)"),
    ({"top_k": 20}, r"confirm.top_k \(20\) must be at most num_samples \(12\)"),
    ({"topk": 3}, r"confirm.topk is unknown.*did you mean top_k"),
    ("yes", r"confirm \('yes'\) must be"),
])
def test_bad_settings_name_the_field_the_value_and_the_fix(raw: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_confirm(raw, num_samples=12)


def test_a_study_carries_its_confirm_settings(tmp_path: Path) -> None:
    base = {"train": {"epochs": 4}, "num_samples": 8, "output_dir": str(tmp_path)}
    study = load_study({**base, "confirm": {"top_k": 2, "seeds": 3}})
    assert study.confirm == ConfirmSettings(top_k=2, seeds=3)
    assert load_study(study.to_dict()).confirm == study.confirm
    assert load_study({**base, "confirm": False}).confirm is None
    with pytest.raises(ConfigError, match="confirm.seeds"):
        load_study({**base, "confirm": {"seeds": -1}})


def test_top_k_are_the_best_distinct_trials_that_trained() -> None:
    rows = [_row("a", 0.30, lr0=0.01), _row("b", 0.50, lr0=0.02), _row("c", 0.50, lr0=0.02),  # c repeats b
            _row("d", 0.90, "diverged", lr0=1.0), _row("e", math.nan, lr0=0.03), _row("f", 0.40, "stopped", lr0=0.04),
            _row("g", 0.10, "failed", lr0=0.05), _row("h", 0.20, lr0=0.06)]
    assert select_top(rows, ["lr0"], top_k=3, mode="max") == ["b", "f", "a"]
    assert select_top(rows, ["lr0"], top_k=2, mode="min") == ["h", "a"]
    assert select_top(rows, ["lr0"], top_k=10, mode="max") == ["b", "f", "a", "h"]


def test_confirmation_seeds_are_new_and_reproducible() -> None:
    seeds = confirm_seeds(train_seed=0, n=3)
    assert len(set(seeds)) == 3 and 0 not in seeds and seeds == confirm_seeds(train_seed=0, n=3)
    assert confirm_seeds(train_seed=2**32 - 1, n=2)[0] <= 2**32 - 1


def test_aggregate_gives_mean_and_spread_of_the_confirmed_runs() -> None:
    summary = aggregate({"a": [0.3, 0.5], "b": [0.4], "c": [math.nan, 0.2]})
    assert summary["a"] == {"mean": pytest.approx(0.4), "std": pytest.approx(math.sqrt(0.02)), "min": 0.3,
                            "max": 0.5, "n": 2}
    assert summary["b"]["std"] == 0.0 and summary["b"]["n"] == 1
    assert summary["c"]["n"] == 1 and summary["c"]["mean"] == 0.2  # a failed retraining (NaN) is not a score


def test_best_yaml_goes_to_the_best_confirmed_mean_and_only_if_it_beats_the_baseline() -> None:
    confirmed = aggregate({"base": [0.30, 0.32], "a": [0.40, 0.36], "b": [0.45, 0.20]})
    best = choose_best(confirmed, baseline="base", mode="max")
    assert best["trial_id"] == "a" and best["beats_baseline"] and best["margin"] == pytest.approx(0.07)
    assert best["beyond_spread"]  # 0.07 > the larger seed spread of the two (0.04)
    worse = aggregate({"base": [0.40, 0.42], "a": [0.39, 0.41]})
    kept = choose_best(worse, baseline="base", mode="max")
    assert kept["trial_id"] == "base" and not kept["beats_baseline"]
    noisy = choose_best(aggregate({"base": [0.30, 0.40], "a": [0.36, 0.37]}), baseline="base", mode="max")
    assert noisy["trial_id"] == "a" and not noisy["beyond_spread"]
    assert choose_best(aggregate({"base": [5.0], "a": [4.0]}), baseline="base", mode="min")["trial_id"] == "a"
    assert choose_best(aggregate({"a": [0.1], "b": [0.2]}), baseline=None, mode="max")["trial_id"] == "b"
    with pytest.raises(ConfigError, match="no confirmed run"):
        choose_best(aggregate({"a": [math.nan]}), baseline=None, mode="max")



@pytest.mark.parametrize("with_test", [True, False])
def test_the_report_and_the_summary_show_the_confirmed_means_against_the_baseline(with_test: bool) -> None:
    from detune._progress import _confirm_line
    from detune.report import _confirm_lines

    confirmed = aggregate({"t1": [0.40, 0.36], "t0": [0.30, 0.32], "t2": [0.2, math.nan]})
    tested = {"test/mAP50-95": aggregate({"t1": [0.35, 0.33], "t0": [0.25, 0.27]})} if with_test else {}
    confirm = {"seeds": [1000, 2000], "trials": ["t1", "t2", "t0"], "baseline": "t0", "confirmed": confirmed,
               "best": choose_best(confirmed, baseline="t0", mode="max"), "test": tested}
    lines = _confirm_lines(confirm, "metrics/mAP50-95")
    table = [line for line in lines if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1, table  # every row has the header's cells
    assert table[2].startswith("| `t1` **best.yaml** | 0.3800 | 0.0283 | 0.3600-0.4000 |")
    assert table[3].startswith("| `t0` (baseline) | 0.3100")
    assert ("| 0.3400 |" in table[2]) is with_test
    assert "beats the baseline by 0.0700, more than the spread between seeds" in lines[-2]
    line = _confirm_line(confirm, "metrics/mAP50-95", {"lr0": 0.02})
    assert line.startswith("confirmed best metrics/mAP50-95 over seeds [1000, 2000]: 0.3800 +- 0.0283")
    assert "with lr0=0.02; baseline 0.3100 +- 0.0141" in line
    assert ("test/mAP50-95 0.3400" in line) is with_test


def test_confirm_is_refused_with_pbt(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="confirm cannot retrain PBT trials"):
        load_study({"train": {"epochs": 4}, "num_samples": 8, "output_dir": str(tmp_path), "trial_scheduler": "pbt",
                    "search_space": {"lr0": {"loguniform": [1e-3, 1e-1]}}, "confirm": True})


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize(("base_lr0", "winner_lr0", "beats"), [(0.005, 0.01, True), (0.01, 0.01, False)])
def test_a_study_with_confirm_retrains_the_top_trials_and_the_baseline(tmp_path: Path, shapes_yaml: Path,
                                                                       base_lr0: float, winner_lr0: float,
                                                                       beats: bool) -> None:
    import csv
    import json

    import yaml
    from test_test_split import with_test_split

    from detune import _fake
    from detune.tuning import tune

    calls: list = []
    data = with_test_split(shapes_yaml) if beats else shapes_yaml  # held-out scores when the data has a test split
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}" if beats else False  # the parent run gets the confirmed scores
    result = tune({"name": "confirm", "output_dir": str(tmp_path / "out"), "search": "grid", "tracking": uri,
                   "train": {"data": str(data), "epochs": 3, "device": "cpu", "imgsz": 32, "lr0": base_lr0,
                             "warmup_epochs": 0.0, "nbs": 16},
                   "search_space": {"lr0": {"grid": [0.005, 0.01, 0.04]}}, "trial_scheduler": "fifo",
                   "num_samples": 1, "max_concurrent_trials": 1, "resources_per_trial": {"cpu": 1},
                   "confirm": {"top_k": 1, "seeds": 2}}, fit=_fake.fit, progress=calls.append)
    summary = json.loads((tmp_path / "out" / "confirm.json").read_text())
    last = {r["trial_id"]: r for r in calls[-1]}  # the live display's rows: trials, then each retraining
    retrained = [f"{t}/seed{s}" for t in summary["trials"] for s in summary["seeds"]]
    assert list(last)[-len(retrained):] == retrained and {t["trial_id"] for t in result.trials} <= set(last)
    for trial in summary["trials"]:
        assert [last[f"{trial}/seed{s}"]["best"] for s in summary["seeds"]] == summary["scores"][trial]
        assert {last[f"{trial}/seed{s}"]["status"] for s in summary["seeds"]} == {"completed"}
    ids = {t["trial_id"]: t["lr0"] for t in result.trials}
    assert ids[summary["baseline"]] == base_lr0 and summary["seeds"] == [1000, 2000]
    assert {ids[t] for t in summary["trials"]} == {0.01, base_lr0}  # the top trial, plus the baseline
    for trial in summary["trials"]:  # every retraining ran, at the full epochs, in its own folder
        assert summary["confirmed"][trial]["n"] == 2
        assert all((tmp_path / "out" / "confirm" / f"{trial}-seed{s}").is_dir() for s in summary["seeds"])
    assert summary["best"]["beats_baseline"] is beats
    assert yaml.safe_load(result.best_yaml.read_text())["lr0"] == winner_lr0 == result.best_config["lr0"]
    assert "after confirmation" in result.best_yaml.read_text().splitlines()[0]
    assert result.confirm == summary
    with result.trials_csv.open(newline="") as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}
    tested = ["test/mAP50-95", "test/mAP50"] if beats else []
    assert sorted(summary["test"]) == sorted(tested)
    for trial, row in rows.items():  # the retrained trials carry their confirmed mean (and test score)
        retrained = trial in summary["trials"]
        assert (row["confirm/mean"] != "") is retrained
        if retrained:
            assert float(row["confirm/mean"]) == pytest.approx(summary["confirmed"][trial]["mean"])
        for key in tested:
            assert (row[key] != "") is retrained
            if retrained:
                assert summary["test"][key][trial]["n"] == 2
                assert float(row[key]) == pytest.approx(summary["test"][key][trial]["mean"])
    report = result.report.read_text()
    assert "## Confirmation" in report and f"`{summary['best']['trial_id']}`" in report
    assert ("| test/mAP50-95 |" in report) is beats
    if beats:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        parent = client.get_run(result.parent_run_id)
        best, base = summary["best"]["trial_id"], summary["baseline"]
        assert parent.data.metrics["confirm/best_mean"] == pytest.approx(summary["confirmed"][best]["mean"])
        assert parent.data.metrics["test/mAP50-95"] == pytest.approx(summary["test"]["test/mAP50-95"][best]["mean"])
        assert parent.data.metrics["baseline/test/mAP50-95"] == pytest.approx(
            summary["test"]["test/mAP50-95"][base]["mean"])
        assert "confirm.json" in {a.path for a in client.list_artifacts(result.parent_run_id)}
