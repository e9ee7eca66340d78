"""``detune.train``: one YOLO training run with detune's LR control, dataset checks and tracking."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detune import advice as advice_mod
from detune import tracking as tracking_mod
from detune._lr_suggest import DEFAULT_METHOD, FinderSettings
from detune._paths import atomic_write, writable_dir
from detune.adapters import ultralytics as adapter
from detune.adapters.base import Fanout, Fit, RunOutcome, partial_outcome
from detune.config import (
    DetuneWarning,
    TrainConfig,
    default_lr0,
    load_config,
    lr_plan,
    optimizer_steps,
    schedule_kwargs,
)
from detune.datasets import PreparedData, prepare_data, resolve_data
from detune.errors import ConfigError
from detune.lr_finder import PLOT_NAME, LRFinderResult, fallback_lr0, range_test
from detune.tracking_config import resolve_tracking

if TYPE_CHECKING:
    from detune.tracking_config import TrackingConfig

__all__ = ["ADVICE_FILE", "CANONICAL_KEYS", "TrainResult", "advice_context", "diagnose", "finder_info",
           "optimizer_steps", "resolve_auto_lr0", "resolved_config", "run", "run_folds", "train"]

log = logging.getLogger("detune")

ADVICE_FILE = "advice.json"  # the training-health advice, in the run folder (save_dir)
CANONICAL_KEYS = (
    "epoch", "train/box_loss", "train/cls_loss", "train/dfl_loss", "val/box_loss", "val/cls_loss", "val/dfl_loss",
    "metrics/precision", "metrics/recall", "metrics/mAP50", "metrics/mAP50-95", "fitness", "lr/pg0", "lr/pg1",
    "lr/pg2",
)


@dataclasses.dataclass
class TrainResult(RunOutcome):
    """What one training produced: the trainer's ``RunOutcome`` with the resolved settings in ``config``.

    ``history`` holds one dict per epoch with ``CANONICAL_KEYS`` (epochs numbered from 1, as in
    Ultralytics' results.csv); ``lr/pgN`` is the lr in effect at the last optimizer step of that epoch
    (pg0 weights with decay, pg1 norm weights, pg2 biases), NaN for an epoch without an optimizer step
    (fewer batches than ``accumulate``). ``steps`` holds, for every optimizer step, ``step`` (from 0),
    ``epoch`` (from 0), the lr of every param group (``lr/pgN``), ``loss`` (the mean batch loss, box + cls +
    dfl per image, over the batches that step accumulated) and ``loss_smooth`` (the divergence guard's
    bias-corrected EMA of the batch loss). ``info["dropped_images"]`` lists the images Ultralytics skipped
    because they cannot be read; ``info["advice"]`` the training-health advice (``detune.advice``, as dicts,
    also in ``save_dir/advice.json``).
    ``status`` is ``completed``, ``diverged`` (``reason`` says where and why) or ``failed`` (``reason``
    holds the error); the history up to that point is kept either way.
    """

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


def advice_context(result: RunOutcome) -> dict[str, Any]:
    """What ``detune.advice.diagnose`` needs beyond the curves: the run's settings (``result.config``, as
    ``resolved_config`` writes it), the trainer's step counts (``result.info``), its status and reason."""
    cfg, info = result.config, result.info
    return {"lr0": info.get("effective_lr0", cfg.get("lr0")), "reference_lr0": default_lr0(str(cfg.get("optimizer"))),
            "optimizer": cfg.get("optimizer"), "scheduler": cfg.get("scheduler"), "epochs": cfg.get("epochs"),
            "warmup_epochs": cfg.get("warmup_epochs"), "warmup_steps": info.get("warmup_steps"),
            "steps_per_epoch": info.get("steps_per_epoch"), "status": result.status, "reason": result.reason}


