"""Closed-form LR schedules: each a frozen dataclass mapping an optimizer step to an absolute lr."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from detune.schedules._base import Schedule, floor_steps, reached


@dataclass(frozen=True, kw_only=True)
class ConstantSchedule(Schedule):
    """``base_lr`` at every step."""

    def __call__(self, step: float) -> float:
        return self.base_lr

    @classmethod
    def from_params(
        cls, *, base_lr: float, total_steps: float, steps_per_epoch: float, params: Mapping[str, Any]
    ) -> ConstantSchedule:
        return cls(base_lr=base_lr)


@dataclass(frozen=True, kw_only=True)
class LinearSchedule(Schedule):
    """Ultralytics' default: linear from ``base_lr`` to ``base_lr * lrf`` at ``total_steps``, then flat."""

    total_steps: float
    steps_per_epoch: float
    lrf: float

    def __call__(self, step: float) -> float:
        # Ultralytics BaseTrainer._setup_scheduler (engine/trainer.py): max(1 - x/E, 0) * (1 - lrf) + lrf,
        # x and E in epochs, computed as Ultralytics does, so whole epochs give its floats bit for bit.
        x, big_e = step / self.steps_per_epoch, self.total_steps / self.steps_per_epoch
        return self.base_lr * (max(1 - x / big_e, 0) * (1.0 - self.lrf) + self.lrf)

    @classmethod
    def from_params(
        cls, *, base_lr: float, total_steps: float, steps_per_epoch: float, params: Mapping[str, Any]
    ) -> LinearSchedule:
        return cls(
            base_lr=base_lr, total_steps=total_steps, steps_per_epoch=steps_per_epoch, lrf=params["lrf"]
        )


@dataclass(frozen=True, kw_only=True)
class CosineSchedule(Schedule):
    """Ultralytics' ``cos_lr``: half cosine from ``base_lr`` to ``base_lr * lrf`` at ``total_steps``."""

    total_steps: float
    steps_per_epoch: float
    lrf: float

    def __call__(self, step: float) -> float:
        # Ultralytics one_cycle(1, lrf, E) (utils/torch_utils.py), after He et al. 2019 (arXiv:1812.01187):
        # max((1 - cos(x*pi/E)) / 2, 0) * (lrf - 1) + 1, x and E in epochs. Held after the end (Ultralytics'
        # would rise again past E).
        big_e = self.total_steps / self.steps_per_epoch
        x = min(step / self.steps_per_epoch, big_e)
        return self.base_lr * (max((1 - math.cos(x * math.pi / big_e)) / 2, 0) * (self.lrf - 1) + 1)

    @classmethod
    def from_params(
        cls, *, base_lr: float, total_steps: float, steps_per_epoch: float, params: Mapping[str, Any]
    ) -> CosineSchedule:
        return cls(
            base_lr=base_lr, total_steps=total_steps, steps_per_epoch=steps_per_epoch, lrf=params["lrf"]
        )


@dataclass(frozen=True, kw_only=True)
class StepSchedule(Schedule):
    """Multiply by ``gamma`` every ``step_size_steps`` steps."""

    step_size_steps: float
    gamma: float

    def __call__(self, step: float) -> float:
        # torch StepLR closed form: base_lr * gamma ** floor(step / step_size)
        return self.base_lr * self.gamma ** floor_steps(step / self.step_size_steps)

    @classmethod
    def from_params(
        cls, *, base_lr: float, total_steps: float, steps_per_epoch: float, params: Mapping[str, Any]
    ) -> StepSchedule:
        step_size_steps = params["step_size"] * steps_per_epoch
        return cls(base_lr=base_lr, step_size_steps=step_size_steps, gamma=params["gamma"])


@dataclass(frozen=True, kw_only=True)
class MultiStepSchedule(Schedule):
    """Multiply by ``gamma`` at each of ``milestones_steps``."""

    milestones_steps: tuple[float, ...]
    gamma: float

    def __call__(self, step: float) -> float:
        # torch MultiStepLR closed form: base_lr * gamma ** (number of milestones <= step)
        return self.base_lr * self.gamma ** sum(1 for m in self.milestones_steps if reached(step, m))

    @classmethod
    def from_params(
        cls, *, base_lr: float, total_steps: float, steps_per_epoch: float, params: Mapping[str, Any]
    ) -> MultiStepSchedule:
        epochs = total_steps / steps_per_epoch
        milestones = params["milestones"] or (0.5 * epochs, 0.75 * epochs)  # None: half and 3/4 of training
        return cls(
            base_lr=base_lr,
            milestones_steps=tuple(m * steps_per_epoch for m in milestones),
            gamma=params["gamma"],
        )


