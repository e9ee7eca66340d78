"""``search_params.sampler: local``: an Optuna sampler that searches around the best trial so far.

Ultralytics' genetic tuner mutates its best configurations by small multiplicative steps; this is the same
idea as an Optuna sampler, so Ray's ``OptunaSearch`` runs it like TPE or GP. Each new trial copies the
parent (the best finished trial, or the first trial, the baseline, while none has finished) and moves every
numeric dimension by a Gaussian step of ``scale`` times its range (in log space for log dimensions);
a categorical dimension keeps the parent's value with probability ``keep``, else takes another at random.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState


class LocalSearchSampler(optuna.samplers.BaseSampler):
    def __init__(self, scale: float = 0.15, keep: float = 0.8, seed: int | None = None) -> None:
        self._scale, self._keep = scale, keep
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        parent = _parent(study, trial)
        if parent is None or param_name not in parent.params:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        value = parent.params[param_name]
        if isinstance(param_distribution, CategoricalDistribution):
            choices = param_distribution.choices
            return value if self._rng.rand() < self._keep else choices[self._rng.randint(len(choices))]
        assert isinstance(param_distribution, (FloatDistribution, IntDistribution))
        return _step(value, param_distribution, self._scale * self._rng.randn())


def _parent(study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
    finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if finished:
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        return pick(finished, key=lambda t: t.value)
    started = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number and t.params]
    return started[0] if started else None


def _step(value: float, dist: FloatDistribution | IntDistribution, z: float) -> float:
    """``value`` moved by ``z`` times the range of ``dist`` (log space for a log dimension), kept inside it."""
    low, high = dist.low, dist.high
    shift = z * (math.log(high) - math.log(low) if dist.log else high - low)
    moved = min(max(math.exp(math.log(value) + shift) if dist.log else value + shift, low), high)
    if dist.step is not None:
        moved = low + round((moved - low) / dist.step) * dist.step
        moved = min(max(moved, low), high)
    return int(round(moved)) if isinstance(dist, IntDistribution) else moved
