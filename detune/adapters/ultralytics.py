"""The only module that imports Ultralytics: one YOLO training run under detune's LR control.

detune owns the learning rate completely. Ultralytics' own shaping is neutralised: its inline warmup is
switched off (``warmup_epochs=0`` makes its ``nw`` zero, so the warmup block never runs and
``accumulate`` stays nominal) and its epoch-stepped ``LambdaLR`` is overwritten, because detune sets
every param group's lr (and momentum) right before each optimizer step, in ``optimizer_step``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detune import _runtime
from detune._lr_suggest import LossSmoother, StopRule
from detune._optimizers import SCHEDULE_FREE, detune_built
from detune.adapters import _optim
from detune.adapters.base import STATE_FILE, Observer, Probe, RunOutcome, attach_partial, sha256, trusted_state
from detune.config import TrainConfig, lr_plan, optimizer_warmup_steps
from detune.errors import AdapterError, ConfigError

__all__ = ["STATE_FILE", "Observer", "Probe", "RunOutcome", "check_device", "fit", "metric_name", "resolve_device",
           "trusted_state", "yolo_overrides"]

# Divergence guard: the LR finder's smoother and stop rule (detune._lr_suggest.StopRule) over the batch loss;
# its first GUARD_WARMUP batches (or the LR warmup, if longer) use the wider bar divergence_factor ** 2.
GUARD_SMOOTHING = 0.05
GUARD_WARMUP = 10


class Diverged(Exception):
    """Raised inside the training loop to stop it at once (no Ultralytics reload-last.pt loop)."""


class ProbeDone(Exception):
    """Raised by a probe (the LR range test) to end its throw-away run."""


def metric_name(key: str) -> str:
    """Ultralytics key to an MLflow-safe canonical key: ``metrics/mAP50-95(B)`` -> ``metrics/mAP50-95``."""
    return key.replace("(B)", "").replace("(", "_").replace(")", "")


def resolve_device(device: str) -> str:
    """Map detune's device request to Ultralytics'. Inside a Ray trial, CUDA_VISIBLE_DEVICES is set by Ray
    and the first visible GPU is always index 0."""
    if device == "auto":
        import torch

        return "0" if torch.cuda.is_available() else "cpu"
    return device


def check_device(device: str) -> None:
    """Raise ``ConfigError`` before any compute when ``device`` names a GPU (or MPS) torch cannot see here;
    ``cpu`` and ``auto`` need no check (and no torch import)."""
    from detune.config import parse_device

    wanted = parse_device(device)
    if wanted in ("cpu", "auto"):
        return
    import torch

    if wanted == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device ({device!r}) asks for Apple's MPS, which torch cannot use on this machine; "
                              "use device=cpu or device=auto")
        return
    count = torch.cuda.device_count()
    if int(wanted) >= count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        fix = f", or a GPU index below {count}" if count else ""
        raise ConfigError(f"device ({device!r}) asks for GPU {wanted}, but torch sees {count} "
                          f"GPU{'' if count == 1 else 's'} here{seen}; use device=cpu or device=auto{fix}")


def cpu_threads(cfg: TrainConfig) -> int:
    if cfg.threads:
        return cfg.threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


class _Control:
    """Per-run state shared by the trainer subclass and the callbacks."""

    def __init__(self, cfg: TrainConfig, observer: Any, resume_from: Path | None, probe: Probe | None = None) -> None:
        self.cfg = cfg
        self.probe = probe
        self.resume_from = resume_from
        resume_state = trusted_state(resume_from) if resume_from is not None else None
        self.observer = observer
        self.plan: Any = None
        self.step = int((resume_state or {}).get("step", 0))
        self.plateau_state = (resume_state or {}).get("plateau")
        self.history: list[dict[str, float]] = []
        self.steps: list[dict[str, float]] = []
        self.info: dict[str, Any] = {}
        self.epoch_pending = False
        self.smoother = LossSmoother(GUARD_SMOOTHING)
        self.guard: StopRule | None = None
        self.batches = 0
        self.batch_losses: list[float] = []  # batch losses since the last optimizer step
        self.stepped = False  # this batch ended with an optimizer step: its record takes the loss
        self.mults: list[float] = []  # per param group lr factor, fixed when the optimizer is built

    def call(self, name: str, *args: Any) -> None:
        fn = getattr(self.observer, name, None)
        if fn is not None:
            fn(*args)

    # ---- LR control -------------------------------------------------------------------------------
    def start(self, trainer: Any) -> None:
        nb = len(trainer.train_loader)
        steps_per_epoch = nb / trainer.accumulate
        self.plan = lr_plan(self.cfg, steps_per_epoch)
        if self.plateau_state:
            self.plan.schedule.load_state(self.plateau_state)
        if trainer.device.type == "cpu":
            import torch

            torch.set_num_threads(cpu_threads(self.cfg))  # Ultralytics pins cpu_count-1 threads
        factor = self.cfg.divergence_factor or None
        warmup = max(GUARD_WARMUP, math.ceil(self.plan.warmup_steps * trainer.accumulate))
        self.guard = StopRule(factor, warmup, early_factor=factor**2 if factor else None)
        self.info = {"batches_per_epoch": nb, "accumulate": trainer.accumulate, "steps_per_epoch": steps_per_epoch,
                     "train_images": len(trainer.train_loader.dataset),
                     "warmup_steps": self.plan.warmup_steps, "device": str(trainer.device),
                     "save_dir": str(trainer.save_dir), "param_groups": len(trainer.optimizer.param_groups),
                     "start_epoch": trainer.start_epoch}
        if self.cfg.optimizer in SCHEDULE_FREE:
            self.start_schedule_free(trainer, steps_per_epoch)
        self.call("on_start", dict(self.info))

    def start_schedule_free(self, trainer: Any, steps_per_epoch: float) -> None:
        """The optimizer warms up itself (detune's plan holds lr0, see ``lr_plan``) and its evaluation weights
        are already an average: Ultralytics' EMA stops updating and holds a copy of them (``to_eval``)."""
        warmup_steps = 0 if self.probe is not None else optimizer_warmup_steps(self.cfg, steps_per_epoch)
        for group in trainer.optimizer.param_groups:
            group["warmup_steps"] = warmup_steps
        trainer.ema.enabled = False
        self.info["optimizer_warmup_steps"] = warmup_steps

    def apply(self, trainer: Any) -> None:
        """Set every param group's lr (and momentum) for the optimizer step about to happen."""
        self.check_finite(trainer)
        epoch, step = trainer.epoch, self.step
        momentum = self.plan.momentum_at(step)
        lrs = []
        for group, mult in zip(trainer.optimizer.param_groups, self.mults, strict=True):
            if self.probe is not None:
                group["lr"] = self.probe.lr(step) * mult
                momentum = self.cfg.momentum
            else:
                group["lr"] = self.plan.lr(step, epoch, bias=group.get("param_group") == "bias", mult=mult)
            if "momentum" in group:  # Adam-family groups have betas; Ultralytics' warmup skips them too
                group["momentum"] = momentum
            lrs.append(group["lr"])
        self.steps.append({"step": step, "epoch": epoch, **{f"lr/pg{i}": lr for i, lr in enumerate(lrs)}})
        self.call("on_step", step, epoch, lrs)
        self.step += 1
        self.stepped = True

    # ---- divergence guard -------------------------------------------------------------------------
    def check_finite(self, trainer: Any) -> None:
        loss = trainer.loss
        if loss is not None and not bool(loss.detach().isfinite().all()):
            raise Diverged(f"loss is {float(loss.detach().sum())} at epoch {trainer.epoch + 1}, step {self.step}")

    def after_batch(self, trainer: Any) -> None:
        if self.probe is not None:
            loss = float(trainer.loss.detach().sum()) / max(trainer.batch_size, 1)
            if self.probe.on_loss(self.step - 1, loss):
                raise ProbeDone
            return
        self.check_finite(trainer)
        if trainer.loss is None:
            return
        value = float(trainer.loss.detach().sum()) / max(trainer.batch_size, 1)
        smoothed = self.smoother.update(value)
        self.batch_losses.append(value)
        if self.stepped and self.steps:  # the step's loss: the mean over the batches it accumulated
            self.steps[-1].update(loss=sum(self.batch_losses) / len(self.batch_losses), loss_smooth=smoothed)
            self.batch_losses, self.stepped = [], False
        if not self.cfg.divergence_factor or self.guard is None:
            return
        reason = self.guard.check(self.batches, value, smoothed, where=f"epoch {trainer.epoch + 1}, step {self.step}")
        self.batches += 1
        if reason is not None:
            raise Diverged(reason)

    # ---- per epoch ---------------------------------------------------------------------------------
    def end_epoch(self, trainer: Any) -> None:
        if not self.epoch_pending:  # final_eval fires on_fit_epoch_end once more; it is not an epoch
            return
        self.epoch_pending = False
        record: dict[str, float] = {"epoch": trainer.epoch + 1}
        if trainer.tloss is not None:
            record.update(trainer.label_loss_items(trainer.tloss, prefix="train"))
        record.update({metric_name(k): float(v) for k, v in trainer.metrics.items()})
        record["fitness"] = float(trainer.fitness) if trainer.fitness is not None else float("nan")
        # the lr of this epoch's last optimizer step; an epoch without one (batches < accumulate) has none: NaN,
        # never trainer.lr, which is then the LambdaLR's epoch value, a number detune's schedule never had
        last_step = next((s for s in reversed(self.steps) if s["epoch"] == trainer.epoch), {})
        record.update({k: float(last_step.get(k, math.nan)) for k in trainer.lr})
        record["epoch_time"] = float(trainer.epoch_time or 0.0)
        self.plan.observe(trainer.epoch, record["fitness"])
        self.history.append(record)
        last = Path(trainer.wdir) / "last.pt"
        state = {"step": self.step, "epoch": trainer.epoch, "last_sha256": sha256(last) if last.is_file() else None}
        learnt = self.plan.schedule.state()  # {} for closed-form schedules: nothing to store
        if learnt:
            state["plateau"] = learnt
        (Path(trainer.wdir) / STATE_FILE).write_text(json.dumps(state))
        self.call("on_epoch", dict(record), Path(trainer.wdir))


def _trainer_class(ctl: _Control) -> type:
    from ultralytics.models.yolo.detect import DetectionTrainer

    class DetuneTrainer(DetectionTrainer):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            _drop_integration_callbacks(self.callbacks)

        def setup_model(self) -> Any:
            ckpt = super().setup_model()
            if ctl.resume_from is not None:
                from ultralytics.nn.tasks import load_checkpoint

                _, ckpt = load_checkpoint(ctl.resume_from)
                self.resume = True  # makes resume_training() restore optimizer, EMA, epoch and best fitness
            return ckpt

        def build_optimizer(self, *args: Any, **kwargs: Any) -> Any:
            optimizer = super().build_optimizer(*args, **kwargs)
            if detune_built(ctl.cfg.optimizer):  # Ultralytics built SGD (yolo_overrides): same groups
                optimizer = _optim.build(ctl.cfg, optimizer)
            if ctl.cfg.lr_mult:
                _split_groups(optimizer, self.model, ctl.cfg.lr_mult)
            if ctl.cfg.lr_layer_decay is not None and ctl.cfg.lr_layer_decay != 1:
                _decay_layers(optimizer, self.model, ctl.cfg.lr_layer_decay)
            # Ultralytics' own per-group factors (MuSGD's x3 head groups) times detune's lr_mult; kept here,
            # not in the groups, because resuming loads the donor's group settings over them.
            lr0 = yolo_lr0(ctl.cfg)
            ctl.mults = [g.get("detune_mult", 1.0) * g["lr"] / lr0 for g in optimizer.param_groups]
            return optimizer

        def optimizer_step(self) -> None:
            ctl.apply(self)
            super().optimizer_step()

        # A schedule-free optimizer trains at y and is evaluated at x: switch wherever Ultralytics switches the
        # model, and before every checkpoint (best.pt and last.pt hold x, with BatchNorm statistics at x).
        def _model_train(self) -> None:
            super()._model_train()
            if ctl.cfg.optimizer in SCHEDULE_FREE:
                self.optimizer.train()

        def validate(self) -> Any:
            if ctl.cfg.optimizer in SCHEDULE_FREE:
                _optim.trainer_to_eval(self)
            return super().validate()

        def save_model(self) -> Any:
            if ctl.cfg.optimizer in SCHEDULE_FREE:
                _optim.trainer_to_eval(self)
            return super().save_model()

    return DetuneTrainer


def _drop_integration_callbacks(callbacks: dict[str, list[Callable[..., Any]]]) -> None:
    """Remove Ultralytics' hub/platform/MLflow/Ray Tune/... callbacks: detune logs and reports itself."""
    for event, fns in callbacks.items():
        callbacks[event] = [f for f in fns if not (getattr(f, "__module__", "") or "").startswith(
            ("ultralytics.utils.callbacks.", "ultralytics.utils.events", "ultralytics.hub"))
            or (f.__module__ or "").endswith(".base")]


def _split_groups(optimizer: Any, model: Any, lr_mult: dict[str, float]) -> None:
    """Move the params of each model part with an lr multiplier into their own param groups (appended after
    Ultralytics' three, so lr/pg0..2 keep their meaning)."""
    from ultralytics.utils.torch_utils import unwrap_model

    net = unwrap_model(model)
    n_backbone = len(net.yaml.get("backbone", []))
    n_layers = len(net.model)
    part_of: dict[int, str] = {}
    for name, param in net.named_parameters():
        index = int(name.split(".")[1])
        part_of[id(param)] = "backbone" if index < n_backbone else "head" if index == n_layers - 1 else "neck"
    base_groups = list(optimizer.param_groups)
    for part, mult in lr_mult.items():
        for group in base_groups:
            moved = [p for p in group["params"] if part_of.get(id(p)) == part]
            if not moved:
                continue
            group["params"] = [p for p in group["params"] if part_of.get(id(p)) != part]
            new = {k: v for k, v in group.items() if k != "params"}
            optimizer.add_param_group({**new, "params": moved, "detune_mult": float(mult), "detune_part": part})


def _decay_layers(optimizer: Any, model: Any, decay: float) -> None:
    """Layer-wise lr decay: the params of layer ``i`` of ``model.model`` (the head is the last layer) move from
    each group into a group of their own at ``decay ** (last - i)`` times that group's lr (an ``lr_mult`` part's
    factor included), appended after the existing groups, nearest the head first; the head stays put."""
    from ultralytics.utils.torch_utils import unwrap_model

    net = unwrap_model(model)
    last = len(net.model) - 1
    layer_of = {id(p): int(name.split(".")[1]) for name, p in net.named_parameters()}
    base_groups = list(optimizer.param_groups)
    for layer in range(last - 1, -1, -1):
        for group in base_groups:
            moved = [p for p in group["params"] if layer_of.get(id(p)) == layer]
            if not moved:
                continue
            group["params"] = [p for p in group["params"] if layer_of.get(id(p)) != layer]
            new = {k: v for k, v in group.items() if k != "params"}
            mult = group.get("detune_mult", 1.0) * decay ** (last - layer)
            optimizer.add_param_group({**new, "params": moved, "detune_mult": mult, "detune_layer": layer})


def yolo_lr0(cfg: TrainConfig) -> float:
    """The lr0 handed to Ultralytics, which rejects values above 1; detune sets the real lr every step
    (relative to this value), so lr range tests and divergence tests may go higher."""
    return min(cfg.effective_lr0, 1.0)


def _yolo_optimizer(name: str) -> str:
    """The optimizer Ultralytics builds: its spelling of RMSProp; SGD for those detune rebuilds from its groups."""
    return "RMSprop" if name == "RMSProp" else "SGD" if detune_built(name) else name


def yolo_overrides(cfg: TrainConfig, data_yaml: Path, *, validate: bool = True) -> dict[str, Any]:
    """detune config -> ``YOLO.train`` keyword arguments, with Ultralytics' own LR shaping switched off."""
    return {
        **cfg.extra,
        "data": str(data_yaml), "epochs": cfg.epochs, "batch": cfg.batch, "imgsz": cfg.imgsz,
        "device": resolve_device(cfg.device), "seed": cfg.seed, "project": str(Path(cfg.project).resolve()),
        "name": cfg.name, "optimizer": _yolo_optimizer(cfg.optimizer),
        "lr0": yolo_lr0(cfg), "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "nbs": cfg.nbs,
        "warmup_epochs": 0.0,  # detune's warmup wrapper replaces Ultralytics' inline warmup
        "warmup_bias_lr": min(cfg.warmup_bias_lr, 1.0), "warmup_momentum": cfg.warmup_momentum,
        "lrf": cfg.lrf, "cos_lr": cfg.cos_lr, "val": validate, "verbose": cfg.verbose,
        "exist_ok": cfg.extra.get("exist_ok", False),
    }


def fit(cfg: TrainConfig, data_yaml: Path, *, observer: Any = None, resume_from: Path | None = None,
        probe: Probe | None = None) -> RunOutcome:
    """Train ``cfg.model`` on ``data_yaml`` under detune's LR plan.

    Args:
        resume_from: a ``last.pt`` written by detune (with ``detune_state.json`` beside it) to continue from.
        probe: an LR range test that sets the lr itself and ends the run (status ``stopped``).

    Returns a ``RunOutcome``; divergence and training errors are reported in it, never raised, so nothing
    already computed is lost. Setup errors (bad model file, unreadable data) raise ``AdapterError``.
    """
    check_device(cfg.device)  # also for the LR finder's sweeps, which reach the adapter without training.run
    _runtime.prepare(verbose=cfg.verbose)
    ctl = _Control(cfg, observer, Path(resume_from) if resume_from else None, probe)
    try:
        from ultralytics import YOLO

        model = YOLO(str(resume_from or cfg.model))
    except Exception as e:  # a bad YAML or .pt: nothing has been computed yet
        raise AdapterError(f"model ({cfg.model!r}) could not be built: {e}") from e
    model.add_callback("on_train_start", ctl.start)
    model.add_callback("on_train_batch_end", ctl.after_batch)
    model.add_callback("on_train_epoch_end", lambda t: setattr(ctl, "epoch_pending", True))
    model.add_callback("on_fit_epoch_end", ctl.end_epoch)
    trainer_cls = _trainer_class(ctl)
    status, reason = "completed", None
    try:
        model.train(trainer=trainer_cls, **yolo_overrides(cfg, data_yaml, validate=probe is None))
    except Diverged as e:
        status, reason = "diverged", str(e)
    except ProbeDone:
        status = "stopped"
    except Exception as e:  # noqa: BLE001 - any training failure becomes a failed outcome with its reason
        status, reason = "failed", f"{type(e).__name__}: {e}"
    except BaseException as e:  # Ray's SystemExit for a stopped trial, Ctrl-C: re-raised with the curves so far
        save_dir = getattr(model.trainer, "save_dir", None)
        attach_partial(e, RunOutcome(status="stopped", history=ctl.history, steps=ctl.steps, info=ctl.info,
                                     save_dir=Path(save_dir) if save_dir else None, reason=type(e).__name__))
        raise
    trainer = model.trainer
    _close_loaders(trainer)
    save_dir = Path(trainer.save_dir) if trainer is not None and getattr(trainer, "save_dir", None) else None
    weights = {}
    if trainer is not None:
        weights = {k: Path(getattr(trainer, k)) for k in ("best", "last") if Path(getattr(trainer, k, "")).is_file()}
    if cfg.score_test and status == "completed" and save_dir is not None:
        ctl.info.update(score_test(cfg, data_yaml, weights.get("best") or weights.get("last"), save_dir))
    return RunOutcome(status=status, history=ctl.history, save_dir=save_dir, weights=weights, steps=ctl.steps,
                      info=ctl.info, reason=reason)


def score_test(cfg: TrainConfig, data_yaml: Path, weights: Path | None, save_dir: Path) -> dict[str, Any]:
    """Score ``weights`` on the data YAML's ``test:`` split with Ultralytics' validator (``split="test"``).

    Returns ``{"test": {"test/mAP50-95": ..., "test/mAP50": ...}}``, or ``{"test_error": reason}``: a failed
    scoring never costs the training its result."""
    if weights is None:
        return {"test_error": "no best.pt or last.pt was written"}
    try:
        from ultralytics import YOLO

        metrics = YOLO(str(weights)).val(data=str(data_yaml), split="test", imgsz=cfg.imgsz, batch=cfg.batch,
                                         device=resolve_device(cfg.device), project=str(save_dir), name="test",
                                         exist_ok=True, plots=False, save_json=False, verbose=cfg.verbose)
        return {"test": {"test/mAP50-95": float(metrics.box.map), "test/mAP50": float(metrics.box.map50)}}
    except Exception as e:  # noqa: BLE001 - reported in the outcome, the training stays
        return {"test_error": f"{type(e).__name__}: {e}"}


def _close_loaders(trainer: Any) -> None:
    for name in ("train_loader", "test_loader"):
        loader = getattr(trainer, name, None)
        if loader is not None and hasattr(loader, "close"):
            with contextlib.suppress(Exception):  # already closed by Ultralytics on a normal exit
                loader.close()
