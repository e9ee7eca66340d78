"""Training-health advisor: pure rules that read a run's per-epoch history and per-step losses.

``diagnose(history, steps, config_summary=...)`` runs every rule and returns the advice that fired, or one
``healthy`` advice naming the numbers it checked (or ``undiagnosed`` when the curves are too short to check
anything). Each rule is a function ``(history, steps, ctx) -> Check | None``: None when its data is missing,
else the statistic, its limit and, when the limit is crossed, an ``Advice``. Nothing here imports a
training framework, logs or prints.

The thresholds were measured on real curves recorded by ``tests/data/curves/record.py`` (yolo11n from
scratch, 256 generated shapes images at 64 px, batch 8, SGD, 32 optimizer steps per epoch): ``healthy``
(lr0 0.01, 30 epochs, mAP50-95 0.765), ``rising`` (the same in 12 epochs, 0.334), ``short`` (3 epochs),
``too_low`` (lr0 1e-4), ``too_high`` (lr0 0.3), ``short_warmup`` (lr0 0.05 after a 3-step warmup) and
``diverged`` (lr0 3). Each constant's comment gives the statistic on those runs; the README's
"Training-health advisor" has the table.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["RULES", "Advice", "Check", "diagnose", "diverged", "loss_jumps", "overfitting", "schedule_too_short",
           "slow_progress", "warmup_spike"]

# loss_jumps, steps: the largest batch loss over its running median (JUMP_WINDOW steps centred on it), after
# the warmup. Measured: healthy 1.47, rising 1.43, short 1.38, too_low 1.19, short_warmup 1.27, too_high 1.77;
# diverged 1.0e5. The limit sits 36% above the largest of the runs at lr0 <= 0.05 (1.47) and 13% above
# too_high's: at lr0 0.3 the batch loss does not jump, its validation loss does (below).
JUMP_WINDOW = 15
JUMP_RATIO = 2.0
# loss_jumps, epochs: the validation loss (box + cls + dfl) over the train loss of the same epoch, its largest
# value over the epochs. Measured: healthy 1.1e3 (epoch 3: 1.02e4 against 9.3), rising 477, short 1.7,
# too_low 1.3, short_warmup 1.8e5, too_high 1.5e11 (and 0 at epochs 2-3); zero or non-finite counts as a
# jump. The limit is the decade between short_warmup and too_high.
VAL_JUMP_RATIO = 1e6
LOWER_FACTOR = 3.0  # lower lr0 by half a decade; a run still jumping gets the advice again
# slow_progress: the epoch train loss's fall per epoch over the first SLOW_EPOCHS epochs, (first - lowest) /
# first / (epochs - 1). Measured: too_low 3.5%, too_high 10.9%, short_warmup 13.7%, healthy 14.4%, rising
# 15.0%, short 15.5%. The limit sits near the geometric middle of too_low and too_high. It fires only when
# lr0 is below Ultralytics' default for the optimizer (0.01 SGD, 0.001 adaptive); two epochs are too noisy
# (too_low: 8.7% per epoch over epochs 1-2), so it needs SLOW_MIN_EPOCHS.
SLOW_EPOCHS = 4
SLOW_MIN_EPOCHS = 3
SLOW_DROP = 0.06
# warmup_spike: the highest smoothed loss in the WARMUP_WINDOW steps (at least; half an epoch if longer) after
# the warmup, over the smoothed loss at its last step. Measured: healthy 1.010, rising 1.008, short 1.009,
# too_low 1.013, too_high 0.99, short_warmup 1.074 (a 3-step warmup at lr0 0.05): no recorded run spiked
# after its warmup, so the limit is set by hand, 40% above the largest, and tested on synthetic curves.
# Runs without warmup are not judged: YOLO's first batch losses can be 50-100x below the later ones.
WARMUP_WINDOW = 10
WARMUP_SPIKE = 1.5
# overfitting: the validation loss's rise from its lowest epoch to the last, while the train loss fell over
# the same epochs (at least OVERFIT_EPOCHS of them). Measured: every recorded run ends at or within 2.3%
# (short) of its lowest validation loss; none overfitted, so the limit is set by hand (tested on synthetic
# curves).
OVERFIT_RISE = 0.10
OVERFIT_EPOCHS = 2
# schedule_too_short: the metric's least-squares slope over the last RISE_EPOCHS epochs, per epoch, over its
# best value; the last epoch must be the best, the run completed and the metric at least RISE_MIN_METRIC
# (below that it is noise). Measured: healthy (30 epochs) -0.1%, rising (12 epochs) +10.2%, too_high +46.6%.
RISE_EPOCHS = 3
RISE_SLOPE = 0.03
RISE_MIN_METRIC = 0.01
DIVERGED_FACTOR = 10.0  # a safe lr0: 10x below the lr it diverged at (fastai's "minimum / 10" convention)
METRIC = "metrics/mAP50-95"


@dataclasses.dataclass(frozen=True)
class Advice:
    """One diagnosis: ``rule`` (a name in ``RULES``, or ``healthy`` / ``undiagnosed``), a one-line ``message``
    that names its numbers, those numbers in ``evidence`` and the suggested settings (``{"lr0": 0.003}``) or
    None."""

    rule: str
    message: str
    evidence: dict[str, float] = dataclasses.field(default_factory=dict)
    change: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "message": self.message, "evidence": dict(self.evidence),
                "change": dict(self.change) if self.change is not None else None}


@dataclasses.dataclass(frozen=True)
class Check:
    """What one rule measured: ``value`` against ``limit`` (``text`` says it in words), and the advice when
    the limit was crossed."""

    rule: str
    value: float
    limit: float
    text: str
    advice: Advice | None = None


# ---- helpers --------------------------------------------------------------------------------------------
def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _total(record: Mapping[str, float], split: str) -> float:
    """box + cls + dfl loss of one epoch record; NaN when a part is missing."""
    parts = [record.get(f"{split}/{k}_loss") for k in ("box", "cls", "dfl")]
    return float(sum(parts)) if all(_finite(p) for p in parts) else math.nan  # type: ignore[arg-type]


def _lr0(ctx: Mapping[str, Any]) -> float:
    lr0 = ctx.get("lr0")
    return float(lr0) if _finite(lr0) else math.nan


def _g(value: float) -> str:
    return f"{value:.3g}"


def _round(value: float) -> float:
    """A suggested setting to 3 significant digits (0.1, not 0.09999999999999999)."""
    return float(f"{value:.3g}")


# ---- rules ----------------------------------------------------------------------------------------------
def diverged(history: Sequence[Mapping[str, float]], steps: Sequence[Mapping[str, float]],
             ctx: Mapping[str, Any]) -> Check | None:
    """The run diverged (status ``diverged``, or a non-finite step loss): the lr it happened at, and a safe
    lr0 ``DIVERGED_FACTOR`` times below it."""
    bad = next((s for s in steps if "loss" in s and not _finite(s["loss"])), None)
    if ctx.get("status") != "diverged" and bad is None:
        return Check("diverged", 0.0, 1.0, "no divergence") if steps or history else None
    last = bad or (steps[-1] if steps else {})
    lr = last.get("lr/pg0") if _finite(last.get("lr/pg0")) else _lr0(ctx)
    step = int(last["step"]) if _finite(last.get("step")) else -1
    epoch = int(last["epoch"]) + 1 if _finite(last.get("epoch")) else len(history) + 1
    why = str(ctx.get("reason") or (f"loss {bad['loss']}" if bad else "diverged"))
    evidence = {"lr": float(lr), "step": float(step), "epoch": float(epoch)}
    if not _finite(lr) or lr <= 0:
        msg = f"diverged at epoch {epoch}, step {step} ({why}); the lr there is unknown: lower lr0"
        return Check("diverged", 1.0, 1.0, "diverged", Advice("diverged", msg, evidence))
    safe = _round(min(float(lr), _lr0(ctx) if _finite(_lr0(ctx)) else math.inf) / DIVERGED_FACTOR)
    msg = (f"diverged at epoch {epoch}, step {step} at lr {_g(lr)} ({why}); a safe lr0 is {_g(safe)}, "
           f"{DIVERGED_FACTOR:g}x below it")
    return Check("diverged", 1.0, 1.0, "diverged", Advice("diverged", msg, {**evidence, "safe_lr0": safe},
                                                          {"lr0": safe}))


def loss_jumps(history: Sequence[Mapping[str, float]], steps: Sequence[Mapping[str, float]],
               ctx: Mapping[str, Any]) -> Check | None:
    """The loss jumps up and down: a batch loss ``JUMP_RATIO`` x its running median after the warmup, or a
    validation loss ``VAL_JUMP_RATIO`` x the train loss (zero or non-finite counts) -> lower lr0 3x."""
    warmup = int(ctx.get("warmup_steps") or 0)
    measured = [(int(s.get("step", i)), float(s["loss"])) for i, s in enumerate(steps)
                if _finite(s.get("loss")) and s["loss"] > 0]
    losses = [loss for _, loss in measured]
    jump, at = math.nan, -1
    if len(losses) >= JUMP_WINDOW:
        half = JUMP_WINDOW // 2
        for i, (step, loss) in enumerate(measured):
            ratio = loss / statistics.median(losses[max(0, i - half):i + half + 1])
            if step >= warmup and not ratio <= jump:
                jump, at = ratio, step
    val_jump, val_epoch = math.nan, 0
    for record in history:
        train, val = _total(record, "train"), record.get("val/box_loss")
        if not _finite(train) or train <= 0 or val is None:
            continue
        total = _total(record, "val")
        ratio = total / train if _finite(total) and total > 0 else math.inf
        if not ratio <= val_jump:
            val_jump, val_epoch = ratio, int(record["epoch"])
    if math.isnan(jump) and math.isnan(val_jump):
        return None
    evidence = {"batch_jump": jump, "batch_jump_step": float(at)} if not math.isnan(jump) else {}
    if not math.isnan(val_jump):  # an infinite ratio (zero or non-finite val loss) is left out: JSON has no inf
        evidence.update({"val_epoch": float(val_epoch)} | ({"val_over_train": val_jump} if math.isfinite(val_jump)
                                                           else {}))
    parts = []
    if jump > JUMP_RATIO:
        parts.append(f"a batch loss {_g(jump)}x its running median at step {at} (limit {JUMP_RATIO:g}x)")
    if val_jump > VAL_JUMP_RATIO:
        size = f"{_g(val_jump)}x the train loss" if math.isfinite(val_jump) else "zero or not finite"
        parts.append(f"validation loss {size} at epoch {val_epoch} (limit {VAL_JUMP_RATIO:g}x the train loss)")
    text = ", ".join(t for v, t in ((jump, f"batch loss <= {_g(jump)}x its running median (limit {JUMP_RATIO:g}x)"),
                                    (val_jump, f"val loss <= {_g(val_jump)}x train loss (limit "
                                               f"{VAL_JUMP_RATIO:g}x)")) if not math.isnan(v))
    value = jump if not math.isnan(jump) else val_jump
    limit = JUMP_RATIO if not math.isnan(jump) else VAL_JUMP_RATIO
    if not parts:
        return Check("loss_jumps", value, limit, text)
    lr0 = _lr0(ctx)
    change = {"lr0": _round(lr0 / LOWER_FACTOR)} if _finite(lr0) else None
    fix = f"lower lr0 {LOWER_FACTOR:g}x, to {_g(change['lr0'])}" if change else f"lower lr0 {LOWER_FACTOR:g}x"
    msg = "the loss jumps: " + "; ".join(parts) + f" -> {fix}"
    return Check("loss_jumps", value, limit, text, Advice("loss_jumps", msg, evidence, change))


def slow_progress(history: Sequence[Mapping[str, float]], steps: Sequence[Mapping[str, float]],
                  ctx: Mapping[str, Any]) -> Check | None:
    """The train loss falls less than ``SLOW_DROP`` per epoch over the first epochs while lr0 is below
    Ultralytics' default -> raise lr0 halfway (in log scale) to that default."""
    first = [(int(h["epoch"]), _total(h, "train")) for h in history[:SLOW_EPOCHS]]
    losses = [x for _, x in first if _finite(x)]
    if len(losses) < SLOW_MIN_EPOCHS or losses[0] <= 0:
        return None
    drop = (losses[0] - min(losses[1:])) / losses[0] / (len(losses) - 1)
    span = f"epochs {first[0][0]}-{first[-1][0]}"  # a resumed run starts later than epoch 1
    text = f"train loss {-drop:+.1%}/epoch over {span} (limit -{SLOW_DROP:.0%})"
    lr0, reference = _lr0(ctx), ctx.get("reference_lr0")
    low = _finite(lr0) and _finite(reference) and lr0 < reference
    if drop >= SLOW_DROP or not low:
        return Check("slow_progress", drop, SLOW_DROP, text)
    raised = _round(math.sqrt(lr0 * reference))
    msg = (f"the train loss falls slowly: {drop:.1%} per epoch over {span} ({_g(losses[0])} -> "
           f"{_g(min(losses[1:]))}; limit {SLOW_DROP:.0%}) at lr0 {_g(lr0)}, below Ultralytics' default "
           f"{_g(reference)} -> raise lr0 to {_g(raised)}")
    evidence = {"drop_per_epoch": drop, "first_loss": losses[0], "lowest_loss": min(losses[1:]), "lr0": lr0}
    return Check("slow_progress", drop, SLOW_DROP, text,
                 Advice("slow_progress", msg, evidence, {"lr0": raised}))


