"""Rung rules for early stopping on detection curves (issue 15 section 2). Pure: no Ray, no numpy.

Detection metrics stay ~0 for the first epochs of a training (from scratch, YOLO "takes off" around epochs
4-6 on the shapes benchmark), so an ASHA rung that compares mAP50-95 values there stops trials at random:
the shapes benchmark's baseline (Ultralytics' defaults) scored 0.0018 at epoch 4, was stopped there, and
reached 0.063 at epoch 6 without the stop. Three rules:

- **signal** (``rung_signal``): the metric once it is off its noise floor; below it, a value in
  [0, floor) that falls with the validation loss (box + cls + dfl), so trials at ~0 mAP are still ordered
  by how far they trained, and every trial off the floor ranks above every trial on it.
- **timing** (``first_rung``, ``milestones``): no rung before warmup has ended (a rung at epoch e needs
  e > warmup_epochs) nor before a grace period that scales with the trial's epochs (``default_grace``:
  max(2, epochs // 4)); the last epoch is never a rung (the trial ends there anyway).
- **noise floor** (``AsyncRungs``): a rung stops a trial only when its cutoff (the top 1/reduction_factor
  of the trials recorded there) has left the noise floor. While every kept trial is still ~0, the rung
  records and stops nothing: validation loss orders those trials but does not stop them, because early in
  a training it favours high learning rates (benchmark 4's shapes grid: validation loss 15.2 at lr0 0.001
  against 9.3 at 0.178 after 8 epochs, while the best mAP came from 0.025), which is how a real study
  stopped every trial at or below Ultralytics' lr0 at epoch 5 (issue 15).

The noise floor is an absolute mAP50-95 of 0.01 (1 point): below it the shapes benchmark's per-epoch
values move by 0.001-0.004 between epochs without order (``results/search.json``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from detune.errors import ConfigError

NOISE_FLOOR = 0.01  # mAP50-95 below this is "~0"
METRIC = "metrics/mAP50-95"


def default_grace(epochs: int) -> int:
    """The default grace period in epochs: a quarter of the trial's training, at least 2."""
    return max(2, epochs // 4)


def first_rung(epochs: int, warmup_epochs: float, grace: int | None = None) -> int:
    """The first epoch a rung may judge a trial: past the grace period and past the warmup (e > warmup)."""
    return max(default_grace(epochs) if grace is None else grace, math.floor(warmup_epochs) + 1)


def milestones(epochs: int, warmup_epochs: float, reduction_factor: float = 2, grace: int | None = None) -> list[int]:
    """Rung epochs: first_rung x reduction_factor**k, below the last epoch."""
    if reduction_factor <= 1:
        raise ConfigError(f"reduction_factor ({reduction_factor!r}) must be > 1; use e.g. 2")
    out, rung = [], float(first_rung(epochs, warmup_epochs, grace))
    while rung < epochs:
        out.append(int(rung))
        rung = max(math.ceil(rung * reduction_factor), int(rung) + 1)
    return out


def val_loss(record: Mapping[str, Any]) -> float | None:
    """The validation loss of an epoch record: the sum of its finite ``val/*_loss`` values (None if none)."""
    parts = [float(v) for k, v in record.items() if k.startswith("val/") and k.endswith("_loss")
             and isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(parts) if parts else None


def rung_signal(record: Mapping[str, Any], metric: str = METRIC, floor: float = NOISE_FLOOR) -> float | None:
    """The value a rung compares (higher is better): the metric once it is >= ``floor``; below it,
    ``floor / (2 + validation loss)``, or the metric itself when no validation loss was recorded; None when
    neither is a finite number."""
    value = record.get(metric)
    finite = isinstance(value, (int, float)) and math.isfinite(value)
    if finite and value >= floor:
        return float(value)
    loss = val_loss(record)
    if loss is not None and loss >= 0:
        return floor / (2.0 + loss)
    return float(value) if finite else None


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


class AsyncRungs:
    """Asynchronous successive halving (ASHA's bookkeeping, as Ray's ``AsyncHyperBandScheduler`` with one
    bracket) with the rules above: at each milestone a trial is recorded; it is stopped when its signal is
    below the cutoff of the trials recorded there before it, and that cutoff is off the noise floor.

    Args:
        rungs: milestone epochs (``milestones(...)``).
        reduction_factor: keep the top 1/reduction_factor at each rung, > 1.
        floor: the metric's noise floor (0 makes it plain ASHA on the raw metric).
        metric: the record key of the metric (higher is better).
    """

    def __init__(self, rungs: Sequence[int], *, reduction_factor: float = 2, floor: float = NOISE_FLOOR,
                 metric: str = METRIC) -> None:
        if isinstance(reduction_factor, bool) or not isinstance(reduction_factor, (int, float)) \
                or reduction_factor <= 1:
            raise ConfigError(f"reduction_factor ({reduction_factor!r}) must be a number > 1; use e.g. 2")
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < 1:
            raise ConfigError(f"noise floor ({floor!r}) must be in [0, 1); use e.g. {NOISE_FLOOR}")
        self.rungs = sorted(set(rungs))
        self.reduction_factor, self.floor, self.metric = reduction_factor, float(floor), metric
        self.recorded: dict[int, dict[str, float]] = {r: {} for r in self.rungs}
        self.stopped: dict[str, int] = {}

    def on_result(self, trial: str, epoch: int, record: Mapping[str, Any]) -> bool:
        """Record one epoch of one trial; True means stop the trial now."""
        if epoch not in self.recorded or trial in self.recorded[epoch]:
            return False
        signal = rung_signal(record, self.metric, self.floor)
        if signal is None:
            return False
        recorded = self.recorded[epoch]
        cutoff = percentile(list(recorded.values()), (1 - 1 / self.reduction_factor) * 100) if recorded else None
        recorded[trial] = signal
        if cutoff is not None and cutoff >= self.floor and signal < cutoff:
            self.stopped[trial] = epoch
            return True
        return False
