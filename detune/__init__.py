"""detune: learning-rate control, LR range tests and Ray Tune searches for Ultralytics YOLO, in MLflow.

Importing detune is cheap and has no side effects: the public names below load their modules (and
torch, Ultralytics, Ray or MLflow behind them) on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "detune.training",
    "TrainResult": "detune.training",
    "TrainConfig": "detune.config",
    "load_config": "detune.config",
    "DetuneWarning": "detune.config",
    "tune": "detune.tuning",
    "StudyResult": "detune.study_files",
    "load_study": "detune.study",
    "lr_find": "detune.lr_finder",
    "LRFinderResult": "detune.lr_finder",
    "make_shapes": "detune.datasets",
    "check_dataset": "detune.datasets",
    "DatasetInfo": "detune.datasets",
    "DetuneError": "detune.errors",
    "ConfigError": "detune.errors",
    "DatasetError": "detune.errors",
    "AdapterError": "detune.errors",
    "TrackingError": "detune.errors",
    "TuneError": "detune.errors",
}

__all__ = [
    "AdapterError",
    "ConfigError",
    "DatasetError",
    "DatasetInfo",
    "DetuneError",
    "DetuneWarning",
    "LRFinderResult",
    "StudyResult",
    "TrackingError",
    "TrainConfig",
    "TrainResult",
    "TuneError",
    "check_dataset",
    "load_config",
    "load_study",
    "lr_find",
    "make_shapes",
    "train",
    "tune",
]

if TYPE_CHECKING:
    from detune.config import DetuneWarning, TrainConfig, load_config
    from detune.datasets import DatasetInfo, check_dataset, make_shapes
    from detune.errors import AdapterError, ConfigError, DatasetError, DetuneError, TrackingError, TuneError
    from detune.lr_finder import LRFinderResult, lr_find
    from detune.study import load_study
    from detune.study_files import StudyResult
    from detune.training import TrainResult, train
    from detune.tuning import tune


# Subpackages reachable as attributes after ``import detune`` (loaded on first use, like the names above).
_SUBMODULES = ("schedules",)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"detune.{name}")  # the import system sets it as an attribute
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'detune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])
