"""detune's own searchers, run by detune.tuning (the Ray side of studies), beside the ones Ray and Optuna
ship. In their own module because a subclass needs its base class (Ray's ``Searcher``, Optuna's
``BaseSampler``) at definition, and ``detune.tuning`` imports Ray and Optuna only when a study runs.

- ``LocalSearchSampler`` (``search_params.sampler: local``): an Optuna sampler that searches around the best
  trial so far. Ultralytics' genetic tuner mutates its best configurations by small multiplicative steps;
  this is the same idea as an Optuna sampler, so Ray's ``OptunaSearch`` runs it like TPE or GP. Each new
  trial copies the parent (the best finished trial, or the first trial, the baseline, while none has
  finished) and moves every numeric dimension by a Gaussian step of ``scale`` times its range (in log space
  for log dimensions); a categorical dimension keeps the parent's value with probability ``keep``, else
  takes another at random.
- ``RefineSearcher`` (``refine``, detune.refine): rounds of the study's searcher over narrowing spaces. One
  searcher runs every round inside one Ray experiment, so a refined study is one study on disk and in
  MLflow, and ``Tuner.restore`` resumes it mid-round (Ray saves this searcher's state with the experiment).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from ray import cloudpickle
from ray.tune.search import Searcher

from detune.refine import ROUND_KEY, narrow
from detune.search_space import Dim


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


class RefineSearcher(Searcher):
    """Round ``r`` asks ``make(dims, r)`` (a searcher with metric and mode set) for ``sizes[r]`` trials; the
    next round starts when they have all ended, over ``narrow(dims, best, factor)`` around the best trial
    so far (its best reported metric, so a trial the scheduler stopped counts with what it reached)."""

    def __init__(self, make: Callable[[dict[str, Dim], int], Any], dims: Mapping[str, Dim], sizes: list[int],
                 factor: float, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self._make, self._dims, self._sizes, self._factor = make, dict(dims), list(sizes), factor
        self._round, self._issued = 0, 0
        self._inner = make(self._dims, 0)
        self._pending: set[str] = set()
        self._configs: dict[str, dict[str, Any]] = {}
        self._scores: dict[str, float] = {}

    @property
    def dims(self) -> dict[str, Dim]:
        """The current round's search space."""
        return dict(self._dims)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # every round's space is built here; metric and mode are the study's

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        while self._issued >= self._sizes[self._round]:
            if self._round + 1 == len(self._sizes):
                return Searcher.FINISHED
            if self._pending:
                return None  # the round's last trials are still running: the next round needs their results
            self._next_round()
        config = self._inner.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return config
        self._issued += 1
        self._pending.add(trial_id)
        self._configs[trial_id] = dict(config)
        return {**config, ROUND_KEY: self._round + 1}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._score(trial_id, result)
        if trial_id in self._pending:
            self._inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._score(trial_id, result)
        if trial_id in self._pending:
            self._pending.discard(trial_id)
            self._inner.on_trial_complete(trial_id, result=result, error=error)

    def _score(self, trial_id: str, result: Mapping[str, Any] | None) -> None:
        value = (result or {}).get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        signed = value if self.mode == "max" else -value
        self._scores[trial_id] = max(signed, self._scores.get(trial_id, -math.inf))

    def _next_round(self) -> None:
        scored = [t for t in self._scores if t in self._configs]
        if scored:  # no trial scored (all failed or diverged): the next round searches the same space again
            best = max(scored, key=self._scores.__getitem__)
            self._dims = narrow(self._dims, self._configs[best], self._factor)
        self._round += 1
        self._issued = 0
        self._inner = self._make(self._dims, self._round)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:  # cloudpickle, as Ray saves searchers: HyperOpt's holds lambdas
            cloudpickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(cloudpickle.load(f))