@dataclass(frozen=True, kw_only=True)
class ExponentialSchedule(Schedule):
    """Multiply by ``gamma_per_epoch`` every epoch, smoothly (``gamma ** (step / steps_per_epoch)``)."""

    gamma_per_epoch: float
    steps_per_epoch: float

    def __call__(self, step: float) -> float:
        # torch ExponentialLR, with gamma per epoch spread over the epoch's steps
        decay: float = self.gamma_per_epoch ** (step / self.steps_per_epoch)
        return self.base_lr * decay

    @classmethod
    def from_params(
        cls, *, base_lr: float, total_steps: float, steps_per_epoch: float, params: Mapping[str, Any]
    ) -> ExponentialSchedule:
        return cls(base_lr=base_lr, gamma_per_epoch=params["gamma"], steps_per_epoch=steps_per_epoch)


@dataclass(frozen=True, kw_only=True)
class CosineRestartsSchedule(Schedule):
    """SGDR: cosine from ``base_lr`` to ``min_lr``, restarting; each period ``period_mult`` x the last."""

    period_steps: float
    period_mult: float
    min_lr: float

    def __call__(self, step: float) -> float:
        # SGDR, Loshchilov & Hutter 2017 (arXiv:1608.03983) eq. 5, as torch CosineAnnealingWarmRestarts.
        # Restart i starts at period * (mult**i - 1) / (mult - 1) (geometric sum) and lasts period * mult**i.
        period, mult = self.period_steps, self.period_mult
        if mult == 1:
            i = floor_steps(step / period)
            start, length = i * period, period
        else:
            i = floor_steps(math.log(step / period * (mult - 1) + 1, mult))
            start, length = period * (mult**i - 1) / (mult - 1), period * mult**i
        if step - start >= length:  # log() rounded one restart short
            start, length = start + length, length * mult
        t_cur = max(step - start, 0.0)
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t_cur / length)) / 2

    @classmethod
    def from_params(
        cls, *, base_lr: float, total_steps: float, steps_per_epoch: float, params: Mapping[str, Any]
    ) -> CosineRestartsSchedule:
        return cls(
            base_lr=base_lr,
            period_steps=params["period"] * steps_per_epoch,
            period_mult=params["period_mult"],
            min_lr=params["min_lr"],
        )


@dataclass(frozen=True, kw_only=True)
class OneCycleSchedule(Schedule):
    """1cycle: ``max_lr / div_factor`` up to ``max_lr`` over ``pct_start`` of training, then far below."""

    total_steps: float
    max_lr: float
    pct_start: float
    div_factor: float
    final_div_factor: float
    anneal: Literal["cos", "linear"]

    def __call__(self, step: float) -> float:
        # Smith & Topin 2018 (arXiv:1708.07120), as torch OneCycleLR(three_phase=False): phase 1 ends at step
        # pct_start * total - 1, phase 2 at total - 1; the floor is initial_lr / final_div_factor.
        initial = self.max_lr / self.div_factor
        floor = initial / self.final_div_factor
        peak_step, end_step = self.pct_start * self.total_steps - 1, self.total_steps - 1
        if step <= peak_step:
            return self._anneal(initial, self.max_lr, step / peak_step if peak_step > 0 else 1.0)
        span = end_step - peak_step
        return self._anneal(self.max_lr, floor, min((step - peak_step) / span, 1.0) if span > 0 else 1.0)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    @classmethod
    def from_params(
        cls, *, base_lr: float, total_steps: float, steps_per_epoch: float, params: Mapping[str, Any]
    ) -> OneCycleSchedule:
        return cls(
            base_lr=base_lr,
            total_steps=total_steps,
            max_lr=base_lr if params["max_lr"] is None else params["max_lr"],
            pct_start=params["pct_start"],
            div_factor=params["div_factor"],
            final_div_factor=params["final_div_factor"],
            anneal=params["anneal"],
        )


