"""Linear warmup, applied by the plan over any schedule, with Ultralytics' per-step semantics."""

from __future__ import annotations

from dataclasses import dataclass

from detune.schedules._base import interp

# Ultralytics BaseTrainer._do_train (engine/trainer.py, 8.4), the ``if nw and ni <= nw:`` block: for batch ni
# <= nw every param group gets lr = np.interp(ni, [0, nw], [start, initial_lr * lf(epoch)]) with start =
# warmup_bias_lr for the bias group and 0.0 for the others, and momentum = np.interp(ni, [0, nw],
# [warmup_momentum, momentum]). The bias group is found by its ``param_group == "bias"`` key, not by index:
# build_optimizer (same file) orders the groups pg0 = weights with decay ("weight"), pg1 = norm weights
# ("bn"), pg2 = biases ("bias"); MuSGD splits each group in two (plus "muon" groups), moving the biases.


@dataclass(frozen=True, kw_only=True)
class LinearWarmup:
    """Linear ramp from ``start`` to a target value over the first ``warmup_steps`` optimizer steps.

    At step ``k <= warmup_steps`` the value is ``interp(k, [0, warmup_steps], [start, target])``, so step
    ``warmup_steps`` is exactly on target; later steps return the target. ``warmup_steps == 0`` means no
    warmup at all (step 0 already returns the target).

    Args:
        warmup_steps: Optimizer steps of the ramp, >= 0.
        start: Value at step 0 (0.0 for weight lrs, ``warmup_bias_lr`` for biases, ``warmup_momentum``).

    Example:
        >>> warm = LinearWarmup(warmup_steps=4, start=0.0)
        >>> [warm.apply(k, 0.01) for k in (0, 2, 4, 5)]
        [0.0, 0.005, 0.01, 0.01]
    """

    warmup_steps: int
    start: float = 0.0

    def active(self, step: float) -> bool:
        """Whether ``step`` is inside the ramp (``0 < warmup_steps`` and ``step <= warmup_steps``)."""
        return self.warmup_steps > 0 and step <= self.warmup_steps

    def apply(self, step: float, target: float) -> float:
        """The ramped value at ``step`` for a target (the wrapped schedule's value at that step)."""
        if not self.active(step):
            return target
        return interp(step, self.warmup_steps, self.start, target)