def diagnose(result: RunOutcome) -> list[dict[str, Any]]:
    """``detune.advice.diagnose`` over ``result``, as plain dicts; also written to ``save_dir/advice.json``
    (what a study report reads for each trial), when there is a save_dir. A failing rule never costs the
    run its result: the advice is then one ``undiagnosed`` entry naming the error."""
    try:
        advice = [a.to_dict() for a in advice_mod.diagnose(result.history, result.steps,
                                                           config_summary=advice_context(result))]
    except Exception as e:  # noqa: BLE001 - the training's results matter more than its diagnosis
        log.warning("training-health advice failed: %s: %s", type(e).__name__, e)
        advice = [advice_mod.Advice("undiagnosed", f"the advisor failed: {type(e).__name__}: {e}").to_dict()]
    if result.save_dir is not None and result.save_dir.is_dir():
        try:
            atomic_write(result.save_dir / ADVICE_FILE, json.dumps(advice, indent=1) + "\n")
        except OSError as e:  # a full disk never loses the run: the advice stays in result.info
            log.warning("could not write %s: %s", result.save_dir / ADVICE_FILE, e)
    return advice


def _diagnose_partial(cfg: TrainConfig, error: BaseException) -> list[dict[str, Any]] | None:
    """The advice on the epochs a run made before ``error`` ended it from outside (a trial its scheduler
    stopped: Ray's SystemExit), or None when the trainer left no curves on the exception."""
    partial = partial_outcome(error)
    if partial is None:
        return None
    partial.config = resolved_config(cfg)
    partial.info = {**partial.info, "effective_lr0": cfg.effective_lr0}
    return diagnose(partial)


def resolved_config(cfg: TrainConfig) -> dict[str, Any]:
    """The fully resolved settings: schedule name and params filled in, re-runnable with ``detune.train``."""
    out = cfg.to_dict()
    out["scheduler"] = cfg.schedule_name
    out["warmup_epochs"] = cfg.warmup_epochs  # what ran, also when unset (clamped like Ultralytics)
    out["scheduler_params"] = schedule_kwargs(cfg)
    return out


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


