"""The ``Schedule`` base class, parameter specs that validate user input, and shared step maths."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from detune._checks import is_number
from detune.errors import ConfigError

# ``epoch * steps_per_epoch / steps_per_epoch`` can land one ulp below an integer; a boundary (a step
# decay, a milestone, a restart) reached up to this many steps "early" counts as reached, so an lr never
# changes one step late because of float noise. Far below one optimizer step, so it never shifts a real step.
BOUNDARY_TOL = 1e-9


def floor_steps(x: float) -> int:
    """``floor(x)``, treating an ``x`` within ``BOUNDARY_TOL`` below an integer as that integer."""
    return math.floor(x + BOUNDARY_TOL)


def reached(step: float, boundary: float) -> bool:
    """Whether optimizer step ``step`` is at or past ``boundary`` (both in steps), up to float noise."""
    return step >= boundary - boundary_slack(boundary)


def boundary_slack(boundary: float) -> float:
    """How far below ``boundary`` (in steps) float noise may put it: relative, but never 1/1000 of a step or
    more, so boundaries of the longest trainings (1e10 steps and more) are still hit on their own step."""
    return min(BOUNDARY_TOL * max(1.0, abs(boundary)), 1e-3)


def interp(x: float, x_end: float, y_start: float, y_end: float) -> float:
    """``numpy.interp(x, [0, x_end], [y_start, y_end])`` for ``x >= 0``, with numpy's exact arithmetic.

    Same operations as numpy's C kernel (slope first, exact right end), so detune's warmup equals
    Ultralytics' ``np.interp`` warmup bit for bit.
    """
    if x >= x_end:
        return y_end
    return (y_end - y_start) / x_end * x + y_start


@dataclass(frozen=True, kw_only=True)
class Schedule(ABC):
    """A learning-rate schedule: the absolute lr of a weight param group at an optimizer step.

    The training loop owns the step counter and passes it in; the schedule keeps no hidden state
    (``PlateauSchedule`` is the one exception: it changes only through :meth:`observe` and
    :meth:`load_state`).

    Args:
        base_lr: The lr the schedule starts from (Ultralytics' ``lr0``), > 0.
    """

    base_lr: float

    @abstractmethod
    def __call__(self, step: float) -> float:
        """Lr at 0-based optimizer step ``step`` (floats allowed, e.g. ``epoch * steps_per_epoch``)."""

    def observe(self, epoch: int, fitness: float) -> None:
        """Take one epoch's validation fitness (higher is better); closed-form schedules ignore it."""
        del epoch, fitness

    def state(self) -> dict[str, Any]:
        """What :meth:`observe` has learnt, as a JSON-safe dict for checkpoints; ``{}`` when closed-form."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state` dict when resuming; closed-form schedules have nothing to restore."""
        del state

    @classmethod
    def from_params(
        cls, *, base_lr: float, total_steps: float, steps_per_epoch: float, params: Mapping[str, Any]
    ) -> Schedule:
        """Build from validated user params (durations in epochs), converting epochs to steps once.

        Registered kinds implement this; ``create_schedule`` calls it after validation.
        """
        raise NotImplementedError(f"{cls.__name__} is not built from user params")


Check = Callable[[Any, float], bool]


@dataclass(frozen=True)
class ParamSpec:
    """One user-facing schedule parameter: its default, its rule (checked and quoted in errors) and a doc.

    ``rule`` completes "scheduler_params.<name> (<value>) ..." and may use ``{base_lr}`` (or is a function of
    the value and the base lr giving that text); ``check`` gets
    the value and the schedule's base lr; ``example`` is a valid value for the fix hint, or a function
    of the base lr giving one.
    """

    default: Any
    rule: str | Callable[[Any, float], str]
    example: Any
    check: Check
    doc: str = ""

    def validate(self, name: str, value: Any, base_lr: float) -> None:
        """Raise ``ConfigError`` naming field, value, rule and fix unless ``value`` is valid."""
        if not self.check(value, base_lr):
            rule = self.rule(value, base_lr) if callable(self.rule) else self.rule.format(base_lr=base_lr)
            example = self.example(base_lr) if callable(self.example) else self.example
            raise ConfigError(f"scheduler_params.{name} ({value!r}) {rule}; use e.g. {name}: {example}")


def number(
    default: float | None,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
    example: float | None = None,
    doc: str = "",
) -> ParamSpec:
    """A numeric parameter in an interval; ``None`` is accepted only when it is the default."""
    kind = "an integer" if integer else "a number"
    if lo is not None and hi is not None:
        rule = f"must be {kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        rule = f"must be {kind} {'>' if lo_open else '>='} {lo:g}"
    else:
        rule = f"must be {kind}"

    def check(value: Any, base_lr: float) -> bool:
        if value is None:
            return default is None
        if not is_number(value) or (integer and not isinstance(value, int)):
            return False
        above = lo is None or (value > lo if lo_open else value >= lo)
        below = hi is None or (value < hi if hi_open else value <= hi)
        return above and below

    return ParamSpec(default, rule, default if example is None else example, check, doc)


MAX_LR = 1e4  # the largest absolute lr a schedule param may name (as detune.config bounds lr0)


def lr_bound(default: float | None, *, relation: str, example: Any, doc: str = "") -> ParamSpec:
    """An absolute lr compared with the base lr: ``relation`` is "below" (``[0, base_lr)``), "above"
    (``(base_lr, MAX_LR]``) or "at_least" (``[base_lr, MAX_LR]``)."""
    if relation == "below":
        text = "must be a number in [0, base lr {base_lr:g})"
    elif relation == "above":
        text = "must be a number above the base lr ({base_lr:g})"
    else:
        text = "must be a number >= the base lr ({base_lr:g})"

    def rule(value: Any, base_lr: float) -> str:
        too_high = relation != "below" and is_number(value) and value > MAX_LR
        return f"must be a number <= {MAX_LR:g}" if too_high else text.format(base_lr=base_lr)

    def check(value: Any, base_lr: float) -> bool:
        if value is None:
            return default is None
        if not is_number(value):
            return False
        if relation == "below":
            return bool(0 <= value < base_lr)
        return bool((value > base_lr if relation == "above" else value >= base_lr) and value <= MAX_LR)

    return ParamSpec(default, rule, example, check, doc)


def choice(default: str, options: Sequence[str], *, doc: str = "") -> ParamSpec:
    """A string parameter taking one of ``options``."""
    rule = "must be one of " + ", ".join(repr(o) for o in options)
    return ParamSpec(default, rule, repr(default), lambda value, _: value in options, doc)


def epoch_list(default: Sequence[float] | None, *, example: str, doc: str = "") -> ParamSpec:
    """A non-empty, strictly increasing list of epoch counts > 0 (``None`` only as the default)."""

    def check(value: Any, base_lr: float) -> bool:
        if value is None:
            return default is None
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            return False
        if not all(is_number(v) and v > 0 for v in value):
            return False
        return all(a < b for a, b in zip(value[:-1], value[1:], strict=True))

    rule = "must be a non-empty, strictly increasing list of epochs > 0"
    return ParamSpec(default, rule, example, check, doc)
