"""The one stateful schedule: reduce the lr when validation fitness stops improving."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from detune.schedules._base import Schedule

# torch ReduceLROnPlateau's default eps: a reduction smaller than this is skipped.
_MIN_LR_CHANGE = 1e-8


@dataclass
class PlateauState:
    """What ``PlateauSchedule`` remembers between epochs (torch ReduceLROnPlateau's counters)."""

    best: float | None = None  # None until the first observation
    num_bad_epochs: int = 0
    cooldown_counter: int = 0
    n_reductions: int = 0
    last_epoch: int = -1


@dataclass(frozen=True, kw_only=True)
class PlateauSchedule(Schedule):
    """``max(base_lr * factor ** n_reductions, min_lr)``; one more reduction after ``patience`` bad epochs.

    Same rules as torch ``ReduceLROnPlateau`` (``mode``, ``threshold``/``threshold_mode``, ``cooldown``,
    a reduction below 1e-8 skipped). Its params are frozen; its counters live in ``counters``, changed only
    by :meth:`observe` (once per epoch, with the validation fitness) and :meth:`load_state` (on resume).
    """

    factor: float
    patience: int
    threshold: float
    threshold_mode: Literal["rel", "abs"]
    cooldown: int
    min_lr: float
    mode: Literal["max", "min"]
    counters: PlateauState = field(default_factory=PlateauState, compare=False)

    def __call__(self, step: float) -> float:
        return self._lr(self.counters.n_reductions)

    def _lr(self, n_reductions: int) -> float:
        return max(self.base_lr * self.factor**n_reductions, self.min_lr)

    def observe(self, epoch: int, fitness: float) -> None:
        """Record epoch ``epoch``'s fitness; the lr of later steps drops after ``patience`` bad epochs.

        An epoch is counted once: a repeated or older ``epoch`` (e.g. a final re-validation) is ignored.
        A NaN fitness counts as no improvement, as in torch.
        """
        ctr = self.counters
        if epoch <= ctr.last_epoch:
            return
        ctr.last_epoch = epoch
        # torch ReduceLROnPlateau.step, one call per epoch
        if self._is_better(float(fitness)):
            ctr.best = float(fitness)
            ctr.num_bad_epochs = 0
        else:
            ctr.num_bad_epochs += 1
        if ctr.cooldown_counter > 0:
            ctr.cooldown_counter -= 1
            ctr.num_bad_epochs = 0
        if ctr.num_bad_epochs > self.patience:
            if self._lr(ctr.n_reductions) - self._lr(ctr.n_reductions + 1) > _MIN_LR_CHANGE:
                ctr.n_reductions += 1
            ctr.cooldown_counter = self.cooldown
            ctr.num_bad_epochs = 0

    def _is_better(self, value: float) -> bool:
        # torch ReduceLROnPlateau.is_better, starting from best = -inf (max) / +inf (min)
        best = self.counters.best
        if best is None:
            best = -math.inf if self.mode == "max" else math.inf
        rel = self.threshold_mode == "rel"
        if self.mode == "max":
            return value > (best * (1 + self.threshold) if rel else best + self.threshold)
        return value < (best * (1 - self.threshold) if rel else best - self.threshold)

    def state(self) -> dict[str, Any]:
        """The counters as a JSON-safe dict (``best`` is None before the first observation)."""
        return dataclasses.asdict(self.counters)

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore counters saved by :meth:`state`.

        Raises:
            ValueError: ``state`` has keys other than the counters' (it came from another schedule).
        """
        unknown = set(state) - {f.name for f in dataclasses.fields(PlateauState)}
        if unknown:
            raise ValueError(f"plateau state has unknown keys {sorted(unknown)}; pass what state() returned")
        for key, value in state.items():
            setattr(self.counters, key, value)

    @classmethod
    def from_params(
        cls, *, base_lr: float, total_steps: float, steps_per_epoch: float, params: Mapping[str, Any]
    ) -> PlateauSchedule:
        return cls(
            base_lr=base_lr,
            factor=params["factor"],
            patience=params["patience"],
            threshold=params["threshold"],
            threshold_mode=params["threshold_mode"],
            cooldown=params["cooldown"],
            min_lr=params["min_lr"],
            mode=params["mode"],
        )
