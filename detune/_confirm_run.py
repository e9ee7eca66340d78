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
from detune.study_files import StudyResult, write_atomic

CONFIRM_FILE = "confirm.json"


def run_confirmation(study: StudyConfig, result: StudyResult, *,
                     train: Callable[[TrainConfig], Any]) -> tuple[StudyResult, dict[str, float]]:
    """Retrain, aggregate, rewrite best.yaml; returns the updated result and metrics for the parent run
    (``confirm/best_mean``, ``confirm/best_std``, ``confirm/baseline_mean``, ...). Writes ``confirm.json``.
    ``train`` runs one config untracked and returns its ``TrainResult`` (the study passes ``training.run``)."""

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
    for trial in chosen:
        params = {k: rows[trial][k] for k in keys if k in rows[trial]}
        for seed in seeds:
            cfg = from_dict({**apply_params(study.train.to_dict(), params), "seed": seed, "exist_ok": True,
                             "project": str(study.output_dir / "confirm"), "name": f"{trial}-seed{seed}"})
            run = train(cfg)
            values = [r.get(study.metric, math.nan) for r in run.history] if run.status == "completed" else []
            finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
            scores.setdefault(trial, []).append(max(finite, key=lambda v: sign * v) if finite else math.nan)
    confirmed = aggregate(scores)
    best = choose_best(confirmed, baseline=baseline, mode=study.mode)
    params = {k: rows[best["trial_id"]][k] for k in keys if k in rows[best["trial_id"]]}
    config = apply_params(study.train.to_dict(), params)
    summary = {"seeds": seeds, "trials": chosen, "baseline": baseline, "scores": scores, "confirmed": confirmed,
               "best": best}
    write_atomic(study.output_dir / CONFIRM_FILE, json.dumps(summary, indent=1, default=str))
    mean, std = confirmed[best["trial_id"]]["mean"], confirmed[best["trial_id"]]["std"]
    header = (f"# best trial {best['trial_id']} of study {study.name} after confirmation: {study.metric} = "
              f"{mean:.6g} +- {std:.3g} (mean +- sd over seeds {seeds}); see {CONFIRM_FILE}\n"
              f"# re-run with: detune train {study.output_dir / 'best.yaml'}\n")
    best_yaml = write_atomic(study.output_dir / "best.yaml", header + yaml.safe_dump(config, sort_keys=False))
    metrics = {"confirm/best_mean": mean, "confirm/best_std": std}
    if baseline is not None and confirmed[baseline]["n"]:
        metrics.update({"confirm/baseline_mean": confirmed[baseline]["mean"],
                        "confirm/baseline_std": confirmed[baseline]["std"]})
    return dataclasses.replace(result, best_config=config, best_params=params, best_yaml=best_yaml), metrics


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
