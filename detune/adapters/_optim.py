"""The optimizers detune builds itself over Ultralytics' param groups, and schedule-free's train/eval switch.

Part of the Ultralytics adapter (only ``detune.adapters.ultralytics`` imports it); it needs torch and the
optional ``schedulefree`` / ``prodigyopt`` packages, never Ultralytics.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch

from detune._optimizers import SCHEDULE_FREE, TORCH_OPTIMIZERS
from detune.config import TrainConfig
from detune.errors import AdapterError

__all__ = ["BN_BATCHES", "build", "refresh_batchnorm", "to_eval", "trainer_to_eval"]

# Training-mode forward batches that recompute BatchNorm statistics at a schedule-free optimizer's evaluation
# weights before each validation (the schedulefree README suggests 50; an epoch with fewer uses all its own).
BN_BATCHES = 50


def build(cfg: TrainConfig, built: Any) -> Any:
    """``cfg.optimizer`` over the param groups of the SGD Ultralytics ``built`` (pg0 weights with weight_decay,
    pg1 norm weights and pg2 biases without), each with its lr, weight_decay and group name.

    Adagrad and Adadelta keep torch's other defaults (no momentum). AdamWScheduleFree and Prodigy take
    ``betas=(momentum, 0.999)`` as Ultralytics' Adam family does, SGDScheduleFree ``momentum``; Prodigy's
    ``safeguard_warmup`` is on when detune warms up (its authors' advice for a warmup)."""
    groups = [{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"],
               "param_group": g.get("param_group")} for g in built.param_groups]
    name = cfg.optimizer
    if name in TORCH_OPTIMIZERS:
        return getattr(torch.optim, name)(groups)
    if name in SCHEDULE_FREE:
        import schedulefree

        if name == "SGDScheduleFree":
            return schedulefree.SGDScheduleFree(groups, momentum=cfg.momentum)
        return schedulefree.AdamWScheduleFree(groups, betas=(cfg.momentum, 0.999))
    if name == "Prodigy":
        from prodigyopt import Prodigy

        return Prodigy(groups, betas=(cfg.momentum, 0.999), safeguard_warmup=cfg.warmup_epochs > 0)
    raise AdapterError(f"detune does not build optimizer {name!r}")  # unreachable: config validated the name


def trainer_to_eval(trainer: Any) -> None:
    """``to_eval`` for an Ultralytics trainer: its model (unwrapped from DDP), EMA and the next training batches
    (preprocessed as for training)."""
    loader = trainer.train_loader
    images = (trainer.preprocess_batch(b)["img"] for b in itertools.islice(loader, min(BN_BATCHES, len(loader))))
    to_eval(trainer.optimizer, getattr(trainer.model, "module", trainer.model), trainer.ema, images)


def to_eval(optimizer: Any, net: torch.nn.Module, ema: Any, images: Iterable[torch.Tensor]) -> None:
    """Put a schedule-free ``optimizer``'s evaluation weights (x, the average) into ``net``, recompute its
    BatchNorm statistics there from ``images``, and copy ``net`` into Ultralytics' EMA model, which the
    validator scores and ``save_model`` writes. A no-op switch when already in eval mode (a save right after
    a validation), so statistics are not recomputed twice."""
    if optimizer.param_groups[0]["train_mode"]:
        optimizer.eval()
        refresh_batchnorm(net, images)
    ema.ema.load_state_dict(net.state_dict())


def refresh_batchnorm(net: torch.nn.Module, images: Iterable[torch.Tensor]) -> None:
    """Recompute the running mean and variance of every BatchNorm layer in training mode as the plain
    average over ``images`` (training-mode forwards without gradients; momentum None is torch's cumulative
    average). Layers in eval mode (Ultralytics' frozen ones) keep their statistics."""
    layers = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    try:
        with torch.no_grad():
            for img in images:
                net(img)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum

