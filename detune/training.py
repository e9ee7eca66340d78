"""``detune.train``: one YOLO training run with detune's LR control, dataset checks and tracking."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detune.config import TrainConfig, load_config, schedule_kwargs
from detune.errors import AdapterError

CANONICAL_KEYS = (
    "epoch", "train/box_loss", "train/cls_loss", "train/dfl_loss", "val/box_loss", "val/cls_loss", "val/dfl_loss",
    "metrics/precision", "metrics/recall", "metrics/mAP50", "metrics/mAP50-95", "fitness", "lr/pg0", "lr/pg1",
    "lr/pg2",
)


@dataclasses.dataclass
class TrainResult:
    """What one training produced.

    ``history`` holds one dict per epoch with ``CANONICAL_KEYS`` (epochs numbered from 1, as in
    Ultralytics' results.csv); ``lr/pgN`` is the lr in effect at the last optimizer step of that epoch
    (pg0 weights with decay, pg1 norm weights, pg2 biases). ``steps`` holds the lr of every param group
    at every optimizer step. ``status`` is ``completed``, ``diverged`` (``reason`` says where and why)
    or ``failed`` (``reason`` holds the error); the history up to that point is kept either way.
    """

    status: str
    history: list[dict[str, float]]
    config: dict[str, Any]
    save_dir: Path | None = None
    weights: dict[str, Path] = dataclasses.field(default_factory=dict)
    reason: str | None = None
    steps: list[dict[str, float]] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    run_id: str | None = None

    @property
    def best_epoch(self) -> int | None:
        scored = [h for h in self.history if math.isfinite(h.get("fitness", math.nan))]
        return int(max(scored, key=lambda h: h["fitness"])["epoch"]) if scored else None

    @property
    def best(self) -> dict[str, float]:
        """Metrics of the best epoch (highest fitness), or {} when no epoch finished."""
        epoch = self.best_epoch
        return next((dict(h) for h in self.history if h["epoch"] == epoch), {})

    def raise_for_status(self) -> TrainResult:
        """Raise ``AdapterError`` if the run failed (diverged runs are results, not errors)."""
        if self.status == "failed":
            raise AdapterError(f"training failed: {self.reason}; partial results in {self.save_dir}")
        return self


def resolved_config(cfg: TrainConfig) -> dict[str, Any]:
    """The fully resolved settings: schedule name and params filled in, re-runnable with ``detune.train``."""
    out = cfg.to_dict()
    out["scheduler"] = cfg.schedule_name
    out["scheduler_params"] = schedule_kwargs(cfg)
    return out


def resolve_data(data: str) -> Path:
    """A data YAML path, or ``"shapes"``: the generated dataset, made once under detune's home."""
    if data == "shapes":
        from detune import _runtime
        from detune.datasets import make_shapes

        return make_shapes(_runtime.home() / "datasets" / "shapes")
    return Path(data).expanduser().resolve()


def train(config: str | os.PathLike[str] | Mapping[str, Any] | TrainConfig | None = None, /,
          **overrides: Any) -> TrainResult:
    """Train a YOLO model with detune's learning-rate control.

    Args:
        config: a YAML path, a mapping or a ``TrainConfig``; keyword overrides win over it. Keys are
            Ultralytics' names (lr0, lrf, momentum, weight_decay, warmup_epochs, warmup_momentum,
            warmup_bias_lr, cos_lr, optimizer, model, data, epochs, batch, imgsz, device, seed, ...)
            plus detune's (scheduler, scheduler_params, scheduler_interval, lr_mult, lr_scaling,
            divergence_factor, threads, tracking).

    Raises:
        ConfigError: before any compute, for an unknown key, an invalid value or a bad dataset.
        AdapterError: when the model cannot be built.

    Example:
        >>> import detune
        >>> result = detune.train(data="shapes", epochs=2, imgsz=64, lr0=0.02)  # doctest: +SKIP
        >>> result.status, result.history[-1]["metrics/mAP50-95"]  # doctest: +SKIP
    """
    if isinstance(config, TrainConfig):
        cfg = config.replace(**overrides) if overrides else config
    else:
        cfg = load_config(config, **overrides)
    from detune.datasets import check_dataset

    data_yaml = resolve_data(cfg.data)
    dataset = check_dataset(data_yaml)
    from detune.adapters import ultralytics as adapter

    outcome = adapter.fit(cfg, data_yaml)
    return TrainResult(status=outcome.status, history=outcome.history, config=resolved_config(cfg),
                       save_dir=outcome.save_dir, weights=outcome.weights, reason=outcome.reason,
                       steps=outcome.steps, info={**outcome.info, "dataset": dataset.summary(),
                                                  "effective_lr0": cfg.effective_lr0})
