"""The exception tree of detune: every user-facing failure is a ``DetuneError``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DetuneError(Exception):
    """Base class of every error detune raises on purpose."""


class ConfigError(DetuneError, ValueError):
    """A setting is unknown, missing or outside its valid range (raised before any compute)."""


class DatasetError(ConfigError):
    """A dataset YAML, image folder or label file is missing or malformed."""


class AdapterError(DetuneError):
    """Ultralytics failed while building or training a model; the cause is chained."""


class TrackingError(DetuneError):
    """The MLflow tracking store cannot be reached or written."""


class TuneError(DetuneError):
    """A Ray Tune study cannot be set up, run or resumed."""


def did_you_mean(value: object, choices: Iterable[str], *, n: int = 1, quote: bool = False,
                 sep: str = ", ") -> str | None:
    """The "did you mean ...?" hint of an error message: the ``n`` choices closest to ``value`` (difflib),
    shown as ``repr`` with ``quote``, joined by ``sep``; None when none is close.

    >>> did_you_mean("stepp", ["step", "cosine"], quote=True)
    "did you mean 'step'?"
    """
    close = difflib.get_close_matches(str(value), list(choices), n=n)
    return f"did you mean {sep.join(repr(c) if quote else c for c in close)}?" if close else None


__all__ = ["AdapterError", "ConfigError", "DatasetError", "DetuneError", "TrackingError", "TuneError", "did_you_mean"]