def warmup_spike(history: Sequence[Mapping[str, float]], steps: Sequence[Mapping[str, float]],
                 ctx: Mapping[str, Any]) -> Check | None:
    """The smoothed loss rises ``WARMUP_SPIKE`` x right after the warmup -> a warmup twice as long."""
    warmup = int(ctx.get("warmup_steps") or 0)
    smooth = [s.get("loss_smooth") for s in steps]
    window = max(WARMUP_WINDOW, int(float(ctx.get("steps_per_epoch") or 0) / 2))
    after = [float(x) for x in smooth[warmup:warmup + window] if _finite(x)]
    if warmup < 1 or len(smooth) < warmup + window or not _finite(smooth[warmup - 1]) or not after:
        return None
    ref = float(smooth[warmup - 1])  # type: ignore[arg-type]
    spike = max(after) / ref if ref > 0 else math.nan
    if not _finite(spike):
        return None
    text = f"smoothed loss after the warmup <= {_g(spike)}x its value at its end (limit {WARMUP_SPIKE:g}x)"
    if spike <= WARMUP_SPIKE:
        return Check("warmup_spike", spike, WARMUP_SPIKE, text)
    epochs = ctx.get("warmup_epochs")
    longer = {"warmup_epochs": 2 * float(epochs)} if _finite(epochs) and epochs > 0 else None
    fix = f"warmup_epochs {_g(longer['warmup_epochs'])}" if longer else "a longer warmup"
    msg = (f"loss spike after the warmup: the smoothed loss rose to {_g(max(after))}, {_g(spike)}x its "
           f"{_g(ref)} at the warmup's end (step {warmup - 1}; limit {WARMUP_SPIKE:g}x) -> {fix}")
    return Check("warmup_spike", spike, WARMUP_SPIKE, text,
                 Advice("warmup_spike", msg, {"spike": spike, "warmup_steps": float(warmup)}, longer))


