"""Zoom-in search (issue 16 section 3): ``refine: {rounds: 2, factor: 3}``.

"If you see a good result, focus on that area and try more values nearby." A refined study splits its
``num_samples`` into rounds; each round after the first narrows every numeric dimension around the best
trial so far (a log dimension to x[1/factor, factor] of the best value, a linear one to 1/factor of its
width, both kept inside the original range) and searches again with a fresh searcher. Categorical
dimensions keep all their values. Pure: settings, round sizes and narrowing; running the rounds is
detune.tuning's (one Ray experiment, so one study on disk and in MLflow, resumable).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from detune._checks import settings_block
from detune.errors import ConfigError
from detune.search_space import Dim

__all__ = ["ROUND_KEY", "RefineSettings", "narrow", "parse_refine", "round_sizes"]

ROUND_KEY = "detune_round"  # the round (1, 2, ...) in a trial's config; trials.csv column "round"


@dataclasses.dataclass(frozen=True)
class RefineSettings:
    rounds: int = 2
    factor: float = 3.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_refine(raw: Any, *, num_samples: int) -> RefineSettings | None:
    """The study's ``refine`` setting: a mapping, true (the defaults), false or absent (None: off).

    Raises:
        ConfigError: naming ``refine.<key>``, the value and the fix.
    """
    settings = settings_block(raw, "refine", RefineSettings, "{rounds: 2, factor: 3}")
    if settings is None:
        return None
    rounds, factor = settings.rounds, settings.factor
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 2:
        raise ConfigError(f"refine.rounds ({rounds!r}) must be an integer >= 2 (one coarse round, then zoom-ins)")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 1:
        raise ConfigError(f"refine.factor ({factor!r}) must be a number > 1: each round narrows a log dimension to "
                          "x[1/factor, factor] of the best value and a linear one to 1/factor of its width")
    if num_samples < 2 * rounds:
        raise ConfigError(f"refine needs at least 2 trials a round: num_samples ({num_samples}) < 2 x refine.rounds "
                          f"({rounds}); raise num_samples to {2 * rounds} or lower refine.rounds")
    return dataclasses.replace(settings, factor=float(factor))


def round_sizes(num_samples: int, rounds: int) -> list[int]:
    """``num_samples`` split into ``rounds`` near-equal rounds, the larger ones first (the coarse round)."""
    base, extra = divmod(num_samples, rounds)
    return [base + (i < extra) for i in range(rounds)]


def narrow(dims: Mapping[str, Dim], best: Mapping[str, Any], factor: float) -> dict[str, Dim]:
    """The search space of the next round: every numeric dimension narrowed around ``best`` (its value in
    the best trial so far) inside its current range; other dimensions, and ones ``best`` lacks, unchanged."""
    return {key: _narrow(dim, best[key], factor) if key in best else dim for key, dim in dims.items()}


def _narrow(dim: Dim, value: Any, factor: float) -> Dim:
    if dim.kind not in ("loguniform", "uniform", "quniform", "randint") or not isinstance(value, (int, float)):
        return dim
    low, high = dim.args[0], dim.args[1]
    if dim.kind == "loguniform":
        return dataclasses.replace(dim, args=(max(low, value / factor), min(high, value * factor)))
    width = (high - low) / factor
    start = min(max(value - width / 2, low), high - width)  # the narrowed window, shifted back inside the range
    if dim.kind == "uniform":
        return dataclasses.replace(dim, args=(start, start + width))
    if dim.kind == "quniform":
        q = dim.args[2]
        first = low + math.floor((start - low) / q) * q
        last = low + math.ceil((start + width - low) / q) * q
        return dataclasses.replace(dim, args=(first, min(high, max(last, first + q)), q))
    first = math.floor(start)  # randint: high is exclusive
    return dataclasses.replace(dim, args=(first, min(high, max(math.ceil(start + width), first + 1))))
