"""The schedule registry: one frozen ``ScheduleInfo`` per kind, and the validating factory."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from detune.errors import ConfigError, did_you_mean
from detune.schedules._base import ParamSpec, Schedule, choice, epoch_list, is_number, lr_bound, number
from detune.schedules._kinds import (
    ConstantSchedule,
    CosineRestartsSchedule,
    CosineSchedule,
    CyclicSchedule,
    ExponentialSchedule,
    LinearSchedule,
    MultiStepSchedule,
    OneCycleSchedule,
    PolySchedule,
    StepSchedule,
    WSDSchedule,
)
from detune.schedules._plateau import PlateauSchedule


@dataclass(frozen=True)
class ScheduleInfo:
    """A registered schedule kind: its name, class, user-facing params (durations in epochs) and doc."""

    name: str
    cls: type[Schedule]
    params: Mapping[str, ParamSpec]
    description: str


def _info(name: str, cls: type[Schedule], description: str, **params: ParamSpec) -> ScheduleInfo:
    return ScheduleInfo(name, cls, MappingProxyType(params), description)


_LRF = number(0.01, lo=0, hi=1, doc="final lr as a fraction of the base lr (Ultralytics' lrf)")
_MIN_LR = lr_bound(0.0, relation="below", example=0.0, doc="absolute lr floor")
_GAMMA = number(0.1, lo=0, hi=1, lo_open=True, example=0.5, doc="lr multiplier per decay")

_REGISTRY: Mapping[str, ScheduleInfo] = MappingProxyType({
    info.name: info
    for info in (
        _info("constant", ConstantSchedule, "base lr throughout"),
        _info("linear", LinearSchedule, "Ultralytics' default linear decay to lrf x base lr", lrf=_LRF),
        _info("cosine", CosineSchedule, "Ultralytics' cos_lr half cosine to lrf x base lr", lrf=_LRF),
        _info(
            "step", StepSchedule, "multiply by gamma every step_size epochs",
            step_size=number(10, lo=0, lo_open=True, example=1, doc="epochs between decays"),
            gamma=number(0.5, lo=0, hi=1, lo_open=True, doc="lr multiplier per decay"),
        ),
        _info(
            "multistep", MultiStepSchedule, "multiply by gamma at each milestone epoch",
            milestones=epoch_list(None, example="[30, 60]", doc="decay epochs; None: 1/2, 3/4 of training"),
            gamma=_GAMMA,
        ),
        _info(
            "exponential", ExponentialSchedule, "multiply by gamma every epoch, smoothly over its steps",
            gamma=number(0.95, lo=0, hi=1, lo_open=True, doc="lr multiplier per epoch"),
        ),
        _info(
            "cosine_restarts", CosineRestartsSchedule, "SGDR: cosine to min_lr with warm restarts",
            period=number(10, lo=0, lo_open=True, doc="epochs of the first cosine cycle"),
            period_mult=number(1.0, lo=1, example=2, doc="growth factor of each next cycle"),
            min_lr=_MIN_LR,
        ),
        _info(
            "onecycle", OneCycleSchedule, "1cycle: warm up to max_lr, then anneal far below the start",
            # the peak: below the base lr it would train at max_lr while every summary says lr0
            max_lr=lr_bound(None, relation="at_least", example=lambda base: f"{base:g} (or leave it unset)",
                            doc="peak lr, >= the base lr; None: the base lr"),
            pct_start=number(0.3, lo=0, hi=1, lo_open=True, hi_open=True, doc="fraction of training rising"),
            div_factor=number(25.0, lo=1, doc="initial lr = max_lr / div_factor"),
            final_div_factor=number(1e4, lo=1, doc="final lr = initial lr / final_div_factor"),
            anneal=choice("cos", ("cos", "linear"), doc="shape of both phases"),
        ),
        _info(
            "cyclic", CyclicSchedule, "triangular cycles between the base lr (lower bound) and max_lr",
            max_lr=lr_bound(None, relation="above", example=lambda base: f"{4 * base:g}",
                            doc="upper bound; None: 4 x the base lr"),
            step_size_up=number(2, lo=0, lo_open=True, doc="epochs of each half cycle"),
            mode=choice("triangular", ("triangular", "triangular2", "exp_range"), doc="amplitude policy"),
            gamma=number(1.0, lo=0, hi=1, lo_open=True, example=0.9,
                         doc="exp_range amplitude multiplier per epoch"),
        ),
        _info(
            "poly", PolySchedule, "polynomial decay to min_lr",
            power=number(0.9, lo=0, lo_open=True, doc="exponent of (1 - progress)"),
            min_lr=_MIN_LR,
        ),
        _info(
            "wsd", WSDSchedule, "warmup-stable-decay: flat, then decay over the last decay_fraction",
            decay_fraction=number(0.2, lo=0, hi=1, lo_open=True, doc="fraction of training spent decaying"),
            decay_shape=choice("linear", ("linear", "cosine", "sqrt"), doc="shape of the decay"),
            min_lr=_MIN_LR,
        ),
        _info(
            "plateau", PlateauSchedule, "multiply by factor when fitness stalls for patience epochs",
            factor=number(0.1, lo=0, hi=1, lo_open=True, hi_open=True, example=0.5, doc="multiplier per cut"),
            patience=number(10, lo=0, integer=True, doc="epochs without improvement before a cut"),
            threshold=number(1e-4, lo=0, doc="minimum change that counts as improvement"),
            threshold_mode=choice("rel", ("rel", "abs"), doc="threshold relative to best, or absolute"),
            cooldown=number(0, lo=0, integer=True, doc="epochs after a cut before counting again"),
            min_lr=lr_bound(0.0, relation="below", example=0.0, doc="absolute lr floor"),
            mode=choice("max", ("max", "min"), doc="'max': fitness is maximised (Ultralytics' fitness)"),
        ),
    )
})


def list_schedules() -> list[str]:
    """Names accepted by :func:`create_schedule`, sorted.

    Example:
        >>> "cosine" in list_schedules()
        True
    """
    return sorted(_REGISTRY)


def get_schedule_info(name: str) -> ScheduleInfo:
    """The registry entry of ``name``.

    Raises:
        ConfigError: ``name`` is not registered; the message lists the valid names and the closest match.
    """
    info = _REGISTRY.get(name)
    if info is None:
        close = did_you_mean(name, _REGISTRY, quote=True)
        hint = f"{close} " if close else ""
        valid = ", ".join(list_schedules())
        raise ConfigError(f"scheduler ({name!r}) is not a known schedule; {hint}valid: {valid}")
    return info


def schedule_params(name: str) -> dict[str, Any]:
    """User-facing params of schedule ``name`` with their defaults (durations in epochs; ``None`` = derived).

    Example:
        >>> schedule_params("step")
        {'step_size': 10, 'gamma': 0.5}

    Raises:
        ConfigError: ``name`` is not registered.
    """
    return {key: spec.default for key, spec in get_schedule_info(name).params.items()}


def _check_positive(field: str, value: Any) -> None:
    if not is_number(value) or value <= 0:
        raise ConfigError(f"{field} ({value!r}) must be a finite number > 0")


def create_schedule(
    name: str, /, *, base_lr: float, total_steps: float, steps_per_epoch: float, **params: Any
) -> Schedule:
    """Build schedule ``name``, validating ``params`` and converting their epochs to optimizer steps.

    Args:
        name: A name from :func:`list_schedules`.
        base_lr: Starting lr of a weight param group (Ultralytics' ``lr0``), > 0.
        total_steps: Optimizer steps of the whole training (``epochs * steps_per_epoch``), > 0.
        steps_per_epoch: Real optimizer steps per epoch (``batches / accumulate``, may be fractional), > 0.
        **params: Kind-specific params (see :func:`schedule_params`); durations in epochs.

    Returns:
        A ``Schedule``: call it with an optimizer step to get the absolute lr.

    Raises:
        ConfigError: Unknown name or param, or a value outside its rule (the message names field, value,
            rule and a fix).

    Example:
        >>> sched = create_schedule("step", base_lr=0.01, total_steps=30, steps_per_epoch=10, step_size=1)
        >>> [sched(9), sched(10), sched(29)]
        [0.01, 0.005, 0.0025]
    """
    return build_schedule(
        name, params, base_lr=base_lr, total_steps=total_steps, steps_per_epoch=steps_per_epoch
    )


def build_schedule(
    name: str, params: Mapping[str, Any], *, base_lr: float, total_steps: float, steps_per_epoch: float
) -> Schedule:
    """:func:`create_schedule` with the params as a mapping (any key, even ``base_lr``, is checked)."""
    info = get_schedule_info(name)
    _check_positive("base_lr", base_lr)
    _check_positive("total_steps", total_steps)
    _check_positive("steps_per_epoch", steps_per_epoch)
    for key in params:
        if key not in info.params:
            raise ConfigError(_unknown_param_message(info, key))
    values = {key: params.get(key, spec.default) for key, spec in info.params.items()}
    for key, spec in info.params.items():
        spec.validate(key, values[key], base_lr)
    return info.cls.from_params(
        base_lr=float(base_lr),
        total_steps=float(total_steps),
        steps_per_epoch=float(steps_per_epoch),
        params=values,
    )


def _unknown_param_message(info: ScheduleInfo, key: str) -> str:
    if not info.params:
        return f"scheduler_params.{key} is not a parameter of schedule {info.name!r} (it has none); remove it"
    close = did_you_mean(key, info.params, n=2, quote=True, sep=" or ")
    hint = f" ({close})" if close else ""
    return (
        f"scheduler_params.{key} is not a parameter of schedule {info.name!r}{hint}; "
        f"valid parameters: {', '.join(info.params)}"
    )
