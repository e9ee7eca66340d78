"""Value checks shared by every validator (config, schedules, the LR finder, search spaces, reports)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["is_number"]


def is_number(value: Any) -> bool:
    """A finite int or float; bools are rejected although Python counts them as ints.

    >>> [is_number(v) for v in (1, 0.5, True, float("nan"), "1")]
    [True, True, False, False, False]
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
