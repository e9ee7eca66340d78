"""Pure maths of the LR range test: the lr sweep, loss smoothing, the divergence stop and the suggestions.

Everything here works on plain lists of floats, imports nothing heavy and never logs: ``detune.lr_finder``
runs the test through the adapter and reports. References: Smith, "Cyclical Learning Rates for Training
Neural Networks" (2017), sec. 3.3; the suggestion rules follow Lightning's ``_LRFinder.suggestion``
(steepest) and fastai's ``valley`` / ``minimum`` (min_div_10), with the known pitfalls avoided: the slope
is taken against log(lr), not the index or the raw lr (Lightning-AI/pytorch-lightning#14248, #21141), and
non-finite points are dropped before indexing, so no index is shifted (the TODO in #14248).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

from detune._checks import is_number as _is_number
from detune.errors import ConfigError

Mode = Literal["exponential", "linear"]
Method = Literal["steepest", "valley", "min_div_10"]
MODES: tuple[str, ...] = ("exponential", "linear")
METHODS: tuple[str, ...] = ("steepest", "valley", "min_div_10")
MIN_POINTS = 20  # finite points a suggestion needs (before the ends are trimmed): ~3 a decade over 1e-6..1
DEFAULT_ITERS = 100  # optimizer steps of a default sweep (fastai's and Lightning's default too)
DEFAULT_METHOD = "valley"  # chosen by measurement: benchmarks/README.md, "Suggestion method"
# The no-signal rule (``signal_reason``): the smoothed loss must fall below the mean of the early batch losses
# by more than NOISE_K x the noise of a smoothed value and by more than MIN_DROP of that mean.
NOISE_K = 15.0
MIN_DROP = 0.02


@dataclasses.dataclass(frozen=True)
class FinderSettings:
    """How the lr is swept and when the sweep stops; validated on construction.

    Args:
        min_lr: lr of the first optimizer step, > 0.
        max_lr: lr of the last planned step (``num_iters - 1``), > ``min_lr``; may exceed 1.
        num_iters: optimizer steps to sweep over, >= 2 (default 100, the training batches cycled as often as
            needed); None = the batches of one epoch (often too few points on a small dataset).
        mode: ``exponential`` (even steps in log(lr), the usual choice) or ``linear``.
        smoothing: weight of the newest loss in the bias-corrected EMA, in (0, 1]: EMA beta = 1 - smoothing
            (0.05 -> beta 0.95, as pytorch-lr-finder's ``smooth_f``; 1 = no smoothing).
        stop_factor: stop once the smoothed loss exceeds ``stop_factor`` x its minimum so far, > 1; None never
            stops early on the factor (a non-finite loss always stops the sweep).
        augment: keep the training config's augmentation; False turns the batch-mixing ones (mosaic, mixup,
            cutmix, copy_paste) off for a less noisy curve.
    """

    min_lr: float = 1e-6
    max_lr: float = 1.0
    num_iters: int | None = DEFAULT_ITERS
    mode: str = "exponential"
    smoothing: float = 0.05
    stop_factor: float | None = 4.0
    augment: bool = False

    def __post_init__(self) -> None:
        for name in ("min_lr", "max_lr"):
            if not _is_number(getattr(self, name)):
                _fail(name, getattr(self, name), "must be a finite number", f"use e.g. {name}: 1.0e-6")
        if self.min_lr <= 0:
            _fail("min_lr", self.min_lr, "must be > 0 (the sweep is geometric)", "use e.g. min_lr: 1.0e-6")
        if self.max_lr <= self.min_lr:
            _fail("max_lr", self.max_lr, f"must be above min_lr ({self.min_lr:g})",
                  "raise max_lr or lower min_lr")
        n = self.num_iters
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 2):
            _fail("num_iters", n, "must be an integer >= 2, or None for one epoch", "use e.g. num_iters: 100")
        if self.mode not in MODES:
            _fail("mode", self.mode, f"must be one of {', '.join(MODES)}", "use exponential")
        if not _is_number(self.smoothing) or not 0 < self.smoothing <= 1:
            _fail("smoothing", self.smoothing, "must be in (0, 1] (the newest loss's weight; 1 = no "
                  "smoothing)", "use e.g. smoothing: 0.05")
        if self.stop_factor is not None and not (_is_number(self.stop_factor) and self.stop_factor > 1):
            _fail("stop_factor", self.stop_factor, "must be a finite number > 1, or None to sweep the whole "
                  "range", "use e.g. stop_factor: 4")
        if not isinstance(self.augment, bool):
            _fail("augment", self.augment, "must be true or false", "use augment: false")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fail(field: str, value: Any, rule: str, fix: str) -> None:
    raise ConfigError(f"{field} ({value!r}) {rule}; {fix}")


# ---- the sweep ---------------------------------------------------------------------------------------
def lr_at(step: int, *, min_lr: float, max_lr: float, num_iters: int, mode: str = "exponential") -> float:
    """lr of optimizer step ``step`` (from 0): ``min_lr`` at 0, ``max_lr`` at ``num_iters - 1``, held beyond.

    >>> [round(lr_at(i, min_lr=1e-3, max_lr=1.0, num_iters=4), 6) for i in range(4)]
    [0.001, 0.01, 0.1, 1.0]
    >>> [lr_at(i, min_lr=0.1, max_lr=0.4, num_iters=4, mode="linear") for i in range(4)]
    [0.1, 0.2, 0.30000000000000004, 0.4]
    """
    if num_iters < 2 or step <= 0:
        return float(min_lr)
    if step >= num_iters - 1:
        return float(max_lr)
    t = step / (num_iters - 1)
    if mode == "linear":
        return min_lr + (max_lr - min_lr) * t
    return min_lr * (max_lr / min_lr) ** t


# ---- smoothing and the stop rule ---------------------------------------------------------------------
class LossSmoother:
    """Bias-corrected EMA of the batch loss (Adam-style debiasing, as fastai and Lightning do).

    ``update`` returns ``avg / (1 - beta ** n)`` after ``n`` finite losses, so early values are not pulled
    towards 0. A non-finite loss returns NaN and leaves the average untouched.
    """

    def __init__(self, smoothing: float) -> None:
        self.beta = 1.0 - smoothing
        self.avg = 0.0
        self.count = 0

    def update(self, loss: float) -> float:
        if not math.isfinite(loss):
            return math.nan
        self.count += 1
        self.avg = self.beta * self.avg + (1.0 - self.beta) * loss
        return self.avg / (1.0 - self.beta ** self.count)


class StopRule:
    """The divergence stop, shared by the LR finder and the training guard (one rule).

    A non-finite loss stops at once. After ``warmup`` points, the smoothed loss above ``stop_factor`` x its
    minimum since the warmup ended stops. During the warmup the minimum is not trusted yet: YOLO's first
    batch losses can be far below the later ones in a healthy run (batches with no object assigned, or
    background-only images, give a loss ~50-100x smaller), so the warmup either does not check the factor
    (``early_factor`` None, the finder: its first points run at a tiny lr) or checks a wider bar,
    ``early_factor`` x the minimum so far (the training guard: ``stop_factor ** 2``), which still stops an
    explosion (1e4x and more within a few steps) at once."""

    def __init__(self, stop_factor: float | None, warmup: int = 0, early_factor: float | None = None) -> None:
        self.stop_factor, self.warmup, self.early_factor = stop_factor, warmup, early_factor
        self.best = math.inf  # minimum of the smoothed loss since the warmup
        self.early_best = math.inf  # minimum of the smoothed loss since the start

    def check(self, iteration: int, loss: float, smoothed: float, where: str | None = None) -> str | None:
        """Why the run must stop after this point (``where`` names it, default "iteration N"), or None."""
        where = where or f"iteration {iteration}"
        if not math.isfinite(loss):
            return f"loss is {loss} at {where}"
        reason = None
        if iteration < self.warmup:
            if self.early_factor is not None and smoothed > self.early_factor * self.early_best:
                reason = (f"smoothed loss {smoothed:.4g} exceeded {self.early_factor:g} x its minimum "
                          f"{self.early_best:.4g} at {where} (the first {self.warmup} points have the wider bar)")
        elif self.stop_factor is not None and smoothed > self.stop_factor * self.best:
            reason = (f"smoothed loss {smoothed:.4g} exceeded {self.stop_factor:g} x its minimum "
                      f"{self.best:.4g} at {where}")
        if reason is None:
            self.early_best = min(self.early_best, smoothed)
            if iteration >= self.warmup:
                self.best = min(self.best, smoothed)
        return reason


def stop_warmup(num_iters: int) -> int:
    """Points at the start of a sweep of ``num_iters`` that the factor rule ignores."""
    return trim(num_iters)[0]


# ---- suggestions -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Suggestion:
    """A suggested lr (None when there is none, with ``reason``) and the curve index it was read at."""

    lr: float | None
    index: int | None = None
    reason: str | None = None


def trim(n: int) -> tuple[int, int]:
    """Points skipped at the start and end of a curve of ``n`` finite points: the start is flat and the
    last points are where a divergence begins (Lightning skips 10 and 1, fastai n//10 and 5)."""
    return min(10, n // 10), min(5, max(1, n // 20))


def suggest(lrs: Sequence[float], smoothed: Sequence[float], method: str = DEFAULT_METHOD, *,
            losses: Sequence[float] | None = None, smoothing: float = 0.05) -> Suggestion:
    """Suggest an lr from a finished sweep; ``smoothed`` is the smoothed loss at each lr.

    Methods:
        valley (the default, chosen by measurement): fastai's ``valley``: the longest strictly decreasing run
            of the smoothed loss, taken halfway along (start + len/3 + len/6, as fastai).
        steepest: the most negative slope of the smoothed loss against log(lr), searched between the
            trimmed start and the loss minimum (the descending part only).
        min_div_10: the lr at the smoothed minimum, divided by 10 (fastai's ``minimum``).

    Points with a non-finite lr or loss are dropped first. No suggestion (``Suggestion(None, reason=...)``)
    when fewer than ``MIN_POINTS`` are left, or when the curve carries no signal (``signal_reason``: the
    raw batch ``losses`` and the EMA ``smoothing`` measure its noise; without ``losses`` only the relative
    part of the rule applies).

    Raises:
        ConfigError: for an unknown method.
    """
    if method not in METHODS:
        raise ConfigError(f"method ({method!r}) is not an LR finder suggestion method; use one of "
                          f"{', '.join(METHODS)}")
    keep = [i for i in range(min(len(lrs), len(smoothed)))
            if math.isfinite(lrs[i]) and lrs[i] > 0 and math.isfinite(smoothed[i])]
    if len(keep) < MIN_POINTS:
        return Suggestion(None, reason=(
            f"only {len(keep)} usable points ({len(lrs)} recorded, non-finite ones dropped); {method} needs "
            f"at least {MIN_POINTS}: raise num_iters (e.g. num_iters={DEFAULT_ITERS}), or raise stop_factor / "
            "lower max_lr if the sweep stopped early"))
    begin, end = trim(len(keep))
    window = keep[begin:len(keep) - end]
    x = [math.log(lrs[i]) for i in window]
    y = [float(smoothed[i]) for i in window]
    low = min(range(len(y)), key=y.__getitem__)
    if low == 0:
        return Suggestion(None, reason=(
            f"the smoothed loss never fell below its value at lr {lrs[window[0]]:.3g}: the range starts too "
            "high (lower min_lr) or the loss is dominated by noise (raise num_iters or batch)"))
    raw = [float(losses[i]) for i in keep] if losses is not None else None
    why = signal_reason([float(smoothed[i]) for i in keep], raw, smoothing, low=y[low], at=lrs[window[low]])
    if why is not None:
        return Suggestion(None, reason=why)
    if method == "steepest":
        slopes = _slopes(x[:low + 1], y[:low + 1])
        k = min(range(len(slopes)), key=slopes.__getitem__)
        if not slopes[k] < 0:
            return Suggestion(None, reason="the smoothed loss has no descending stretch; lower min_lr")
        return Suggestion(float(lrs[window[k]]), window[k])
    if method == "valley":
        k = _valley(y)
        return Suggestion(float(lrs[window[k]]), window[k])
    return Suggestion(float(lrs[window[low]]) / 10.0, window[low])


def early_points(n: int) -> int:
    """The first points of a curve of ``n`` that measure its start level and noise: max(10, n // 5)."""
    return min(n, max(10, n // 5))


def signal_reason(smoothed: Sequence[float], losses: Sequence[float] | None, smoothing: float, *,
                  low: float, at: float) -> str | None:
    """Why a curve carries no signal, or None when its descent is real.

    The rule (all over finite points): ``start`` is the mean of the first ``early_points(n)`` batch losses
    (the flat start of the sweep), ``noise`` their standard deviation estimated from successive differences
    (insensitive to a slow trend), and the noise of one smoothed value ``noise * sqrt(a / (2 - a))`` for the
    EMA weight ``a = smoothing``. The smoothed minimum ``low`` (read past the trimmed start, before the
    trimmed end) must lie below ``start`` by more than ``NOISE_K`` x that noise and by more than ``MIN_DROP``
    x ``start``. With NOISE_K = 15, 2000 pure-noise curves per size (20-500 points, smoothing 0.05) gave no
    suggestion with Gaussian batch losses and 0-0.3% with Student-t (3 dof) ones.

    >>> signal_reason([1.0] * 30, [1.0] * 30, 0.05, low=0.99, at=0.1) is not None
    True
    >>> signal_reason([1.0] * 30, [1.0] * 30, 0.05, low=0.5, at=0.1) is None
    True
    """
    source = list(losses) if losses is not None else list(smoothed)
    source = [v for v in source if math.isfinite(v)]
    early = source[:early_points(len(source))]
    if not early:
        return "no finite loss"
    start = sum(early) / len(early)
    diffs = [(b - a) ** 2 for a, b in zip(early, early[1:], strict=False)]
    noise = math.sqrt(sum(diffs) / (2 * len(diffs))) if diffs and losses is not None else 0.0
    smoothed_noise = noise * math.sqrt(smoothing / (2.0 - smoothing))
    need = max(NOISE_K * smoothed_noise, MIN_DROP * abs(start))
    drop = start - low
    if drop > need:
        return None
    return (f"no signal: the smoothed loss fell only {drop:.3g} below the mean {start:.4g} of the first "
            f"{len(early)} batch losses (lowest {low:.4g} at lr {at:.3g}), less than the {need:.3g} needed "
            f"(max of {NOISE_K:g} x the noise {smoothed_noise:.3g} of a smoothed value, {MIN_DROP:.0%} of the "
            "start): the curve is noise; raise batch or num_iters, or widen the range (lower min_lr, raise "
            "max_lr)")


def _slopes(x: Sequence[float], y: Sequence[float]) -> list[float]:
    """dy/dx at each point: central differences inside, one-sided at the ends (x strictly increasing)."""
    n = len(x)
    out = []
    for i in range(n):
        a, b = max(i - 1, 0), min(i + 1, n - 1)
        dx = x[b] - x[a]
        out.append((y[b] - y[a]) / dx if dx > 0 else 0.0)
    return out


def _valley(y: Sequence[float]) -> int:
    """fastai's valley index over ``y``: longest strictly decreasing subsequence ending at each point (here
    in O(n log n) with patience sorting instead of fastai's O(n^2) loops), then halfway along the longest."""
    tails: list[float] = []  # tails[k]: smallest -y ending an increasing run of -y of length k + 1
    best_len, best_end = 0, 0
    for i, value in enumerate(y):
        pos = bisect.bisect_left(tails, -value)
        if pos == len(tails):
            tails.append(-value)
        else:
            tails[pos] = -value
        if pos + 1 > best_len:
            best_len, best_end = pos + 1, i
    start = max(0, best_end - best_len)  # fastai's start; clamped (fastai can reach -1 and wrap around)
    sections = (best_end - start) / 3
    return min(start + int(sections) + int(sections / 2), len(y) - 1)
