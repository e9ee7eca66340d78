"""Run the confirmation stage after a study's search (``confirm: {top_k, seeds}``): retrain the top-k
distinct trials and the baseline with new seeds, in the driver, one after the other, then choose best.yaml
on the confirmed mean (``detune.confirm`` holds the pure rules). No heavy import at module level."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import yaml

from detune.config import TrainConfig, from_dict
from detune.confirm import aggregate, choose_best, confirm_seeds, select_top
from detune.search_space import apply_params, baseline_point
from detune.study import StudyConfig
from detune.study_files import StudyResult, write_atomic, write_trials_csv

CONFIRM_FILE = "confirm.json"
CONFIRM_COLUMNS = ("confirm/mean", "confirm/std", "confirm/n")  # trials.csv columns of the retrained trials
TEST_KEYS = ("test/mAP50-95", "test/mAP50")  # held-out scores (TrainConfig.score_test)


def run_confirmation(study: StudyConfig, result: StudyResult, *, train: Callable[[TrainConfig], Any],
                     base: dict[str, Any] | None = None,
                     score_test: bool = False,
                     progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[StudyResult, dict[str, float]]:
    """Retrain, aggregate, rewrite best.yaml and trials.csv; returns the updated result and metrics for the
    parent run (``confirm/best_mean``, ``confirm/baseline_mean``, ..., and with ``score_test``
    ``test/mAP50-95``, ``test/mAP50`` of the chosen trial and ``baseline/test/...``). Writes ``confirm.json``.

    ``train`` runs one config untracked and returns its ``TrainResult`` (the study passes ``training.run``);
    ``base`` is the train mapping to retrain from (default the study's); ``score_test`` scores every retraining
    on the data's held-out test split (``TrainConfig.score_test``); ``progress`` gets a row (trial_id
    ``<trial>/seed<N>``, status running or completed, params, epoch, metric, best) as each retraining starts
    and ends."""
    settings = study.confirm
    if settings is None:
        return result, {}
    keys = list(study.search_space)
    chosen = select_top(result.trials, keys, top_k=settings.top_k, mode=study.mode)
    baseline = _baseline_trial(study, result.trials)
    if baseline is not None and baseline not in chosen:
        chosen.append(baseline)
    rows = {str(r["trial_id"]): r for r in result.trials}
    seeds = confirm_seeds(train_seed=study.train.seed, n=settings.seeds)
    sign = 1 if study.mode == "max" else -1
    scores: dict[str, list[float]] = {}
    tests: dict[str, dict[str, list[float]]] = {key: {} for key in TEST_KEYS}
    for trial in chosen:
        params = {k: rows[trial][k] for k in keys if k in rows[trial]}
        for seed in seeds:
            cfg = from_dict({**apply_params(base or study.train.to_dict(), params), "seed": seed, "exist_ok": True,
                             "project": str(study.output_dir / "confirm"), "name": f"{trial}-seed{seed}",
                             "score_test": score_test})
            row = {"trial_id": f"{trial}/seed{seed}", "status": "running", "params": params, "epoch": 0,
                   "metric": None, "best": None}
            if progress is not None:
                progress(dict(row))
            run = train(cfg)
            values = [r.get(study.metric, math.nan) for r in run.history] if run.status == "completed" else []
            finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
            scores.setdefault(trial, []).append(max(finite, key=lambda v: sign * v) if finite else math.nan)
            if progress is not None:
                best_value = scores[trial][-1] if finite else None
                progress({**row, "status": run.status, "epoch": len(run.history),
                          "metric": values[-1] if finite else None, "best": best_value})
            for key in TEST_KEYS if score_test else ():
                tests[key].setdefault(trial, []).append(run.info.get("test", {}).get(key, math.nan))
    confirmed = aggregate(scores)
    tested = {key: aggregate(per_trial) for key, per_trial in tests.items() if per_trial}
    best = choose_best(confirmed, baseline=baseline, mode=study.mode)
    params = {k: rows[best["trial_id"]][k] for k in keys if k in rows[best["trial_id"]]}
    config = apply_params(study.train.to_dict(), params)
    summary = {"seeds": seeds, "trials": chosen, "baseline": baseline, "metric": study.metric, "scores": scores,
               "confirmed": confirmed, "best": best, "test": tested}
    write_atomic(study.output_dir / CONFIRM_FILE, json.dumps(summary, indent=1, default=str))
    mean, std = confirmed[best["trial_id"]]["mean"], confirmed[best["trial_id"]]["std"]
    header = (f"# best trial {best['trial_id']} of study {study.name} after confirmation: {study.metric} = "
              f"{mean:.6g} +- {std:.3g} (mean +- sd over seeds {seeds}); see {CONFIRM_FILE}\n"
              f"# re-run with: detune train {study.output_dir / 'best.yaml'}\n")
    best_yaml = write_atomic(study.output_dir / "best.yaml", header + yaml.safe_dump(config, sort_keys=False))
    trials = _with_confirmed(result.trials, confirmed, tested)
    write_trials_csv(study, trials, extra=[*CONFIRM_COLUMNS, *tested])
    metrics = {"confirm/best_mean": mean, "confirm/best_std": std}
    if baseline is not None and confirmed[baseline]["n"]:
        metrics.update({"confirm/baseline_mean": confirmed[baseline]["mean"],
                        "confirm/baseline_std": confirmed[baseline]["std"]})
    for key, per_trial in tested.items():
        for prefix, trial in (("", best["trial_id"]), ("baseline/", baseline)):
            if trial is not None and per_trial.get(trial, {}).get("n"):
                metrics[f"{prefix}{key}"] = per_trial[trial]["mean"]
    return dataclasses.replace(result, best_config=config, best_params=params, best_yaml=best_yaml,
                               trials=trials, confirm=summary), metrics


def _with_confirmed(trials: list[dict[str, Any]], confirmed: dict[str, dict[str, float]],
                    tested: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """The trial rows with the confirmed mean and sd and the mean test scores of the retrained trials."""
    out = []
    for row in trials:
        trial = str(row["trial_id"])
        extra: dict[str, Any] = {}
        if trial in confirmed:
            extra = {"confirm/mean": confirmed[trial]["mean"], "confirm/std": confirmed[trial]["std"],
                     "confirm/n": confirmed[trial]["n"]}
            extra.update({key: per_trial[trial]["mean"] for key, per_trial in tested.items() if trial in per_trial})
        out.append({**row, **extra})
    return out


def _baseline_trial(study: StudyConfig, trials: list[dict[str, Any]]) -> str | None:
    """The trial that ran the train config's own values (baseline_first), if any."""
    point = baseline_point(study.search_space, study.train)
    if point is None:
        return None
    for row in trials:
        if all(_same(row.get(k), v) for k, v in point.items()):
            return str(row["trial_id"])
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return bool(a == b)
