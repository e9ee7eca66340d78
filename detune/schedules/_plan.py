"""``LRPlan``: the schedule, interval and warmup of one training, as the trainer adapter consumes them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from detune.errors import ConfigError
from detune.schedules._base import Schedule, floor_steps, is_number
from detune.schedules._registry import build_schedule
from detune.schedules._warmup import LinearWarmup

Interval = Literal["step", "epoch"]
INTERVALS: tuple[Interval, ...] = ("step", "epoch")
MAX_STEPS_PER_EPOCH = 10_000_000  # 10M optimizer steps per epoch: far beyond any dataset, still closed form


@dataclass
class LRPlan:
    """Learning rate and momentum of every param group at every optimizer step of one training.

    Args:
        schedule: Absolute lr of a weight group per optimizer step (see ``create_schedule``).
        steps_per_epoch: Real optimizer steps per epoch (``batches / accumulate``), > 0.
        epochs: Epochs of the training, >= 1.
        interval: "step": the schedule moves every optimizer step; "epoch": it is evaluated at
            ``epoch * steps_per_epoch`` and held for the epoch (Ultralytics' LambdaLR behaviour).
        warmup_steps: Optimizer steps of the linear warmup (0 = none); the warmup moves by step either way.
        warmup_bias_lr: Bias-group lr at step 0 (Ultralytics' ``warmup_bias_lr``).
        warmup_momentum: Momentum at step 0, ramped to ``momentum`` over the warmup.
        momentum: Momentum after the warmup.

    Example:
        >>> plan = build_plan(scheduler="linear", scheduler_params={"lrf": 0.1}, lr0=0.01, epochs=2,
        ...                   steps_per_epoch=4, interval="epoch", warmup_epochs=1.0)
        >>> [round(plan.lr(k, k // 4), 6) for k in range(8)]
        [0.0, 0.0025, 0.005, 0.0075, 0.0055, 0.0055, 0.0055, 0.0055]
        >>> plan.lr(0, 0, bias=True), plan.momentum_at(0)
        (0.1, 0.8)
    """

    schedule: Schedule
    steps_per_epoch: float
    epochs: int
    interval: Interval = "step"
    warmup_steps: int = 0
    warmup_bias_lr: float = 0.1
    warmup_momentum: float = 0.8
    momentum: float = 0.937

    @property
    def total_steps(self) -> float:
        """Optimizer steps of the whole training (may be fractional)."""
        return self.epochs * self.steps_per_epoch

    @property
    def num_steps(self) -> int:
        """Whole optimizer steps of the training (at least 1): steps ``0 .. num_steps - 1`` exist."""
        return max(1, floor_steps(self.total_steps))

    def epoch_of(self, step: int) -> int:
        """0-based epoch of optimizer step ``step`` by step count (capped at the last epoch)."""
        return min(floor_steps(step / self.steps_per_epoch), self.epochs - 1)

    def lr(self, step: int, epoch: int, *, bias: bool = False, mult: float = 1.0) -> float:
        """Lr of a param group at optimizer step ``step`` (0-based, global), taken during epoch ``epoch``.

        Args:
            step: Optimizer steps taken before this one, >= 0.
            epoch: 0-based epoch of this step (used by the "epoch" interval).
            bias: The bias group (its warmup starts at ``warmup_bias_lr`` instead of 0).
            mult: Per-group lr multiplier; scales the schedule's target, not the warmup start (as
                Ultralytics' ``initial_lr`` does).
        """
        at = step if self.interval == "step" else epoch * self.steps_per_epoch
        start = self.warmup_bias_lr if bias else 0.0
        return LinearWarmup(warmup_steps=self.warmup_steps, start=start).apply(step, mult * self.schedule(at))

    def momentum_at(self, step: int) -> float:
        """Momentum (SGD) or beta1 at optimizer step ``step``: ramped during the warmup, then ``momentum``."""
        warmup = LinearWarmup(warmup_steps=self.warmup_steps, start=self.warmup_momentum)
        return warmup.apply(step, self.momentum)

    def observe(self, epoch: int, fitness: float) -> None:
        """Feed epoch ``epoch``'s validation fitness (higher is better) to the schedule (used by plateau)."""
        self.schedule.observe(epoch, fitness)


def _fail(field: str, value: Any, rule: str, fix: str) -> ConfigError:
    return ConfigError(f"{field} ({value!r}) {rule}; {fix}")


def build_plan(
    *,
    scheduler: str,
    scheduler_params: Mapping[str, Any],
    lr0: float,
    epochs: int,
    steps_per_epoch: float,
    interval: str = "step",
    warmup_epochs: float = 0.0,
    warmup_bias_lr: float = 0.1,
    warmup_momentum: float = 0.8,
    momentum: float = 0.937,
) -> LRPlan:
    """Turn Ultralytics-named settings into an :class:`LRPlan` (the adapter boundary).

    The warmup lasts ``round(min(warmup_epochs, epochs - 1) * steps_per_epoch)`` optimizer steps, as
    Ultralytics' ``_get_warmup_iterations`` computes it (the last epoch is never warmup).

    Args:
        scheduler: A name from ``list_schedules()``.
        scheduler_params: Its params (durations in epochs; ``lrf`` for linear and cosine).
        lr0: Base lr of the weight groups, > 0.
        epochs: Epochs of the training, >= 1.
        steps_per_epoch: Real optimizer steps per epoch (``batches / accumulate``), > 0.
        interval: "step" or "epoch" (see :class:`LRPlan`).
        warmup_epochs: Warmup length in epochs, >= 0 (fractions allowed).
        warmup_bias_lr: Bias lr at step 0, >= 0.
        warmup_momentum: Momentum at step 0, in [0, 1).
        momentum: Momentum after warmup, in [0, 1).

    Raises:
        ConfigError: Any setting is unknown or out of range (the message names the field and a fix).
    """
    if not is_number(lr0) or lr0 <= 0:
        raise _fail("lr0", lr0, "must be a number > 0", "use e.g. lr0: 0.01")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise _fail("epochs", epochs, "must be an integer >= 1", "use e.g. epochs: 100")
    if not is_number(steps_per_epoch) or steps_per_epoch <= 0:
        raise _fail("steps_per_epoch", steps_per_epoch, "must be a number > 0", "pass batches / accumulate")
    if steps_per_epoch > MAX_STEPS_PER_EPOCH:
        raise _fail("steps_per_epoch", steps_per_epoch, f"must be <= {MAX_STEPS_PER_EPOCH}",
                    "pass batches / accumulate of one epoch")
    if interval not in INTERVALS:
        raise _fail("scheduler_interval", interval, "must be one of 'step', 'epoch'",
                    "use e.g. scheduler_interval: step")
    if not is_number(warmup_epochs) or warmup_epochs < 0:
        raise _fail("warmup_epochs", warmup_epochs, "must be a number >= 0", "use e.g. warmup_epochs: 3")
    if not is_number(warmup_bias_lr) or warmup_bias_lr < 0:
        raise _fail("warmup_bias_lr", warmup_bias_lr, "must be a number >= 0", "use e.g. warmup_bias_lr: 0.1")
    for field, value, example in (("warmup_momentum", warmup_momentum, 0.8), ("momentum", momentum, 0.937)):
        if not is_number(value) or not 0 <= value < 1:  # the same bound as TrainConfig's
            raise _fail(field, value, "must be a number in [0, 1)", f"use e.g. {field}: {example}")
    if not isinstance(scheduler_params, Mapping):
        raise _fail("scheduler_params", scheduler_params, "must be a mapping",
                    "use e.g. scheduler_params: {gamma: 0.5}")
    schedule = build_schedule(
        scheduler, scheduler_params, base_lr=lr0, total_steps=epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
    )
    # Ultralytics BaseTrainer._get_warmup_iterations: round(min(warmup_epochs, max(epochs - 1, 0)) * nb),
    # 0 when warmup_epochs is 0
    capped = min(warmup_epochs, max(epochs - 1, 0))
    warmup_steps = round(capped * steps_per_epoch) if warmup_epochs > 0 else 0
    return LRPlan(
        schedule=schedule,
        steps_per_epoch=float(steps_per_epoch),
        epochs=epochs,
        interval=interval,
        warmup_steps=warmup_steps,
        warmup_bias_lr=float(warmup_bias_lr),
        warmup_momentum=float(warmup_momentum),
        momentum=float(momentum),
    )