def overfitting(history: Sequence[Mapping[str, float]], steps: Sequence[Mapping[str, float]],
                ctx: Mapping[str, Any]) -> Check | None:
    """The validation loss rose ``OVERFIT_RISE`` from its lowest epoch (at least ``OVERFIT_EPOCHS`` before
    the last) while the train loss fell -> stop at that epoch."""
    points = [(int(h["epoch"]), _total(h, "train"), _total(h, "val")) for h in history]
    points = [p for p in points if _finite(p[1]) and _finite(p[2]) and p[2] > 0]
    if len(points) < OVERFIT_EPOCHS + 1:
        return None
    best = min(points, key=lambda p: p[2])
    last = points[-1]
    rise = last[2] / best[2] - 1
    text = f"val loss {rise:.0%} above its lowest (epoch {best[0]}; limit {OVERFIT_RISE:.0%})"
    if rise <= OVERFIT_RISE or last[0] - best[0] < OVERFIT_EPOCHS or last[1] >= best[1]:
        return Check("overfitting", rise, OVERFIT_RISE, text)
    msg = (f"overfitting: validation loss rose {rise:.0%} from {_g(best[2])} at epoch {best[0]} to {_g(last[2])} "
           f"at epoch {last[0]} (limit {OVERFIT_RISE:.0%}) while the train loss fell from {_g(best[1])} to "
           f"{_g(last[1])} -> train {best[0]} epochs, or regularise (augmentation, weight_decay)")
    evidence = {"val_rise": rise, "best_val_epoch": float(best[0]), "val_loss": last[2], "train_loss": last[1]}
    return Check("overfitting", rise, OVERFIT_RISE, text,
                 Advice("overfitting", msg, evidence, {"epochs": float(best[0])}))


