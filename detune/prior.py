"""The default study's search space, relative to the train config (issue 15 section 2).

``default_space(train)`` is what a study gets with no ``search_space`` (centred on the config's lr0) or with
``search_space: {lr0: auto}`` (centred on the LR finder's suggestion, resolved by ``detune.tune`` before the
trials). Every dimension keeps the config's own values inside, so the baseline trial (``baseline_first``)
is the config itself. Pure: builds ``Dim`` objects, imports nothing heavy.
"""

from __future__ import annotations

from detune.config import MAX_LR, SCHEDULE_FREE, TrainConfig, default_lr0
from detune.search_space import Dim

LR0_SPAN = (0.1, 10.0)  # x[1/10, 10] around the centre
LRF_RANGE = (0.01, 1.0)
ONE_MINUS_MOMENTUM = (0.02, 0.3)  # momentum 0.7 .. 0.98 (Ultralytics' 0.937 and AdamW's beta1 0.9 inside)
MAX_WARMUP_EPOCHS = 5.0
FAMILIES = ("SGD", "AdamW")  # each with its own lr: Ultralytics' 0.01 and 0.001
SCHEDULES = ("linear", "cosine")


def default_space(train: TrainConfig, lr_suggestion: float | None = None) -> dict[str, Dim]:
    """The default search space for studies of 8-30 trials.

    Args:
        train: the study's base config. Its lr0 is the centre of the lr0 range for its own optimizer family.
        lr_suggestion: the LR finder's suggestion, when it is the centre instead (the trials must then start
            from ``train.replace(lr0=lr_suggestion)``: ``lr0_scale`` multiplies the base config's lr0).

    Returns:
        ``{key: Dim}``: ``optimizer`` (SGD or AdamW), ``lr0_scale`` log-uniform x[1/10, 10] around the
        family's centre (the other family's centre is 10x apart, as Ultralytics' defaults are; clipped so
        lr0 stays within config.py's range), ``lrf`` log-uniform [0.01, 1], ``one_minus_momentum``
        log-uniform [0.02, 0.3], ``warmup_epochs`` uniform [0, min(5, epochs / 3)] (widened to the config's
        own warmup), ``scheduler`` linear or cosine (plus the config's own kind; no ``scheduler`` for a
        schedule-free config: its trials run constant, the SGD and AdamW trials Ultralytics' linear). Every
        range is widened to hold the config's own value, so the baseline trial is always a point of the space.
    """
    centre = lr_suggestion if lr_suggestion is not None else train.lr0
    families = _with(FAMILIES, train.optimizer if train.optimizer != "auto" else None)
    low, high = LR0_SPAN
    if isinstance(centre, (int, float)):
        top = max(centre * default_lr0(f) / default_lr0(train.optimizer) for f in families)
        high = min(high, MAX_LR / top)
    warmup_high = max(min(MAX_WARMUP_EPOCHS, train.epochs / 3), float(train.warmup_epochs))
    # widened to hold the config's own values: the baseline trial must lie inside the space
    lrf = (min(LRF_RANGE[0], train.lrf), LRF_RANGE[1])
    gap = 1.0 - train.momentum
    one_minus_momentum = (min(ONE_MINUS_MOMENTUM[0], gap), max(ONE_MINUS_MOMENTUM[1], gap)) if gap > 0 else \
        ONE_MINUS_MOMENTUM
    space = {
        "optimizer": Dim("optimizer", "choice", families),
        "lr0_scale": Dim("lr0_scale", "loguniform", (low, high)),
        "lrf": Dim("lrf", "loguniform", lrf),
        "one_minus_momentum": Dim("one_minus_momentum", "loguniform", one_minus_momentum),
        "warmup_epochs": Dim("warmup_epochs", "uniform", (0.0, warmup_high)),
        "scheduler": Dim("scheduler", "choice", _with(SCHEDULES, train.schedule_name)),
    }
    if train.optimizer in SCHEDULE_FREE:  # it refuses any schedule but constant
        del space["scheduler"]
    return space


def _with(values: tuple[str, ...], own: str | None) -> tuple[str, ...]:
    return values if own is None or own in values else (*values, own)
