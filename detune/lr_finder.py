"""LR range test (LR finder) on YOLO's real training loss: a short throw-away training through the adapter.

The lr rises from ``min_lr`` to ``max_lr`` over ``num_iters`` optimizer steps (100 by default, the training
batches cycled as often as needed; None = one epoch), every param group at ``lr x its group factor``; the
batch loss (box + cls + dfl per image) is smoothed with a bias-corrected EMA and the run stops once the
smoothed loss exceeds ``stop_factor`` x its minimum or is not finite. The model, optimizer and run folder are
thrown away afterwards (a temp dir), so nothing leaks into later training. A curve whose smoothed loss does
not fall clearly below its start (beyond the noise of the batch losses, see
``detune._lr_suggest.signal_reason``), or with fewer than ``MIN_POINTS`` points, gives no suggestion;
``lr0="auto"`` then trains at ``fallback_lr0`` with a ``DetuneWarning``. The maths lives in
``detune._lr_suggest`` (pure functions over lists).

Example:
    >>> import detune
    >>> result = detune.lr_find(data="shapes", imgsz=128, batch=8)  # doctest: +SKIP
    >>> result.suggestion(), result.reason  # doctest: +SKIP
    >>> result.plot("lr_finder.png")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detune import _plotting
from detune._lr_suggest import (
    DEFAULT_METHOD,
    METHODS,
    MODES,
    FinderSettings,
    LossSmoother,
    Mode,
    StopRule,
    Suggestion,
    lr_at,
    stop_warmup,
    suggest,
    trim,
)
from detune.adapters.base import Fanout, Fit, RunOutcome
from detune.config import TrainConfig, default_lr0, load_config, optimizer_steps
from detune.datasets import PreparedData, prepare_data
from detune.errors import AdapterError, ConfigError
from detune.tracking_config import resolve_tracking

if TYPE_CHECKING:
    from detune.tracking_config import TrackingConfig

__all__ = ["DEFAULT_METHOD", "METHODS", "MODES", "PLOT_NAME", "FinderSettings", "LRFinderResult", "Suggestion",
           "fallback_lr0", "lr_find", "range_test"]

log = logging.getLogger("detune")

PLOT_NAME = "lr_finder.png"
# The settings of the training config that shape the curve, recorded with every result (and as MLflow params).
_RECORDED = ("model", "data", "optimizer", "batch", "imgsz", "device", "seed", "momentum", "weight_decay",
             "lr_mult")
_MIXING_AUGMENTATIONS = ("mosaic", "mixup", "cutmix", "copy_paste")


@dataclasses.dataclass
class LRFinderResult:
    """The curve of one LR range test.

    ``losses[i]`` is the batch loss (box + cls + dfl per image) of optimizer step ``i``, which ran at
    ``lrs[i]``; ``smoothed`` is its bias-corrected EMA (NaN where the loss was not finite). ``stop_reason``
    says why the sweep ended before ``num_iters`` (None when it covered the whole range); ``reason`` says why
    the last ``suggestion()`` call returned None (None after a suggestion). ``config`` holds the training
    settings the curve was measured with; ``run_id`` the finder's MLflow run when tracked.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    settings: FinderSettings
    num_iters: int
    stop_reason: str | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    run_id: str | None = None
    reason: str | None = None

    @property
    def stopped_early(self) -> bool:
        return len(self.lrs) < self.num_iters

    def suggest(self, method: str = DEFAULT_METHOD) -> Suggestion:
        """The suggestion with the curve index it was read at (see ``detune._lr_suggest.suggest``; the batch
        losses measure the noise of the curve)."""
        return suggest(self.lrs, self.smoothed, method, losses=self.losses, smoothing=self.settings.smoothing)

    def suggestion(self, method: str = DEFAULT_METHOD) -> float | None:
        """Suggested lr by ``method`` (valley, steepest, min_div_10), or None with the reason logged to the
        ``detune`` logger and kept in ``self.reason`` (too few points, or a curve with no signal).

        Raises:
            ConfigError: for an unknown method.
        """
        found = self.suggest(method)
        self.reason = found.reason
        if found.lr is None:
            log.warning("LR finder: no %s suggestion: %s", method, found.reason)
        return found.lr

    def suggestions(self) -> dict[str, float | None]:
        """Every method's suggestion (None where there is none), without logging."""
        return {m: self.suggest(m).lr for m in METHODS}

    def plot(self, path: str | Path, method: str = DEFAULT_METHOD) -> Path:
        """Render the loss against lr (log x axis) with the suggestion marked to a PNG file; return its path.

        Needs matplotlib (``pip install matplotlib`` if it is missing); no pyplot state.
        """
        found = self.suggest(method)
        fig = _plotting.new_figure("LRFinderResult.plot", figsize=(7, 4.5))
        ax = fig.add_subplot()
        pts = [p for p in zip(self.lrs, self.losses, self.smoothed, strict=True) if p[0] > 0]
        raw = [(lr, loss) for lr, loss, _ in pts if math.isfinite(loss)]
        smooth = [(lr, s) for lr, _, s in pts if math.isfinite(s)]
        if raw:
            ax.plot([p[0] for p in raw], [p[1] for p in raw], color="0.75", linewidth=0.8, label="batch loss")
        if smooth:
            ax.plot([p[0] for p in smooth], [p[1] for p in smooth], color="C0", linewidth=1.8,
                    label="smoothed loss")
        if found.lr is not None and found.index is not None:
            ax.axvline(found.lr, color="C3", linestyle="--", linewidth=1)
            ax.plot([self.lrs[found.index]], [self.smoothed[found.index]], "o", color="C3", markersize=8,
                    label=f"{method}: {found.lr:.3g}")
        if smooth:  # the descent decides the scale (its noisy start skipped); the divergence runs off the top
            values = [s for _, s in smooth]
            begin = trim(len(values))[0]
            low = min(range(begin, len(values)), key=values.__getitem__)
            top = max(values[:low + 1]) if low > 0 else min(max(values), 4 * values[low])
            pad = max(top - values[low], 1e-12 + 1e-3 * abs(top))
            ax.set_ylim(values[low] - 0.1 * pad, top + 0.3 * pad)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss (box + cls + dfl)")
        title = f"LR range test ({self.config.get('optimizer', '?')}): {len(self.lrs)}/{self.num_iters} steps"
        ax.set_title(title if found.lr is not None else f"{title}; no {method} suggestion", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        return _plotting.save(fig, path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe mapping (non-finite values become None) with every method's suggestion."""
        def clean(values: list[float]) -> list[float | None]:
            return [v if math.isfinite(v) else None for v in values]

        return {"lrs": clean(self.lrs), "losses": clean(self.losses), "smoothed": clean(self.smoothed),
                "settings": self.settings.to_dict(), "num_iters": self.num_iters,
                "stop_reason": self.stop_reason, "suggestions": self.suggestions(),
                "config": dict(self.config), "run_id": self.run_id}


class _RangeTest:
    """The adapter probe (``lr(step)``, ``on_loss``) and observer (``on_start``) of one sweep."""

    def __init__(self, settings: FinderSettings, listener: Any = None) -> None:
        self.settings = settings
        self.listener = listener  # told each (step, loss) after the probe recorded it, e.g. a progress display
        self.num_iters = settings.num_iters
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.smoother = LossSmoother(settings.smoothing)
        self.rule = StopRule(settings.stop_factor, stop_warmup(settings.num_iters or 0))
        self.stop_reason: str | None = None

    def on_start(self, info: Mapping[str, Any]) -> None:
        if self.num_iters is None:  # num_iters=None: one epoch: the adapter knows the real number of batches
            self.num_iters = max(1, int(info.get("batches_per_epoch") or 1))
            self.rule.warmup = stop_warmup(self.num_iters)

    def lr(self, step: int) -> float:
        s = self.settings
        return lr_at(step, min_lr=s.min_lr, max_lr=s.max_lr, num_iters=self.num_iters or 2, mode=s.mode)

    def on_loss(self, step: int, loss: float) -> bool:
        i = len(self.losses)
        smoothed = self.smoother.update(loss)
        self.lrs.append(self.lr(i))
        self.losses.append(float(loss))
        self.smoothed.append(smoothed)
        self.stop_reason = self.rule.check(i, loss, smoothed)
        if self.listener is not None:
            self.listener.on_loss(step, loss)
        return self.stop_reason is not None or len(self.losses) >= (self.num_iters or 0)

    def diverged(self, reason: str | None) -> None:
        """The adapter stopped on a non-finite loss before ``on_loss`` saw it: record that point too."""
        i = len(self.losses)
        self.lrs.append(self.lr(i))
        self.losses.append(math.nan)
        self.smoothed.append(math.nan)
        self.stop_reason = f"loss is not finite at iteration {i} ({reason})"


def finder_config(cfg: TrainConfig, settings: FinderSettings, *, project: Path,
                  train_images: int) -> TrainConfig:
    """The throw-away training config of a sweep: same model, data, optimizer, batch, imgsz, momentum, weight
    decay, lr_mult and seed as ``cfg``; one optimizer step per batch (nbs = batch), no warmup, no schedule,
    no divergence guard, no tracking, no plots or checkpoints, in ``project``; epochs enough for num_iters."""
    if cfg.optimizer == "auto":
        raise ConfigError("optimizer ('auto') makes Ultralytics choose the optimizer and its lr itself, so "
                          "an LR range test cannot control the lr; set optimizer to SGD, Adam or AdamW")
    epochs = 1
    if settings.num_iters is not None:
        batches = optimizer_steps(cfg, train_images)[1]
        epochs = math.ceil(settings.num_iters / batches) + 1  # + 1: never end early on a short estimate
    mixing = {} if settings.augment else dict.fromkeys(_MIXING_AUGMENTATIONS, 0.0)
    return cfg.replace(lr0=0.01, epochs=epochs, warmup_epochs=0.0, nbs=cfg.batch, divergence_factor=0.0,
                       scheduler=None, scheduler_params={}, cos_lr=False, lr_scaling="none", tracking=False,
                       project=str(project), name="lr_find", plots=False, save=False, exist_ok=True,
                       close_mosaic=0, **mixing)


def range_test(cfg: TrainConfig, settings: FinderSettings | None = None, *, tracking: Any = None,
               fit: Fit | None = None, data: PreparedData | None = None,
               observers: Sequence[Any] = ()) -> LRFinderResult:
    """Run one LR range test for a training config (the engine under ``lr_find``, ``train(lr0="auto")`` and
    studies).

    Args:
        cfg: the training the lr is wanted for; its lr0, epochs, schedule and warmup are ignored.
        settings: the sweep (default ``FinderSettings()``).
        tracking: None uses ``cfg.tracking``; False, True, a URI, a mapping or a ``TrackingConfig`` (with
            ``parent_run_id`` to nest the finder's run under a study or another run).
        fit: the trainer (``detune.adapters.base.Fit``; default the Ultralytics adapter, tests pass
            ``detune._fake``).
        data: ``cfg.data`` already prepared (``detune.datasets.prepare_data``), so it is checked once per run.
        observers: receive the trainer's events and ``on_loss(step, loss)`` after every batch (a progress
            display).

    Raises:
        ConfigError: for invalid settings, optimizer "auto" or a bad dataset (before any compute).
        TrackingError: when tracking is on and the store cannot be reached.
        AdapterError: when the model cannot be built or the short training fails.
    """
    settings = settings or FinderSettings()
    track = resolve_tracking(cfg.tracking if tracking is None else tracking)
    data = data or prepare_data(cfg.data)
    dataset = data.dataset
    recorded = {k: v for k, v in cfg.to_dict().items() if k in _RECORDED}
    if fit is None:
        from detune.adapters import ultralytics as adapter

        fit = adapter.fit
    with tempfile.TemporaryDirectory(prefix="detune-lr-find-", ignore_cleanup_errors=True) as tmp:
        fcfg = finder_config(cfg, settings, project=Path(tmp), train_images=dataset.train_images)
        logger = _open_run(track, settings, recorded, dataset.summary()) if track is not None else None
        probe = _RangeTest(settings, Fanout(observers) if observers else None)
        try:
            outcome = fit(fcfg, data.yaml, observer=Fanout([probe, *observers]), probe=probe)
        except BaseException as e:  # KeyboardInterrupt -> KILLED, setup errors -> FAILED; then re-raised
            if logger is not None:
                logger.abort(e)
            raise
        if outcome.status == "diverged":
            probe.diverged(outcome.reason)
        result = LRFinderResult(lrs=probe.lrs, losses=probe.losses, smoothed=probe.smoothed,
                                settings=settings, num_iters=probe.num_iters or 0,
                                stop_reason=probe.stop_reason, config=recorded)
        failed = outcome.status == "failed"
        if logger is not None:
            result.run_id = logger.run_id
            _finish_run(logger, result, Path(tmp) / "mlflow", failed=outcome.reason if failed else None)
    if failed:
        raise AdapterError(f"the LR range test failed after {len(result.lrs)} steps: {outcome.reason}")
    result.suggestion()  # logs why, when there is no suggestion
    return result


def lr_find(model: str = "yolo11n.yaml", data: str = "shapes", *, min_lr: float = 1e-6, max_lr: float = 1.0,
            num_iters: int | None = 100, mode: Mode = "exponential", smoothing: float = 0.05,
            stop_factor: float | None = 4.0, optimizer: str = "SGD", batch: int = 16, imgsz: int = 640,
            augment: bool = False, seed: int = 0, device: str = "auto", tracking: Any = False,
            **train_overrides: Any) -> LRFinderResult:
    """LR range test: a short throw-away YOLO training with the lr rising from ``min_lr`` to ``max_lr``.

    Args:
        model: model YAML (built from scratch) or a local .pt file.
        data: an Ultralytics data YAML, or "shapes" for the generated dataset.
        min_lr: lr of the first optimizer step, > 0.
        max_lr: lr of the last planned step, > min_lr (may exceed 1).
        num_iters: optimizer steps (one per batch), >= 2; the training batches are cycled (more epochs) as
            often as needed. None = one epoch, which on a small dataset is too few points for a suggestion.
        mode: "exponential" (even in log lr) or "linear".
        smoothing: newest-loss weight of the bias-corrected EMA, (0, 1]; EMA beta = 1 - smoothing.
        stop_factor: stop once the smoothed loss exceeds this x its minimum, > 1; None: sweep to max_lr.
        optimizer: SGD, Adam, AdamW, ... (not "auto"); batch, imgsz, seed, device: as in ``detune.train``.
        augment: False turns mosaic, mixup, cutmix and copy_paste off for the sweep.
        tracking: False, True, a tracking URI, a mapping or a ``TrackingConfig`` (see ``detune.tracking_config``):
            the sweep becomes its own MLflow run (``lr_finder/loss``, ``lr_finder/smoothed``,
            ``lr_finder/lr`` at step = iteration, the plot, the suggestions).
        **train_overrides: any other ``detune.train`` / Ultralytics setting (momentum, weight_decay,
            lr_mult, fraction, hsv_h, ...); lr0, epochs, schedule and warmup settings are ignored.

    Returns:
        An ``LRFinderResult``; ``result.suggestion()`` is the ``valley`` lr (None, with ``result.reason``,
        when the curve is too short or carries no signal).

    Raises:
        ConfigError: for any invalid setting (before any compute). AdapterError: the training failed.
        TrackingError: tracking is on and the store cannot be reached.
    """
    settings = FinderSettings(min_lr=min_lr, max_lr=max_lr, num_iters=num_iters, mode=mode,
                              smoothing=smoothing, stop_factor=stop_factor, augment=augment)
    cfg = load_config({**train_overrides, "model": model, "data": data, "optimizer": optimizer,
                       "batch": batch, "imgsz": imgsz, "seed": seed, "device": device})
    return range_test(cfg, settings, tracking=tracking)


def fallback_lr0(cfg: TrainConfig) -> float:
    """The lr0 of an ``lr0="auto"`` the finder could not resolve: ``detune.config.default_lr0`` of the
    optimizer (0.01 for SGD and MuSGD, 0.001 for Adam-like ones, 0.01 Adagrad, 1.0 Adadelta); ``lr_scaling``
    applies to it as to any configured lr0."""
    return default_lr0(cfg.optimizer)


# ---- MLflow --------------------------------------------------------------------------------------------
def _open_run(track: TrackingConfig, settings: FinderSettings, recorded: Mapping[str, Any],
              dataset: Mapping[str, Any]) -> Any:
    from detune import tracking as tr

    # Not the trial's tag: find_trial_run looks a trial's own run up by detune.trial_id and its parent.
    tags = {k: v for k, v in track.tags.items() if k != "detune.trial_id"}
    name = f"{track.run_name}-lr_finder" if track.run_name else "lr_finder"
    run_cfg = track.replace(run_id=None, run_name=name, tags=tags)
    tr.check_reachable(run_cfg)
    tr.prepare_store(run_cfg)
    params = {**recorded, **dataset, **{f"lr_finder.{k}": v for k, v in settings.to_dict().items()}}
    return tr.RunLogger(run_cfg, params=params, tags={"detune.kind": "lr_finder"})


def _finish_run(logger: Any, result: LRFinderResult, folder: Path, *, failed: str | None) -> None:
    for i, (lr, loss, smooth) in enumerate(zip(result.lrs, result.losses, result.smoothed, strict=True)):
        logger.log_metrics({"lr_finder/lr": lr, "lr_finder/loss": loss, "lr_finder/smoothed": smooth}, step=i)
    found = result.suggestions()
    summary = {f"lr_finder/suggestion_{m}": v for m, v in found.items() if v is not None}
    if found[DEFAULT_METHOD] is not None:
        summary["lr_finder/suggestion"] = found[DEFAULT_METHOD]
    summary.update({"lr_finder/points": len(result.lrs), "lr_finder/num_iters": result.num_iters})
    logger.log_metrics(summary, step=0)
    folder.mkdir(parents=True, exist_ok=True)
    artifacts = [folder / "lr_finder.json"]
    artifacts[0].write_text(json.dumps(result.to_dict(), indent=1))
    try:
        result.plot(folder / PLOT_NAME)  # under plots/ in the run (RunLogger logs the folder's PNGs)
    except Exception as e:  # noqa: BLE001 - a plotting error never loses the run
        log.warning("LR finder plot failed: %s: %s", type(e).__name__, e)
    status = "failed" if failed else "completed"
    logger.finish(RunOutcome(status=status, config=dict(result.config), save_dir=folder,
                             reason=failed or result.stop_reason), artifacts=artifacts)
