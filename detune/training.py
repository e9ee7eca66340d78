"""``detune.train``: one YOLO training run with detune's LR control, dataset checks and tracking."""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detune.config import DetuneWarning, TrainConfig, load_config, schedule_kwargs
from detune.errors import AdapterError, ConfigError

if TYPE_CHECKING:
    from detune.tracking import TrackingConfig

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
    (pg0 weights with decay, pg1 norm weights, pg2 biases), NaN for an epoch without an optimizer step
    (fewer batches than ``accumulate``). ``steps`` holds the lr of every param group at every optimizer
    step. ``info["dropped_images"]`` lists the images Ultralytics skipped because they cannot be read.
    ``status`` is ``completed``, ``diverged`` (``reason`` says where and why) or ``failed`` (``reason``
    holds the error); the history up to that point is kept either way.
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
    out["warmup_epochs"] = cfg.warmup_epochs  # what ran, also when unset (clamped like Ultralytics)
    out["scheduler_params"] = schedule_kwargs(cfg)
    return out


def resolve_data(data: str) -> Path:
    """A data YAML path, or ``shapes[:key=value,...]``: the generated dataset (``make_shapes`` arguments,
    e.g. ``shapes:imgsz=64,n_train=256``), made once under detune's home and reused."""
    name, _, spec = str(data).partition(":")
    if name != "shapes":
        return Path(data).expanduser().resolve()
    import inspect

    from detune import _runtime
    from detune.config import safe_load
    from detune.datasets import make_shapes

    valid = [p for p in inspect.signature(make_shapes).parameters if p != "root"]
    overrides: dict[str, Any] = {}
    for pair in filter(None, spec.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or key.strip() not in valid:
            raise ConfigError(f"data ({data!r}): {pair!r} is not key=value with a key in {', '.join(valid)}; "
                              "use e.g. data: shapes:imgsz=64,n_train=256")
        overrides[key.strip()] = safe_load(value)
    tag = "-".join(f"{k}{v}" for k, v in sorted(overrides.items())) or "default"
    return make_shapes(_runtime.home() / "datasets" / f"shapes-{tag}", **overrides)


def optimizer_steps(cfg: TrainConfig, train_images: int) -> tuple[int, int, int]:
    """``(images, batches, accumulate)`` per epoch as Ultralytics counts them: ``fraction`` of the train
    images, ceil(images / batch) batches, one optimizer step per round(nbs / batch) batches (capped at the
    batches of the whole run, as Ultralytics caps it)."""
    images = max(1, round(train_images * float(cfg.extra.get("fraction", 1.0) or 1.0)))
    batches = math.ceil(images / cfg.batch)
    return images, batches, min(cfg.accumulate, batches * cfg.epochs)


def _warn_few_steps(cfg: TrainConfig, train_images: int) -> None:
    """Fewer batches than ``accumulate``: some epochs make no optimizer step (they do not train)."""
    images, batches, accumulate = optimizer_steps(cfg, train_images)
    if batches >= accumulate:
        return
    warnings.warn(f"{images} train images / batch {cfg.batch} = {batches} batches per epoch, and nbs {cfg.nbs} "
                  f"makes one optimizer step every {accumulate} batches: {batches / accumulate:.2g} optimizer steps "
                  f"per epoch ({batches * cfg.epochs // accumulate} in {cfg.epochs} epochs); an epoch without one "
                  f"updates no weights and reports lr NaN; set nbs={cfg.batch} (one optimizer step per batch)",
                  DetuneWarning, stacklevel=3)


def _absolute_data_yaml(dataset: Any) -> Path:
    """The checked dataset as a YAML with absolute paths, so Ultralytics resolves exactly what
    ``check_dataset`` checked, from any working directory (a Ray trial's too)."""
    import hashlib

    from detune import _runtime

    key = hashlib.sha1(str(dataset.yaml_path).encode()).hexdigest()[:12]
    return dataset.write_yaml(_runtime.home() / "data" / f"{dataset.yaml_path.stem}-{key}.yaml")


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
    return run(cfg)


class _Fanout:
    """Forwards the adapter's events to several observers (tracking, Ray reporting, progress)."""

    def __init__(self, observers: Sequence[Any]) -> None:
        self.observers = [o for o in observers if o is not None]

    def __getattr__(self, name: str) -> Any:
        fns = [getattr(o, name) for o in self.observers if hasattr(o, name)]

        def call(*args: Any) -> None:
            for fn in fns:
                fn(*args)

        return call


def run(cfg: TrainConfig, *, observers: Sequence[Any] = (), resume_from: Path | None = None,
        tracking: TrackingConfig | bool | None = None, fit: Any = None) -> TrainResult:
    """Run one training from a validated config: the engine under ``detune.train`` and study trials.

    ``observers`` receive the adapter's ``on_start``/``on_step``/``on_epoch`` events; ``resume_from`` is a
    ``last.pt`` written by detune to continue from (weights, optimizer state, epoch and LR step).
    ``tracking`` overrides ``cfg.tracking``: a ``TrackingConfig`` (study trials pass parent_run_id, run_id and
    tags this way), False for no tracking, None to use ``cfg.tracking``. With tracking on, the MLflow run id
    is ``result.run_id`` and the logging report (unlogged points, local copy) is ``result.info["tracking"]``.

    Raises:
        ConfigError: before any compute, for a ``project`` that cannot be a folder or cannot be written.
        TrackingError: before any training, when the tracking store cannot be reached.
    """
    from detune import tracking as tracking_mod
    from detune._paths import writable_dir
    from detune.datasets import check_dataset
    from detune.tracking_config import resolve_tracking

    writable_dir(cfg.project, field="project")  # before the LR finder, the dataset check and any run folder
    track = resolve_tracking(cfg.tracking if tracking is None else tracking)
    clamped = _check_before_compute(cfg, device=fit is None)  # a GPU this machine lacks; the warmup note
    finder = None
    if cfg.lr0 == "auto":  # resolved first: params, effective_lr0 and the adapter only ever see a number
        from detune.lr_finder import resolve_auto_lr0

        cfg, finder = resolve_auto_lr0(cfg, tracking=track, fit=fit)
    dataset = check_dataset(resolve_data(cfg.data))
    _warn_few_steps(cfg, dataset.train_images)
    data_yaml = _absolute_data_yaml(dataset)
    logger = None
    if track is not None:
        logger = tracking_mod.open_training_run(track, config=resolved_config(cfg), dataset=dataset.summary(),
                                                effective_lr0=cfg.effective_lr0)
    from detune.adapters import ultralytics as adapter

    try:
        outcome = (fit or adapter.fit)(cfg, data_yaml, observer=_Fanout([logger, *observers]),
                                       resume_from=resume_from)
    except BaseException as e:  # KeyboardInterrupt -> KILLED, setup errors -> FAILED; then re-raised
        if logger is not None:
            logger.abort(e)
        raise
    result = TrainResult(status=outcome.status, history=outcome.history, config=resolved_config(cfg),
                         save_dir=outcome.save_dir, weights=outcome.weights, reason=outcome.reason,
                         steps=outcome.steps, info={**outcome.info, "dataset": dataset.summary(),
                                                    "effective_lr0": cfg.effective_lr0,
                                                    "dropped_images": {"train": list(dataset.train_dropped),
                                                                       "val": list(dataset.val_dropped)}})
    if finder is not None:
        from detune.lr_finder import finder_info

        result.info["lr_finder"] = finder_info(finder, result.save_dir)
    _plot_schedule(cfg, result)
    if clamped:
        result.info["warmup_clamped"] = clamped
    if logger is not None:
        result.run_id = logger.run_id
        result.info["tracking"] = logger.finish(result)
    return result


def _check_before_compute(cfg: TrainConfig, *, device: bool = True) -> dict[str, float] | None:
    """Raise ``ConfigError`` for a GPU (or MPS) device torch cannot see here, before any data or model work
    (``device``: the Ultralytics adapter trains; another ``fit``, such as the fake, uses no device).
    An unset warmup_epochs is Ultralytics' 3.0, which YOLO.train shortens to epochs - 1: say so once (a
    DetuneWarning) and return ``cfg.warmup_clamped`` for ``result.info``."""
    if device:
        from detune.adapters.ultralytics import check_device

        check_device(cfg.device)
    clamped = cfg.warmup_clamped
    if clamped:
        import warnings

        from detune.config import DetuneWarning

        warnings.warn(f"warmup_epochs is not set: Ultralytics' default {clamped['from']:g} is clamped to "
                      f"{clamped['to']:g} to stay below epochs ({cfg.epochs}), as YOLO.train does; set "
                      "warmup_epochs to choose another warmup", DetuneWarning, stacklevel=3)
    return clamped


def _plot_schedule(cfg: TrainConfig, result: TrainResult) -> None:
    """Draw the planned LR schedule to ``save_dir/lr_schedule.png`` (not with ``plots`` off, like
    Ultralytics' own plots: matplotlib costs ~1 s); a plotting error never loses the run."""
    steps_per_epoch = result.info.get("steps_per_epoch")
    if not cfg.extra.get("plots", True) or not steps_per_epoch or not (result.save_dir and result.save_dir.is_dir()):
        return
    try:
        from detune.schedules import build_plan, plot

        plan = build_plan(scheduler=cfg.schedule_name, scheduler_params=schedule_kwargs(cfg),
                          lr0=cfg.effective_lr0, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                          interval=cfg.scheduler_interval, warmup_epochs=cfg.warmup_epochs,
                          warmup_bias_lr=cfg.warmup_bias_lr, warmup_momentum=cfg.warmup_momentum,
                          momentum=cfg.momentum)
        result.info["lr_schedule_png"] = str(plot(plan, result.save_dir / "lr_schedule.png"))
    except Exception as e:  # noqa: BLE001 - e.g. matplotlib missing
        result.info["lr_schedule_png"] = None
        result.info["lr_schedule_error"] = f"{type(e).__name__}: {e}"