def schedule_too_short(history: Sequence[Mapping[str, float]], steps: Sequence[Mapping[str, float]],
                       ctx: Mapping[str, Any]) -> Check | None:
    """The metric still rises at the last epoch (slope over the last epochs >= ``RISE_SLOPE`` of its best per
    epoch) -> twice the epochs."""
    metric = str(ctx.get("metric") or METRIC)
    values = [float(h[metric]) for h in history if _finite(h.get(metric))]
    if ctx.get("status", "completed") != "completed" or len(values) < 2 or max(values) < RISE_MIN_METRIC:
        return None  # a run stopped early did not reach the end of its schedule
    tail = values[-RISE_EPOCHS:]
    n = len(tail)
    mean_x, mean_y = (n - 1) / 2, sum(tail) / n
    slope = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(tail)) / sum((i - mean_x) ** 2 for i in range(n))
    rel = slope / max(values)
    name = metric.split("/")[-1]
    text = f"{name} {rel:+.1%} of its best/epoch over the last {n} epochs (limit {RISE_SLOPE:.0%})"
    if rel < RISE_SLOPE or values[-1] < max(values):
        return Check("schedule_too_short", rel, RISE_SLOPE, text)
    epochs = ctx.get("epochs") if _finite(ctx.get("epochs")) else len(history)
    msg = (f"the schedule ends too early: {name} still rises at the last epoch ({_g(tail[0])} -> {_g(tail[-1])} "
           f"over the last {n} epochs, {rel:+.1%} of its best per epoch; limit {RISE_SLOPE:.0%}) -> epochs "
           f"{2 * int(epochs)}")
    return Check("schedule_too_short", rel, RISE_SLOPE, text,
                 Advice("schedule_too_short", msg, {"slope": rel, "last": values[-1]}, {"epochs": 2 * int(epochs)}))