@dataclass(frozen=True, kw_only=True)
class CyclicSchedule(Schedule):
    """Cyclical LR: triangles between ``base_lr`` (the lower bound) and ``max_lr``."""

    max_lr: float
    step_size_up_steps: float
    mode: Literal["triangular", "triangular2", "exp_range"]
    gamma_per_epoch: float
    steps_per_epoch: float

    def __call__(self, step: float) -> float:
        # Smith 2017 (arXiv:1506.01186), as torch CyclicLR with step_size_down == step_size_up; exp_range's
        # gamma is per epoch here (torch's is per step: gamma_torch = gamma ** (1 / steps_per_epoch)).
        cycle_steps = 2 * self.step_size_up_steps
        cycle = floor_steps(1 + step / cycle_steps)
        x = max(1.0 + step / cycle_steps - cycle, 0.0)
        scale = x / 0.5 if x <= 0.5 else (x - 1) / (0.5 - 1)
        if self.mode == "triangular":
            amplitude = 1.0
        elif self.mode == "triangular2":
            amplitude = 1 / (2.0 ** (cycle - 1))
        else:
            amplitude = self.gamma_per_epoch ** (step / self.steps_per_epoch)
        return self.base_lr + (self.max_lr - self.base_lr) * scale * amplitude

    @classmethod
    def from_params(
        cls, *, base_lr: float, total_steps: float, steps_per_epoch: float, params: Mapping[str, Any]
    ) -> CyclicSchedule:
        # None: 4 x base_lr; Smith 2017 sec. 3.3 sets the lower bound to 1/3 or 1/4 of the upper.
        max_lr = 4 * base_lr if params["max_lr"] is None else params["max_lr"]
        return cls(
            base_lr=base_lr,
            max_lr=max_lr,
            step_size_up_steps=params["step_size_up"] * steps_per_epoch,
            mode=params["mode"],
            gamma_per_epoch=params["gamma"],
            steps_per_epoch=steps_per_epoch,
        )


@dataclass(frozen=True, kw_only=True)
class PolySchedule(Schedule):
    """Polynomial decay from ``base_lr`` to ``min_lr`` at ``total_steps``: ``(1 - t) ** power``."""

    total_steps: float
    power: float
    min_lr: float

    def __call__(self, step: float) -> float:
        # "poly" policy of DeepLab, Chen et al. 2017 (arXiv:1606.00915); torch PolynomialLR when min_lr = 0
        progress = min(max(step / self.total_steps, 0.0), 1.0)
        remaining: float = (1 - progress) ** self.power
        return (self.base_lr - self.min_lr) * remaining + self.min_lr

    @classmethod
    def from_params(
        cls, *, base_lr: float, total_steps: float, steps_per_epoch: float, params: Mapping[str, Any]
    ) -> PolySchedule:
        return cls(base_lr=base_lr, total_steps=total_steps, power=params["power"], min_lr=params["min_lr"])


@dataclass(frozen=True, kw_only=True)
class WSDSchedule(Schedule):
    """Warmup-stable-decay: ``base_lr`` until ``decay_start_step``, then down to ``min_lr`` at the end."""

    total_steps: float
    decay_start_step: float
    decay_shape: Literal["linear", "cosine", "sqrt"]
    min_lr: float

    def __call__(self, step: float) -> float:
        # WSD, Hu et al. 2024 (MiniCPM, arXiv:2404.06395); the "sqrt" (1 - sqrt) cooldown from
        # Hägele et al. 2024 (arXiv:2405.18392). Warmup is the separate LinearWarmup wrapper.
        if step <= self.decay_start_step:
            return self.base_lr
        progress = min((step - self.decay_start_step) / (self.total_steps - self.decay_start_step), 1.0)
        if self.decay_shape == "linear":
            remaining = 1 - progress
        elif self.decay_shape == "cosine":
            remaining = (1 + math.cos(math.pi * progress)) / 2
        else:
            remaining = 1 - math.sqrt(progress)
        return self.min_lr + (self.base_lr - self.min_lr) * remaining

    @classmethod
    def from_params(
        cls, *, base_lr: float, total_steps: float, steps_per_epoch: float, params: Mapping[str, Any]
    ) -> WSDSchedule:
        return cls(
            base_lr=base_lr,
            total_steps=total_steps,
            decay_start_step=total_steps * (1 - params["decay_fraction"]),
            decay_shape=params["decay_shape"],
            min_lr=params["min_lr"],
        )
