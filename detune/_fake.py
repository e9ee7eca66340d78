"""The fake trainer (``detune.adapters.base.Fit``): fast, deterministic runs for unit tests, passed as ``fit=``.

A training: metrics follow a formula peaked at lr0 = 0.01 (log scale) that grows with epochs; lr0 >= 1
diverges and 0.5 <= lr0 < 1 crashes in its second epoch (a simulated out-of-memory error). It writes
``last.pt`` (a small JSON stand-in) and ``detune_state.json`` like the real adapter, so checkpoints, resume
and PBT exploits go through the same code paths. While the file named by ``DETUNE_FAKE_HOLD`` exists, it
waits after each epoch (a study held mid-way for a test of Ctrl-C or of a second study, however fast or slow
the machine is); ``Fake(hold=path)`` does the same in the Ray workers of a study run in the test's process.

A probe run (the LR range test): the batch loss at lr is ``curve(lr)``; a non-finite loss ends it
``diverged`` (as the adapter's guard does), a probe asking to stop ends it ``stopped``.
``Fake(...)`` makes a trainer with another curve or batch count that records the configs it ran. An exception
out of an observer's ``on_epoch`` (Ray stopping a trial) leaves with the curves so far, as in the adapter.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detune.adapters.base import STATE_FILE, Probe, RunOutcome, attach_partial
from detune.config import TrainConfig

__all__ = ["STEPS_PER_EPOCH", "Fake", "fit", "score", "u_curve"]

STEPS_PER_EPOCH = 4


def score(lr0: float, epoch: int) -> float:
    """mAP-like value in [0, 1): best near lr0=0.01, rising with epochs."""
    return 0.8 * math.exp(-(math.log10(lr0 / 0.01)) ** 2) * (1 - math.exp(-epoch / 2))


def u_curve(lr: float) -> float:
    """A range test's loss: falls fastest at lr = 1e-3 (the tanh inflection), bottoms out near 0.1, then rises
    steeply."""
    x = math.log10(lr)
    return 2.0 - math.tanh(2.0 * (x + 3.0)) + 20.0 * max(0.0, x + 1.0) ** 2


class Fake:
    """A fake trainer; ``configs`` records every config it ran, ``lrs_applied`` every lr a probe set.

    Args:
        curve: the batch loss at an lr, for probe runs.
        batches_per_epoch: of probe runs (trainings make ``STEPS_PER_EPOCH``).
        status: "failed" makes probe runs fail at once.
    """

    def __init__(self, curve: Callable[[float], float] = u_curve, batches_per_epoch: int = 40,
                 status: str | None = None, hold: str | os.PathLike[str] | None = None) -> None:
        self.curve, self.batches_per_epoch, self.status = curve, batches_per_epoch, status
        self.hold = str(hold) if hold is not None else None
        self.configs: list[TrainConfig] = []
        self.lrs_applied: list[float] = []

    def __call__(self, cfg: TrainConfig, data_yaml: Path, *, observer: Any = None, resume_from: Path | None = None,
                 probe: Probe | None = None) -> RunOutcome:
        self.configs.append(cfg)
        if probe is None:
            return _train(cfg, observer=observer, resume_from=resume_from, hold=self.hold)
        save = Path(cfg.project) / cfg.name
        save.mkdir(parents=True, exist_ok=True)
        info = {"batches_per_epoch": self.batches_per_epoch, "steps_per_epoch": self.batches_per_epoch,
                "save_dir": str(save), "device": "cpu"}
        if observer is not None and hasattr(observer, "on_start"):
            observer.on_start(dict(info))
        if self.status == "failed":
            return RunOutcome("failed", [], save, {}, [], info, reason="RuntimeError: boom")
        for step in range(cfg.epochs * self.batches_per_epoch):
            lr = probe.lr(step)
            self.lrs_applied.append(lr)
            loss = self.curve(lr)
            if not math.isfinite(loss):  # the adapter's guard stops before on_loss sees it
                return RunOutcome("diverged", [], save, {}, [], info, reason=f"loss is {loss} at step {step}")
            if probe.on_loss(step, loss):
                return RunOutcome("stopped", [], save, {}, [], info)
        return RunOutcome("completed", [], save, {}, [], info)


def fit(cfg: TrainConfig, data_yaml: Path, *, observer: Any = None, resume_from: Path | None = None,
        probe: Probe | None = None) -> RunOutcome:
    """The default fake: trainings as described above, probe runs on ``u_curve``."""
    if probe is not None:
        return Fake()(cfg, data_yaml, observer=observer, probe=probe)
    return _train(cfg, observer=observer, resume_from=resume_from)


def _train(cfg: TrainConfig, *, observer: Any = None, resume_from: Path | None = None,
           hold: str | None = None) -> RunOutcome:
    save_dir = Path(cfg.project).resolve() / cfg.name
    weights = save_dir / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    start, weight_lr = 0, None
    if resume_from is not None:
        start = json.loads(Path(resume_from).read_text())["epoch"] + 1
        weight_lr = json.loads(Path(resume_from).read_text())["lr0"]
    info = {"steps_per_epoch": STEPS_PER_EPOCH, "device": cfg.device, "save_dir": str(save_dir),
            "start_epoch": start, "resumed_weights_lr0": weight_lr, "batches_per_epoch": STEPS_PER_EPOCH,
            "accumulate": 1, "warmup_steps": 0, "param_groups": 3}
    if observer is not None and hasattr(observer, "on_start"):
        observer.on_start(dict(info))
    history, steps = [], []
    for epoch in range(start, cfg.epochs):
        time.sleep(0.05)
        if 0.5 <= cfg.lr0 < 1.0 and epoch == 1:
            raise RuntimeError("CUDA out of memory (simulated by the fake trainer)")
        if cfg.lr0 >= 1.0:
            return RunOutcome("diverged", history, save_dir, {}, steps, info,
                              reason=f"loss is nan at epoch {epoch + 1}, step {epoch * STEPS_PER_EPOCH}")
        for i in range(STEPS_PER_EPOCH):
            step = epoch * STEPS_PER_EPOCH + i
            steps.append({"step": step, "epoch": epoch, "lr/pg0": cfg.lr0, "lr/pg1": cfg.lr0, "lr/pg2": cfg.lr0})
            if observer is not None and hasattr(observer, "on_step"):
                observer.on_step(step, epoch, [cfg.lr0] * 3)
        value = score(cfg.lr0, epoch + 1)
        record = {"epoch": epoch + 1, "train/box_loss": 2 - value, "train/cls_loss": 3 - value,
                  "train/dfl_loss": 1.5 - value / 2, "val/box_loss": 2 - value, "val/cls_loss": 3 - value,
                  "val/dfl_loss": 1.5 - value / 2, "metrics/precision": value, "metrics/recall": value,
                  "metrics/mAP50": min(1.0, value * 1.5), "metrics/mAP50-95": value, "fitness": value,
                  "lr/pg0": cfg.lr0, "lr/pg1": cfg.lr0, "lr/pg2": cfg.lr0, "epoch_time": 0.05}
        history.append(record)
        (weights / "last.pt").write_text(json.dumps({"epoch": epoch, "lr0": cfg.lr0}))
        (weights / STATE_FILE).write_text(json.dumps({"step": (epoch + 1) * STEPS_PER_EPOCH, "epoch": epoch}))
        if observer is not None and hasattr(observer, "on_epoch"):
            try:
                observer.on_epoch(dict(record), weights)
            except BaseException as e:  # Ray's SystemExit for a stopped trial: the curves go with it, as the adapter
                attach_partial(e, RunOutcome("stopped", history, save_dir, {}, steps, info, reason=type(e).__name__))
                raise
        hold = hold or os.environ.get("DETUNE_FAKE_HOLD")
        while hold and os.path.exists(hold):
            time.sleep(0.05)
    if cfg.score_test:  # the held-out score sits a little below the last val score, as it tends to
        value = score(cfg.lr0, cfg.epochs) * 0.9
        info["test"] = {"test/mAP50-95": value, "test/mAP50": min(1.0, value * 1.5)}
    return RunOutcome("completed", history, save_dir, {"last": weights / "last.pt"}, steps, info)