Rule = Callable[[Sequence[Mapping[str, float]], Sequence[Mapping[str, float]], Mapping[str, Any]], "Check | None"]
RULES: dict[str, Rule] = {"diverged": diverged, "loss_jumps": loss_jumps, "slow_progress": slow_progress,
                          "warmup_spike": warmup_spike, "overfitting": overfitting,
                          "schedule_too_short": schedule_too_short}


def diagnose(history: Sequence[Mapping[str, float]], steps: Sequence[Mapping[str, float]], *,
             config_summary: Mapping[str, Any]) -> list[Advice]:
    """Every rule over one run; the advice that fired, else ``[Advice("healthy", ...)]`` naming what was
    checked, or ``[Advice("undiagnosed", ...)]`` when no rule had data.

    Args:
        history: one record per epoch (``TrainResult.history``).
        steps: one record per optimizer step (``TrainResult.steps``: ``lr/pg0``, ``loss``, ``loss_smooth``).
        config_summary: ``lr0``, ``reference_lr0`` (Ultralytics' default for the optimizer), ``epochs``,
            ``warmup_epochs``, ``warmup_steps``, ``steps_per_epoch``, ``status``, ``reason``; optional
            ``metric`` (default ``metrics/mAP50-95``). ``detune.training.advice_context`` builds it.

    Example:
        >>> diagnose([], [], config_summary={})[0].rule
        'undiagnosed'
    """
    first = diverged(history, steps, config_summary)
    if first is not None and first.advice is not None:  # the other rules would read a broken curve
        return [first.advice]
    checks = [c for c in (rule(history, steps, config_summary) for rule in RULES.values()) if c is not None]
    fired = [c.advice for c in checks if c.advice is not None]
    if fired:
        return fired
    judged = [c for c in checks if c.rule != "diverged"]
    if not judged:
        why = f"{len(history)} epochs, {sum(_finite(s.get('loss')) for s in steps)} step losses"
        return [Advice("undiagnosed", f"too little to diagnose ({why}): no rule had enough data")]
    msg = "healthy: " + "; ".join(c.text for c in judged)
    return [Advice("healthy", msg, {c.rule: c.value for c in judged})]
