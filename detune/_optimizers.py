"""Optimizer names, their default lr0 and the rules of the optimizers detune builds itself (no torch here)."""

from __future__ import annotations

import importlib.util

from detune.errors import ConfigError

__all__ = ["OPTIMIZERS", "OPTIONAL_PACKAGES", "SCHEDULE_FREE", "TORCH_OPTIMIZERS", "default_lr0",
           "detune_built", "prodigy_rules", "require_package", "schedule_free_rules"]

OPTIMIZERS = ("SGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp", "MuSGD", "Adagrad", "Adadelta",
              "AdamWScheduleFree", "SGDScheduleFree", "Prodigy", "auto")
# Optimizers Ultralytics does not build: detune builds them (torch.optim) from the param groups Ultralytics
# makes for SGD (weights with decay, norm weights, biases), so lr0, weight_decay, warmup and schedules apply.
TORCH_OPTIMIZERS = ("Adagrad", "Adadelta")
# Schedule-free optimizers (Defazio et al., 2024, the `schedulefree` package): they replace the schedule and
# warm up themselves (their warmup_steps), so detune holds every group's lr at lr0 x its multiplier.
SCHEDULE_FREE = ("AdamWScheduleFree", "SGDScheduleFree")
# Optimizers from an optional package: (module to import, detune extra that installs it).
OPTIONAL_PACKAGES = {"AdamWScheduleFree": ("schedulefree", "schedulefree"),
                     "SGDScheduleFree": ("schedulefree", "schedulefree"), "Prodigy": ("prodigyopt", "prodigy")}
# Ultralytics' documented lr0 defaults (default.yaml: "SGD=1E-2, Adam=1E-3", RMSProp adaptive like Adam) and
# the packages' own for the optimizers detune builds itself: torch's for Adagrad and Adadelta; AdamW's 0.001
# for AdamWScheduleFree (schedulefree's own 0.0025 diverged on the shapes data, as plain AdamW at a constant
# 0.0025 did, where 0.001 trained); 10x SGD's 0.01 for SGDScheduleFree (its README: "10x-50x larger than
# classical rates"); Prodigy's 1.0 (it estimates the step size itself; lr0 is a multiplier on it). The lr0 of
# an lr0="auto" the LR finder could not resolve, and the centre of each optimizer family in the default search
# space.
_DEFAULT_LR0 = {"Adam": 1e-3, "Adamax": 1e-3, "AdamW": 1e-3, "NAdam": 1e-3, "RAdam": 1e-3, "RMSProp": 1e-3,
                "Adagrad": 1e-2, "Adadelta": 1.0, "AdamWScheduleFree": 1e-3, "SGDScheduleFree": 0.1,
                "Prodigy": 1.0}


def default_lr0(optimizer: str) -> float:
    """The default lr0 of ``optimizer``: 0.01 for SGD and MuSGD, 0.001 for Adam-like ones, torch's own for
    Adagrad (0.01) and Adadelta (1.0), 0.001 for AdamWScheduleFree, 0.1 for SGDScheduleFree, 1.0 for Prodigy."""
    return _DEFAULT_LR0.get(optimizer, 1e-2)


def detune_built(optimizer: str) -> bool:
    """Whether detune (not Ultralytics) builds ``optimizer``, over the param groups Ultralytics makes for SGD."""
    return optimizer in TORCH_OPTIMIZERS or optimizer in OPTIONAL_PACKAGES


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_package(optimizer: str) -> None:
    """Raise ``ConfigError`` naming the pip command when ``optimizer`` needs a package that is not installed
    (found without importing it, so the check costs nothing)."""
    if optimizer not in OPTIONAL_PACKAGES:
        return
    module, extra = OPTIONAL_PACKAGES[optimizer]
    if not _installed(module):
        raise ConfigError(f"optimizer ({optimizer!r}) needs the {module} package, which is not installed; "
                          f"pip install 'detune[{extra}]' (or pip install {module}), or pick another optimizer")


def schedule_free_rules(optimizer: str, scheduler: str | None, cos_lr: bool, momentum: float) -> str | None:
    """The schedule a schedule-free ``optimizer`` runs: ``constant`` when none is set (never Ultralytics'
    default linear); any other explicit ``scheduler`` (or ``cos_lr``), or a momentum of 0 (its averaging
    needs one in (0, 1)), raises ``ConfigError``. ``None`` for other optimizers."""
    if optimizer not in SCHEDULE_FREE:
        return None
    if momentum <= 0:
        raise ConfigError(f"momentum ({momentum!r}) must be in (0, 1) for optimizer {optimizer} (its interpolation "
                          "between the averaged and the trained weights); use e.g. momentum: 0.9")
    fix = "leave scheduler unset (or constant), or pick an optimizer with a schedule such as AdamW"
    if scheduler not in (None, "constant"):
        raise ConfigError(f"scheduler ({scheduler!r}) cannot be used with optimizer {optimizer}, which replaces "
                          f"the schedule (its lr stays at lr0 after its own warmup); {fix}")
    if cos_lr and scheduler is None:
        raise ConfigError(f"cos_lr (True) asks for a cosine schedule, which optimizer {optimizer} replaces; "
                          f"set cos_lr: false, or {fix}")
    return "constant"


def prodigy_rules(optimizer: str, lr_mult: object, lr_layer_decay: float | None) -> None:
    """Prodigy steps every param group at its estimate d x the largest group lr (``prodigyopt``'s ``step``), so
    per-group lr factors would silently do nothing: ``lr_mult`` and ``lr_layer_decay`` raise ``ConfigError``."""
    if optimizer != "Prodigy":
        return
    why = "Prodigy moves every param group by the same step (d x the largest group lr)"
    if lr_mult:
        raise ConfigError(f"lr_mult ({lr_mult!r}) cannot be used with optimizer Prodigy: {why}; remove lr_mult "
                          "or pick an optimizer such as AdamW")
    if lr_layer_decay is not None and lr_layer_decay != 1:
        raise ConfigError(f"lr_layer_decay ({lr_layer_decay!r}) cannot be used with optimizer Prodigy: {why}; "
                          "remove lr_layer_decay or pick an optimizer such as AdamW")
