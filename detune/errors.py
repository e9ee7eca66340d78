"""The exception tree of detune: every user-facing failure is a ``DetuneError``."""

from __future__ import annotations


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


__all__ = ["AdapterError", "ConfigError", "DatasetError", "DetuneError", "TrackingError", "TuneError"]
