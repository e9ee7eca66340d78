"""Confirmation stage of a study (issue 15 section 2): which trials to retrain, and how best.yaml is chosen.

Short-budget winners often do not carry over (ultralytics#6057; issue 15: a study's winner scored 0.229 in
its trial and 0.086 retrained). So the top ``top_k`` distinct trials and the baseline are retrained at the
full epochs with ``seeds`` new training seeds each, and best.yaml goes to the best confirmed mean, which
must beat the baseline's. Pure: selection and arithmetic only; running the retrainings is detune.tuning's.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from detune._checks import settings_block
from detune.config import MAX_SEED
from detune.errors import ConfigError

_ELIGIBLE = ("completed", "stopped", "interrupted")  # trained and scored; diverged / failed trials are not


@dataclasses.dataclass(frozen=True)
class ConfirmSettings:
    """``confirm: {top_k: 2, seeds: 2}``: retrain the best ``top_k`` distinct trials (and the baseline) with
    ``seeds`` new training seeds each."""

    top_k: int = 2
    seeds: int = 2

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def parse_confirm(raw: Any, *, num_samples: int) -> ConfirmSettings | None:
    """The study's ``confirm`` setting: a mapping, true (the defaults), false or absent (None: off).

    Raises:
        ConfigError: naming ``confirm.<key>``, the value and the fix.
    """
    settings = settings_block(raw, "confirm", ConfirmSettings, "{top_k: 2, seeds: 2}")
    if settings is None:
        return None
    fields = [f.name for f in dataclasses.fields(ConfirmSettings)]
    for key in fields:
        value = getattr(settings, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"confirm.{key} ({value!r}) must be an integer >= 1; e.g. confirm: {{top_k: 2, "
                              "seeds: 2}")
    if settings.top_k > num_samples:
        raise ConfigError(f"confirm.top_k ({settings.top_k}) must be at most num_samples ({num_samples}); lower "
                          "top_k or raise num_samples")
    return settings


def select_top(rows: Sequence[Mapping[str, Any]], param_keys: Sequence[str], *, top_k: int,
               mode: str) -> list[str]:
    """Trial ids of the best ``top_k`` trials that trained and scored (completed, stopped, interrupted; a
    finite ``best_metric``), best first, one per distinct set of searched params (a repeated point is
    retrained once)."""
    sign = 1 if mode == "max" else -1
    scored = [r for r in rows if r.get("status") in _ELIGIBLE and isinstance(r.get("best_metric"), (int, float))
              and math.isfinite(r["best_metric"])]
    scored.sort(key=lambda r: -sign * r["best_metric"])
    chosen: list[str] = []
    seen: set[tuple[Any, ...]] = set()
    for row in scored:
        point = tuple(_key(row.get(k)) for k in param_keys)
        if point in seen:
            continue
        seen.add(point)
        chosen.append(str(row["trial_id"]))
        if len(chosen) == top_k:
            break
    return chosen


def _key(value: Any) -> Any:
    return round(value, 12) if isinstance(value, float) else value


def confirm_seeds(*, train_seed: int, n: int) -> list[int]:
    """``n`` training seeds other than the search's, the same in every run of the study."""
    return [(train_seed + 1000 * (i + 1)) % (MAX_SEED + 1) for i in range(n)]


def aggregate(scores: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Per trial: mean, sample standard deviation, min, max and number of its confirmed scores (NaN scores,
    failed or diverged retrainings, are left out; a trial with none has n 0 and NaN statistics)."""
    out: dict[str, dict[str, float]] = {}
    for trial, values in scores.items():
        good = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if not good:
            out[trial] = {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
            continue
        out[trial] = {"mean": statistics.fmean(good), "std": statistics.stdev(good) if len(good) > 1 else 0.0,
                      "min": min(good), "max": max(good), "n": len(good)}
    return out


def choose_best(confirmed: Mapping[str, Mapping[str, float]], *, baseline: str | None,
                mode: str) -> dict[str, Any]:
    """The trial best.yaml goes to: the best confirmed mean, unless it does not beat the baseline's mean
    (then the baseline). Returns ``trial_id``, ``mean``, ``beats_baseline``, ``margin`` (over the
    baseline's mean, in the better direction) and ``beyond_spread`` (margin larger than the min-max spread
    over seeds of either side).

    Raises:
        ConfigError: when no trial has a confirmed score.
    """
    sign = 1 if mode == "max" else -1
    scored = {t: s for t, s in confirmed.items() if s.get("n", 0) > 0}
    if not scored:
        raise ConfigError("the confirmation stage has no confirmed run with a finite score; every retraining "
                          "failed or diverged: see trials.csv and the confirm runs")
    best = max(scored, key=lambda t: sign * scored[t]["mean"])
    out: dict[str, Any] = {"trial_id": best, "mean": scored[best]["mean"], "beats_baseline": None,
                           "margin": None, "beyond_spread": None}
    if baseline is None or baseline not in scored:
        return out
    base = scored[baseline]
    margin = sign * (scored[best]["mean"] - base["mean"])
    spread = max(scored[best]["max"] - scored[best]["min"], base["max"] - base["min"])
    beats = best != baseline and margin > 0
    return {"trial_id": best if beats else baseline, "mean": scored[best if beats else baseline]["mean"],
            "beats_baseline": beats, "margin": margin, "beyond_spread": beats and margin > spread}