def train(config: str | os.PathLike[str] | Mapping[str, Any] | TrainConfig | None = None, /,
          **overrides: Any) -> TrainResult:
    """Train a YOLO model with detune's learning-rate control.

    Args:
        config: a YAML path, a mapping or a ``TrainConfig``; keyword overrides win over it. Keys are
            Ultralytics' names (lr0, lrf, momentum, weight_decay, warmup_epochs, warmup_momentum,
            warmup_bias_lr, cos_lr, optimizer, model, data, epochs, batch, imgsz, device, seed, ...)
            plus detune's (scheduler, scheduler_params, scheduler_interval, lr_mult, lr_scaling,
            divergence_factor, threads, tracking, score_test).

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


def run(cfg: TrainConfig, *, observers: Sequence[Any] = (), resume_from: Path | None = None,
        tracking: TrackingConfig | bool | None = None, fit: Fit | None = None,
        data: PreparedData | None = None) -> TrainResult:
    """Run one training from a validated config: the engine under ``detune.train`` and study trials.

    ``observers`` receive the adapter's ``on_start``/``on_step``/``on_epoch`` events; ``resume_from`` is a
    ``last.pt`` written by detune to continue from (weights, optimizer state, epoch and LR step).
    ``tracking`` overrides ``cfg.tracking``: a ``TrackingConfig`` (study trials pass parent_run_id, run_id and
    tags this way), False for no tracking, None to use ``cfg.tracking``. With tracking on, the MLflow run id
    is ``result.run_id`` and the logging report (unlogged points, local copy) is ``result.info["tracking"]``.
    ``fit`` replaces the Ultralytics adapter (``detune.adapters.base.Fit``). ``data`` is ``cfg.data`` already
    prepared (a study's driver checks it once for all trials); it is used when its YAML is on this machine.

    Raises:
        ConfigError: before any compute, for a ``project`` that cannot be a folder or cannot be written.
        TrackingError: before any training, when the tracking store cannot be reached.
    """
    writable_dir(cfg.project, field="project")  # before the LR finder, the dataset check and any run folder
    track = resolve_tracking(cfg.tracking if tracking is None else tracking)
    clamped = _check_before_compute(cfg, device=fit is None)  # a GPU this machine lacks; the warmup note
    if data is None or not data.yaml.is_file() or data.dataset.yaml_path != resolve_data(cfg.data):
        data = prepare_data(cfg.data)  # checked once, for the LR finder and the training
    if cfg.score_test and not data.dataset.test:  # refused before the LR finder and the training
        raise ConfigError(f"score_test is true but the data YAML {str(data.dataset.yaml_path)!r} has no test: "
                          "split; add one (e.g. test: images/test) or set score_test: false")
    finder = None
    if cfg.lr0 == "auto":  # resolved first: params, effective_lr0 and the adapter only ever see a number
        cfg, finder = resolve_auto_lr0(cfg, tracking=track, fit=fit, data=data)
    dataset = data.dataset
    _warn_few_steps(cfg, dataset.train_images)
    logger = None
    if track is not None:
        logger = tracking_mod.open_training_run(track, config=resolved_config(cfg), dataset=dataset.summary(),
                                                effective_lr0=cfg.effective_lr0)
    try:
        outcome = (fit or adapter.fit)(cfg, data.yaml, observer=Fanout([logger, *observers]),
                                       resume_from=resume_from)
    except BaseException as e:  # KeyboardInterrupt -> KILLED, setup errors -> FAILED; then re-raised
        advice = _diagnose_partial(cfg, e)
        if logger is not None:
            logger.abort(e, advice=advice)
        raise
    fields = {f.name: getattr(outcome, f.name) for f in dataclasses.fields(RunOutcome)}
    result = TrainResult(**{**fields, "config": resolved_config(cfg),
                            "info": {**outcome.info, "dataset": dataset.summary(), "effective_lr0": cfg.effective_lr0,
                                     "dropped_images": {"train": list(dataset.train_dropped),
                                                        "val": list(dataset.val_dropped)}}})
    if result.info.get("test_error"):
        warnings.warn(f"score_test: best.pt could not be scored on the test split of {str(data.yaml)!r} "
                      f"({result.info['test_error']}); the training's results are kept", DetuneWarning, stacklevel=2)
    if finder is not None:
        result.info["lr_finder"] = finder_info(finder, result.save_dir)
    _plot_schedule(cfg, result)
    result.info["advice"] = diagnose(result)
    if clamped:
        result.info["warmup_clamped"] = clamped
    if logger is not None:
        if result.info.get("test"):  # the held-out score of score_test, once, at the last epoch
            logger.log_metrics(result.info["test"], step=len(result.history))
        result.run_id = logger.run_id
        result.info["tracking"] = logger.finish(result)
    return result


FoldJob = tuple[TrainConfig, "TrackingConfig | bool"]  # one fold's training: its config and its tracking


def run_folds(cfg: TrainConfig, folds: Sequence[Path], *, metric: str, tracking: TrackingConfig | None = None,
              fit: Fit | None = None,
              parallel: Callable[[list[FoldJob]], list[TrainResult]] | None = None) -> TrainResult:
    """One cross-validated training (``detune.cv``): ``cfg`` trained once per fold data YAML into
    ``<project>/<name>/fold<i>``, one after the other, or all at once by ``parallel`` (given the folds' jobs,
    it returns their results in order; a study runs them as Ray tasks). The result's ``history`` is the
    mean over the folds, epoch by epoch, with ``cv/std`` and ``cv/fold<i>`` of ``metric``
    (``detune.cv.fold_mean``); ``info["folds"]`` has each fold's status, best ``metric`` and folder. A fold
    that diverges or fails gives the result its status.

    With ``tracking``, the run of the whole (its history: the mean curve) holds one nested run per fold
    (``<name>-fold<i>``, tag ``detune.fold``), each logged as a ``detune.train`` run is.
    """
    from detune.cv import fold_mean

    writable_dir(cfg.project, field="project")
    logger = None
    if tracking is not None:
        logger = tracking_mod.open_training_run(tracking, config=resolved_config(cfg),
                                                dataset={"data.cv_folds": len(folds)}, effective_lr0=cfg.effective_lr0)
    folder = Path(cfg.project) / cfg.name
    jobs: list[FoldJob] = [(cfg.replace(data=str(data), project=str(folder), name=f"fold{i}", exist_ok=True),
                            False if logger is None else tracking.replace(
                                parent_run_id=logger.run_id, run_id=None, run_name=f"{cfg.name}-fold{i}",
                                tags={**tracking.tags, "detune.fold": str(i)}))
                           for i, data in enumerate(folds)]
    results: list[TrainResult] = []
    try:
        if parallel is not None:
            results = list(parallel(jobs))
        for fold_cfg, fold_tracking in jobs if parallel is None else ():
            results.append(run(fold_cfg, tracking=fold_tracking, fit=fit))
            if results[-1].status != "completed":
                break
    except BaseException as e:
        if logger is not None:
            logger.abort(e)
        raise
    worst = next((i for i, r in enumerate(results) if r.status != "completed"), None)
    history = fold_mean([r.history for r in results], metric) if worst is None else []
    status = "completed" if worst is None else results[worst].status
    reason = None if worst is None else f"fold {worst}: {results[worst].reason}"
    result = TrainResult(status=status, history=history, save_dir=folder, config=resolved_config(cfg),
                         reason=reason, info={"folds": [
                             {"status": r.status, "best": r.best.get(metric), "save_dir": str(r.save_dir)}
                             for r in results]})
    if logger is not None:
        for record in history:
            logger.on_epoch(record, folder)
        result.run_id = logger.run_id
        result.info["tracking"] = logger.finish(result)
    return result


def resolve_auto_lr0(cfg: TrainConfig, *, tracking: TrackingConfig | None = None, method: str = DEFAULT_METHOD,
                     settings: FinderSettings | None = None,
                     fit: Fit | None = None, data: PreparedData | None = None) -> tuple[TrainConfig, LRFinderResult]:
    """Run the finder for ``cfg`` (lr0 "auto") and return ``cfg`` with the suggestion as its effective lr0
    (``lr_scaling`` is not applied on top of a measured lr), plus the finder's result. ``tracking``: None is
    off; a ``TrackingConfig`` makes the finder its own run (nested under ``parent_run_id`` when set).

    When the finder gives no suggestion (too few points, or a curve with no signal) the training must not
    pay for it: ``cfg`` comes back with ``fallback_lr0(cfg)`` and a ``DetuneWarning`` says why
    (``finder_info`` records it as ``fallback``).
    """
    result = range_test(cfg, settings, tracking=tracking if tracking is not None else False, fit=fit, data=data)
    lr = result.suggestion(method)
    if lr is None:
        fallback = fallback_lr0(cfg)
        warnings.warn(f"lr0 ('auto'): the LR finder gave no {method} suggestion ({result.reason}); training at "
                      f"lr0 {fallback:g} instead, the default for {cfg.optimizer} (set lr0 to a "
                      "number to choose it yourself)", DetuneWarning, stacklevel=2)
        return cfg.replace(lr0=fallback), result
    scale = cfg.replace(lr0=lr).effective_lr0 / lr
    return cfg.replace(lr0=lr / scale), result


def finder_info(result: LRFinderResult, save_dir: Path | None, method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """What ``TrainResult.info["lr_finder"]`` records; the plot goes to ``save_dir/lr_finder.png``.
    ``suggestion`` is None and ``reason`` says why when the training fell back to ``fallback_lr0``."""
    plot = None
    if save_dir is not None and save_dir.is_dir():
        try:
            plot = str(result.plot(save_dir / PLOT_NAME, method=method))
        except Exception as e:  # noqa: BLE001 - a plotting error never loses the run
            log.warning("LR finder plot failed: %s: %s", type(e).__name__, e)
    found = result.suggest(method)
    return {"suggestion": found.lr, "method": method, "reason": found.reason, "fallback": found.lr is None,
            "plot": plot, "run_id": result.run_id, "points": len(result.lrs), "num_iters": result.num_iters,
            "stop_reason": result.stop_reason, "settings": result.settings.to_dict()}


def _check_before_compute(cfg: TrainConfig, *, device: bool = True) -> dict[str, float] | None:
    """Raise ``ConfigError`` for a GPU (or MPS) device torch cannot see here, before any data or model work
    (``device``: the Ultralytics adapter trains; another ``fit``, such as the fake, uses no device).
    An unset warmup_epochs is Ultralytics' 3.0, which YOLO.train shortens to epochs - 1: say so once (a
    DetuneWarning) and return ``cfg.warmup_clamped`` for ``result.info``."""
    if device:
        adapter.check_device(cfg.device)
    clamped = cfg.warmup_clamped
    if clamped:
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
        from detune.schedules import plot, plot_groups

        plan = lr_plan(cfg, steps_per_epoch)
        groups = plot_groups(cfg.lr_mult, cfg.lr_layer_decay)
        result.info["lr_schedule_png"] = str(plot(plan, result.save_dir / "lr_schedule.png", groups=groups))
    except Exception as e:  # noqa: BLE001 - e.g. matplotlib missing
        result.info["lr_schedule_png"] = None
        result.info["lr_schedule_error"] = f"{type(e).__name__}: {e}"
