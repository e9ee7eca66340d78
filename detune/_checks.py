"""Value checks shared by every validator (config, schedules, the LR finder, search spaces, reports)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from detune.errors import ConfigError, did_you_mean

__all__ = ["is_number", "settings_block"]


def is_number(value: Any) -> bool:
    """A finite int or float; bools are rejected although Python counts them as ints.

    >>> [is_number(v) for v in (1, 0.5, True, float("nan"), "1")]
    [True, True, False, False, False]
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def settings_block(raw: Any, field: str, cls: type, example: str) -> Any:
    """A study's optional settings block (``confirm``, ``refine``, ``cv``): a mapping of ``cls``'s fields, true (its
    defaults), false or absent (None: off). Values are the caller's to check.

    Raises:
        ConfigError: not a mapping, or an unknown key (with the closest valid one).
    """
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{field} ({raw!r}) must be a mapping such as {field}: {example}, true (those defaults) "
                          "or false")
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in fields:
            close = did_you_mean(key, fields)
            raise ConfigError(f"{field}.{key} is unknown; {f'{close} ' if close else ''}valid: {', '.join(fields)}")
    return cls(**raw)
