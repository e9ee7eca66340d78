"""A picture and a short table of an ``LRPlan``: lr per param group and momentum at every optimizer step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from detune._plotting import new_figure, save
from detune.schedules._base import boundary_slack
from detune.schedules._plan import LRPlan

# Ultralytics' build_optimizer order (engine/trainer.py): pg0 weights with decay, pg1 norm weights,
# pg2 biases.
DEFAULT_GROUPS: tuple[tuple[str, bool, float], ...] = (
    ("pg0 weights", False, 1.0),
    ("pg1 norm", False, 1.0),
    ("pg2 bias", True, 1.0),
)
LAYER_DEPTHS = (5, 10, 20)  # layers below the head drawn for an lr_layer_decay (yolo11n has 23)


def plot_groups(lr_mult: dict[str, float] | None = None, lr_layer_decay: float | None = None,
                ) -> tuple[tuple[str, bool, float], ...]:
    """The lines to draw for a config: Ultralytics' three groups, then the weights of each ``lr_mult`` part
    and of layers 5, 10 and 20 below the head under ``lr_layer_decay`` (each a multiple of pg0's lr)."""
    groups = list(DEFAULT_GROUPS)
    groups += [(f"{part} weights (x{mult:g})", False, float(mult)) for part, mult in (lr_mult or {}).items()
               if mult != 1]
    if lr_layer_decay is not None and lr_layer_decay != 1:
        groups += [(f"weights {k} layers below the head (x{lr_layer_decay ** k:.3g})", False, lr_layer_decay ** k)
                   for k in LAYER_DEPTHS]
    return tuple(groups)


_MAX_POINTS = 20_000  # longer trainings are drawn from every n-th step plus every key point
_MAX_EPOCH_LINES = 60
_MAX_KEY_EPOCHS = 1_000  # key points show at most this many epoch starts (every n-th epoch of longer trainings)


def _first_step_of_epoch(plan: LRPlan, epoch: int) -> int:
    """Smallest optimizer step taken in ``epoch`` by step count (``plan.epoch_of``)."""
    return math.ceil(epoch * plan.steps_per_epoch - boundary_slack(epoch * plan.steps_per_epoch))


def _key_steps(plan: LRPlan) -> list[int]:
    """At most ``_MAX_KEY_EPOCHS + 3`` steps, whatever the length of the training (nothing per step)."""
    last = plan.num_steps - 1
    steps = {0, last}
    if 0 < plan.warmup_steps < last:
        steps.add(plan.warmup_steps)
    every = max(1, math.ceil((plan.epochs - 1) / _MAX_KEY_EPOCHS))
    steps.update(s for e in range(every, plan.epochs, every) if (s := _first_step_of_epoch(plan, e)) < last)
    return sorted(steps)


def sample_steps(plan: LRPlan) -> list[int]:
    """The optimizer steps a plot or a summary evaluates: every step of a short training, every n-th step of a
    long one (at most ``_MAX_POINTS``), plus the key points; bounded whatever ``plan.num_steps`` is."""
    stride = max(1, math.ceil(plan.num_steps / _MAX_POINTS))
    return sorted(set(range(0, plan.num_steps, stride)) | set(_key_steps(plan)) | {plan.num_steps - 1})


def peak_lr(plan: LRPlan) -> float:
    """The highest weight-group lr over ``sample_steps`` (exact when every step is sampled)."""
    return max(plan.lr(step, plan.epoch_of(step)) for step in sample_steps(plan))


def key_points(plan: LRPlan) -> list[tuple[int, float]]:
    """``(step, lr)`` of a weight group at the start, the end of warmup, each epoch's first step and the end.

    Trainings over ``_MAX_KEY_EPOCHS`` epochs show every n-th epoch's first step instead, so the list stays short.

    Example:
        >>> from detune.schedules import build_plan
        >>> plan = build_plan(scheduler="step", scheduler_params={"step_size": 1, "gamma": 0.5}, lr0=0.01,
        ...                   epochs=3, steps_per_epoch=10)
        >>> key_points(plan)
        [(0, 0.01), (10, 0.005), (20, 0.0025), (29, 0.0025)]
    """
    return [(step, plan.lr(step, plan.epoch_of(step))) for step in _key_steps(plan)]


def plot(
    plan: LRPlan,
    path: str | Path,
    *,
    groups: Sequence[tuple[str, bool, float]] = DEFAULT_GROUPS,
    title: str | None = None,
    log_y: bool = False,
    dpi: int = 120,
) -> Path:
    """Draw the lr of each param group and the momentum at every optimizer step to a PNG.

    Args:
        plan: The plan to draw (a plateau plan is drawn as of its current state).
        path: Output file (PNG); missing parent folders are created.
        groups: ``(label, is_bias_group, lr_mult)`` per line; defaults to Ultralytics' three SGD groups.
        title: Figure title; defaults to a summary of the plan.
        log_y: Logarithmic lr axis (useful for step, exponential and onecycle).
        dpi: Resolution of the PNG.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ImportError: matplotlib is not installed (``pip install matplotlib``).
    """
    fig = new_figure("detune.schedules.plot", figsize=(9.0, 5.5), layout="constrained")
    last = plan.num_steps - 1
    steps = sample_steps(plan)
    epochs = [plan.epoch_of(k) for k in steps]

    ax_lr, ax_mom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    styles = ("-", "--", ":", "-.")
    for i, (label, bias, mult) in enumerate(groups):
        lrs = [plan.lr(k, e, bias=bias, mult=mult) for k, e in zip(steps, epochs, strict=True)]
        ax_lr.plot(steps, lrs, drawstyle="steps-post", linestyle=styles[i % len(styles)], lw=1.6, label=label)
    ax_mom.plot(steps, [plan.momentum_at(k) for k in steps], drawstyle="steps-post", color="C3", lw=1.4)

    every = max(1, math.ceil(plan.epochs / _MAX_EPOCH_LINES))
    for epoch in range(every, plan.epochs, every):
        for ax in (ax_lr, ax_mom):
            ax.axvline(_first_step_of_epoch(plan, epoch), color="0.85", lw=0.7, zorder=0)
    if plan.warmup_steps > 0:
        for ax in (ax_lr, ax_mom):
            ax.axvspan(0, plan.warmup_steps, color="C1", alpha=0.08, lw=0, zorder=0)
        ax_lr.plot([], [], color="C1", alpha=0.3, lw=6, label=f"warmup ({plan.warmup_steps} steps)")

    spe = plan.steps_per_epoch
    top = ax_lr.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
    top.set_xlabel("epoch")
    if log_y:
        ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(True, axis="y", color="0.92")
    ax_lr.legend(loc="best", fontsize="small")
    ax_mom.set_ylabel("momentum")
    ax_mom.set_xlabel("optimizer step")
    ax_mom.set_xlim(0, max(last, 1))
    fig.suptitle(title or _summary(plan), fontsize="medium")

    return save(fig, path, dpi=dpi)


def _summary(plan: LRPlan) -> str:
    kind = type(plan.schedule).__name__.removesuffix("Schedule")
    return (
        f"{kind} schedule, interval={plan.interval}, {plan.epochs} epochs x {plan.steps_per_epoch:g} steps, "
        f"warmup {plan.warmup_steps} steps"
    )
