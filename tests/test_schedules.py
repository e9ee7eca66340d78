"""Tests of detune.schedules: closed forms, torch equivalents, warmup, plan, errors and the picture."""

from __future__ import annotations

import doctest
import importlib
import json
import math
import random
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from detune.errors import ConfigError
from detune.schedules import (
    LRPlan,
    build_plan,
    create_schedule,
    key_points,
    list_schedules,
    plot,
    schedule_params,
)

BASE_LR = 0.01
SPE = 5.0  # optimizer steps per epoch
EPOCHS = 12
TOTAL = EPOCHS * SPE


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-12, abs=1e-15)


# Independent reference formulas: f(step, params) with base lr BASE_LR, SPE steps per epoch, TOTAL steps.
Ref = Callable[[float, dict[str, Any]], float]


def ref_linear(s: float, p: dict[str, Any]) -> float:
    x, big_e = s / SPE, TOTAL / SPE  # Ultralytics: epochs x out of E
    return BASE_LR * (max(1 - x / big_e, 0) * (1 - p["lrf"]) + p["lrf"])


def ref_cosine(s: float, p: dict[str, Any]) -> float:
    x, big_e = min(s / SPE, TOTAL / SPE), TOTAL / SPE
    return BASE_LR * (((1 - math.cos(x * math.pi / big_e)) / 2) * (p["lrf"] - 1) + 1)


def ref_step(s: float, p: dict[str, Any]) -> float:
    return BASE_LR * p["gamma"] ** math.floor(s / (p["step_size"] * SPE))


def ref_multistep(s: float, p: dict[str, Any]) -> float:
    return BASE_LR * p["gamma"] ** len([m for m in p["milestones"] if s >= m * SPE])


def ref_exponential(s: float, p: dict[str, Any]) -> float:
    return BASE_LR * p["gamma"] ** (s / SPE)


def ref_cosine_restarts(s: float, p: dict[str, Any]) -> float:
    t_cur, length = s, p["period"] * SPE  # walk the restarts one by one
    while t_cur >= length:
        t_cur -= length
        length *= p["period_mult"]
    return p["min_lr"] + (BASE_LR - p["min_lr"]) * (1 + math.cos(math.pi * t_cur / length)) / 2


def ref_onecycle(s: float, p: dict[str, Any]) -> float:
    peak = p.get("max_lr") or BASE_LR
    start = peak / p.get("div_factor", 25.0)
    end = start / p.get("final_div_factor", 1e4)
    up_end = p.get("pct_start", 0.3) * TOTAL - 1
    if s <= up_end:
        a, b, frac = start, peak, s / up_end
    else:
        a, b, frac = peak, end, min((s - up_end) / (TOTAL - 1 - up_end), 1.0)
    if p.get("anneal", "cos") == "cos":
        return b + (a - b) * (1 + math.cos(math.pi * frac)) / 2
    return a + (b - a) * frac


def ref_cyclic(s: float, p: dict[str, Any]) -> float:
    high = p.get("max_lr") or 4 * BASE_LR
    half = p.get("step_size_up", 2) * SPE
    pos = s % (2 * half)
    tri = pos / half if pos <= half else 2 - pos / half
    mode = p.get("mode", "triangular")
    amp = {
        "triangular": 1.0,
        "triangular2": 0.5 ** (s // (2 * half)),
        "exp_range": p.get("gamma", 1.0) ** (s / SPE),
    }[mode]
    return BASE_LR + (high - BASE_LR) * tri * amp


def ref_poly(s: float, p: dict[str, Any]) -> float:
    return (BASE_LR - p["min_lr"]) * (1 - min(s / TOTAL, 1.0)) ** p["power"] + p["min_lr"]


def ref_wsd(s: float, p: dict[str, Any]) -> float:
    start = TOTAL - p["decay_fraction"] * TOTAL
    if s <= start:
        return BASE_LR
    frac = min((s - start) / (TOTAL - start), 1.0)
    left = {"linear": 1 - frac, "cosine": (1 + math.cos(math.pi * frac)) / 2, "sqrt": 1 - math.sqrt(frac)}
    return p["min_lr"] + (BASE_LR - p["min_lr"]) * left[p["decay_shape"]]


REFERENCES: dict[str, tuple[Ref, list[dict[str, Any]]]] = {
    "constant": (lambda s, p: BASE_LR, [{}]),
    "linear": (ref_linear, [{"lrf": 0.01}, {"lrf": 0.2}]),
    "cosine": (ref_cosine, [{"lrf": 0.01}, {"lrf": 0.5}]),
    "step": (ref_step, [{"step_size": 2, "gamma": 0.5}, {"step_size": 1, "gamma": 0.1}]),
    "multistep": (
        ref_multistep,
        [{"milestones": [3, 7], "gamma": 0.3}, {"milestones": [6.0, 9.0], "gamma": 0.1}],
    ),
    "exponential": (ref_exponential, [{"gamma": 0.95}, {"gamma": 0.5}]),
    "cosine_restarts": (
        ref_cosine_restarts,
        [
            {"period": 2, "period_mult": 1.0, "min_lr": 0.0},
            {"period": 1, "period_mult": 2, "min_lr": 1e-4},
            {"period": 1.3, "period_mult": 1.5, "min_lr": 1e-3},
            {"period": 0.2, "period_mult": 3, "min_lr": 0.0},  # restarts at 1, 4, 13, 40: log(81, 3) rounds
        ],
    ),
    "onecycle": (
        ref_onecycle,
        [
            {},
            {
                "max_lr": 0.05,
                "pct_start": 0.25,
                "div_factor": 10.0,
                "final_div_factor": 100.0,
                "anneal": "linear",
            },
        ],
    ),
    "cyclic": (
        ref_cyclic,
        [
            {},
            {"max_lr": 0.05, "step_size_up": 1, "mode": "triangular2"},
            {"max_lr": 0.05, "step_size_up": 1.5, "mode": "exp_range", "gamma": 0.7},
        ],
    ),
    "poly": (ref_poly, [{"power": 0.9, "min_lr": 0.0}, {"power": 2.0, "min_lr": 1e-4}]),
    "wsd": (
        ref_wsd,
        [
            {"decay_fraction": 0.2, "decay_shape": "linear", "min_lr": 0.0},
            {"decay_fraction": 0.3, "decay_shape": "cosine", "min_lr": 1e-5},
            {"decay_fraction": 1.0, "decay_shape": "sqrt", "min_lr": 1e-5},
        ],
    ),
    "plateau": (lambda s, p: BASE_LR, [{}]),  # without observations: the base lr
}

# Integer steps, epoch starts (the "epoch" interval), off-grid floats, and steps past the end of training.
STEPS = sorted(
    {*range(0, int(TOTAL) + 8), *(e * SPE for e in range(EPOCHS + 1)), *(k + 0.37 for k in range(70))}
)


def test_every_schedule_has_a_reference() -> None:
    assert sorted(REFERENCES) == list_schedules()


@pytest.mark.parametrize("name", list_schedules())
def test_schedule_matches_closed_form(name: str) -> None:
    ref, cases = REFERENCES[name]
    for params in cases:
        sched = create_schedule(name, base_lr=BASE_LR, total_steps=TOTAL, steps_per_epoch=SPE, **params)
        for step in STEPS:
            assert sched(step) == approx(ref(step, params)), (params, step)


@pytest.mark.parametrize("name", list_schedules())
def test_defaults_build_and_observe_is_harmless(name: str) -> None:
    sched = create_schedule(name, base_lr=BASE_LR, total_steps=TOTAL, steps_per_epoch=SPE)
    before = [sched(s) for s in range(int(TOTAL))]
    assert all(math.isfinite(v) and v >= 0 for v in before)
    if name != "plateau":
        sched.observe(0, 0.5)
        sched.observe(1, 0.1)
        assert [sched(s) for s in range(int(TOTAL))] == before
    for params in REFERENCES[name][1]:
        assert set(params) <= set(schedule_params(name))


# --- torch equivalents -----------------------------------------------------------------------------------

TorchFactory = Callable[[Any, Any], Any]
TORCH_CASES: list[tuple[str, dict[str, Any], TorchFactory]] = [
    (
        "step",
        {"step_size": 2, "gamma": 0.5},
        lambda t, o: t.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5),
    ),
    (
        "multistep",
        {"milestones": [3, 7], "gamma": 0.3},
        lambda t, o: t.optim.lr_scheduler.MultiStepLR(o, milestones=[15, 35], gamma=0.3),
    ),
    (
        "exponential",
        {"gamma": 0.8},
        lambda t, o: t.optim.lr_scheduler.ExponentialLR(o, gamma=0.8 ** (1 / SPE)),
    ),
    (
        "cosine_restarts",
        {"period": 1, "period_mult": 2, "min_lr": 1e-4},
        lambda t, o: t.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=1e-4),
    ),
    (
        "cosine_restarts",
        {"period": 2, "period_mult": 1, "min_lr": 0.0},
        lambda t, o: t.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=1),
    ),
    (
        "onecycle",
        {},
        lambda t, o: t.optim.lr_scheduler.OneCycleLR(
            o, max_lr=BASE_LR, total_steps=int(TOTAL), cycle_momentum=False
        ),
    ),
    (
        "onecycle",
        {"max_lr": 0.05, "pct_start": 0.25, "div_factor": 10, "final_div_factor": 100, "anneal": "linear"},
        lambda t, o: t.optim.lr_scheduler.OneCycleLR(
            o,
            max_lr=0.05,
            total_steps=int(TOTAL),
            pct_start=0.25,
            div_factor=10,
            final_div_factor=100,
            anneal_strategy="linear",
            cycle_momentum=False,
        ),
    ),
    (
        "cyclic",
        {},
        lambda t, o: t.optim.lr_scheduler.CyclicLR(
            o, base_lr=BASE_LR, max_lr=4 * BASE_LR, step_size_up=10, cycle_momentum=False
        ),
    ),
    (
        "cyclic",
        {"max_lr": 0.05, "step_size_up": 1, "mode": "triangular2"},
        lambda t, o: t.optim.lr_scheduler.CyclicLR(
            o, base_lr=BASE_LR, max_lr=0.05, step_size_up=5, mode="triangular2", cycle_momentum=False
        ),
    ),
    (
        "cyclic",
        {"max_lr": 0.05, "step_size_up": 1, "mode": "exp_range", "gamma": 0.7},
        lambda t, o: t.optim.lr_scheduler.CyclicLR(
            o,
            base_lr=BASE_LR,
            max_lr=0.05,
            step_size_up=5,
            mode="exp_range",
            gamma=0.7 ** (1 / SPE),
            cycle_momentum=False,
        ),
    ),
    (
        "poly",
        {"power": 2.0, "min_lr": 0.0},
        lambda t, o: t.optim.lr_scheduler.PolynomialLR(o, total_iters=int(TOTAL), power=2.0),
    ),
]


@pytest.fixture(scope="module")
def torch() -> Any:
    return pytest.importorskip("torch", reason="torch compares detune's schedules with its own")


def _sgd(torch: Any, lr: float = BASE_LR) -> Any:
    param = torch.nn.Parameter(torch.randn(3, generator=torch.Generator().manual_seed(0)))
    return torch.optim.SGD([param], lr=lr, momentum=0.9)


@pytest.mark.parametrize(
    ("name", "params", "factory"), TORCH_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(TORCH_CASES)]
)
def test_schedule_matches_torch(torch: Any, name: str, params: dict[str, Any], factory: TorchFactory) -> None:
    opt = _sgd(torch)
    torch_sched = factory(torch, opt)
    sched = create_schedule(name, base_lr=BASE_LR, total_steps=TOTAL, steps_per_epoch=SPE, **params)
    for step in range(int(TOTAL)):
        # torch's chained forms multiply step by step: allow a few ulps per step
        assert sched(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-10, abs=1e-15), step
        opt.step()
        torch_sched.step()


PLATEAU_CASES: list[dict[str, Any]] = [
    {"factor": 0.5, "patience": 2, "threshold": 1e-4, "threshold_mode": "rel", "cooldown": 0, "min_lr": 0.0},
    {"factor": 0.1, "patience": 1, "threshold": 0.01, "threshold_mode": "abs", "cooldown": 2, "min_lr": 1e-4},
    {
        "factor": 0.3,
        "patience": 0,
        "threshold": 0.0,
        "threshold_mode": "rel",
        "cooldown": 1,
        "min_lr": 0.0,
        "mode": "min",
    },
]


@pytest.mark.parametrize(
    "base_lr", [BASE_LR, 1e-6]
)  # 1e-6: later cuts fall under torch's eps and are skipped
@pytest.mark.parametrize("params", PLATEAU_CASES)
def test_plateau_matches_torch(torch: Any, params: dict[str, Any], base_lr: float) -> None:
    params = {**params, "min_lr": params["min_lr"] * base_lr / BASE_LR}  # the floor must stay below base_lr
    opt = _sgd(torch, base_lr)
    torch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **{"mode": "max", **params})
    plan = build_plan(scheduler="plateau", scheduler_params=params, lr0=base_lr, epochs=40, steps_per_epoch=3)
    rng, fitness = random.Random(1), 0.1
    for epoch in range(40):
        fitness += rng.choice([0.0, 0.0, 0.0, 0.00001, 0.05]) * (
            1 if params.get("mode", "max") == "max" else -1
        )
        noisy = fitness + rng.choice([0.0, -0.02, 0.02])
        plan.observe(epoch, noisy)
        plan.observe(epoch, 1e9)  # a repeated epoch is ignored
        torch_sched.step(noisy)
        for step in range((epoch + 1) * 3, (epoch + 2) * 3):  # the steps of the next epoch
            assert plan.lr(step, epoch + 1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), epoch
    assert plan.lr(0, 0) < base_lr  # the sequence did trigger cuts


def test_plateau_nan_counts_as_no_improvement() -> None:
    plan = build_plan(
        scheduler="plateau",
        scheduler_params={"patience": 1, "factor": 0.5},
        lr0=0.01,
        epochs=5,
        steps_per_epoch=1,
    )
    for epoch, fit in enumerate([0.3, math.nan, math.nan]):
        plan.observe(epoch, fit)
    assert plan.lr(3, 3) == approx(0.005)


def test_plateau_state_survives_a_resume() -> None:
    def fresh() -> LRPlan:
        params = {"patience": 1, "factor": 0.5, "cooldown": 1}
        return build_plan(
            scheduler="plateau", scheduler_params=params, lr0=0.01, epochs=20, steps_per_epoch=1
        )

    fits = [0.1, 0.2, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3]
    whole, first = fresh(), fresh()
    for epoch, fit in enumerate(fits):
        whole.observe(epoch, fit)
    for epoch, fit in enumerate(fits[:4]):
        first.observe(epoch, fit)
    resumed = fresh()
    resumed.schedule.load_state(json.loads(json.dumps(first.schedule.state())))
    assert resumed.lr(4, 4) == first.lr(4, 4) < 0.01
    for epoch, fit in enumerate(fits[4:], start=4):
        resumed.observe(epoch, fit)
    assert resumed.schedule.state() == whole.schedule.state()
    with pytest.raises(ValueError, match="unknown keys"):
        resumed.schedule.load_state({"n_cuts": 1})
    assert create_schedule("linear", base_lr=0.1, total_steps=4, steps_per_epoch=1).state() == {}


# --- warmup and plan -------------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("name", list_schedules())
def test_warmup_composes_with_every_schedule(name: str, interval: str) -> None:
    params = REFERENCES[name][1][-1]
    plan = build_plan(
        scheduler=name,
        scheduler_params=params,
        lr0=BASE_LR,
        epochs=EPOCHS,
        steps_per_epoch=SPE,
        interval=interval,
        warmup_epochs=1.5,
        warmup_bias_lr=0.1,
        warmup_momentum=0.8,
        momentum=0.9,
    )
    assert plan.warmup_steps == round(1.5 * SPE) == 8
    sched = create_schedule(name, base_lr=BASE_LR, total_steps=TOTAL, steps_per_epoch=SPE, **params)
    for step in range(int(TOTAL)):
        epoch = int(step // SPE)
        target = sched(step if interval == "step" else epoch * SPE)
        if step <= plan.warmup_steps:
            weight = float(np.interp(step, [0, 8], [0.0, target]))
            bias = float(np.interp(step, [0, 8], [0.1, target]))
            momentum = float(np.interp(step, [0, 8], [0.8, 0.9]))
        else:
            weight = bias = target
            momentum = 0.9
        assert plan.lr(step, epoch) == approx(weight), step
        assert plan.lr(step, epoch, bias=True) == approx(bias), step
        assert plan.lr(step, epoch, mult=3.0) == approx(
            3 * weight if step > 8 else np.interp(step, [0, 8], [0, 3 * target])
        )
        assert plan.momentum_at(step) == approx(momentum), step


def test_no_warmup_starts_on_the_schedule() -> None:
    plan = build_plan(
        scheduler="cosine", scheduler_params={"lrf": 0.1}, lr0=BASE_LR, epochs=3, steps_per_epoch=4
    )
    assert plan.warmup_steps == 0
    assert plan.lr(0, 0) == plan.lr(0, 0, bias=True) == BASE_LR
    assert plan.momentum_at(0) == 0.937


@pytest.mark.parametrize("name", list_schedules())
def test_epoch_interval_is_constant_within_an_epoch(name: str) -> None:
    plan = build_plan(
        scheduler=name,
        scheduler_params=REFERENCES[name][1][-1],
        lr0=BASE_LR,
        epochs=EPOCHS,
        steps_per_epoch=SPE,
        interval="epoch",
    )
    for epoch in range(EPOCHS):
        steps = range(int(epoch * SPE), int((epoch + 1) * SPE))
        assert len({plan.lr(s, epoch) for s in steps}) == 1, epoch
        assert plan.lr(steps[0], epoch) == plan.schedule(epoch * SPE)


@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("spe", [1.0, 2.5, 7 / 3, 10.0, 0.1 * 3 + 6])
def test_step_decay_halves_each_epoch(spe: float, interval: str) -> None:
    plan = build_plan(
        scheduler="step",
        scheduler_params={"step_size": 1, "gamma": 0.5},
        lr0=BASE_LR,
        epochs=3,
        steps_per_epoch=spe,
        interval=interval,
    )
    for epoch, expected in enumerate([BASE_LR, BASE_LR / 2, BASE_LR / 4]):
        last = max(k for k in range(plan.num_steps) if plan.epoch_of(k) == epoch)
        assert plan.lr(last, epoch) == approx(expected), (epoch, last)


@pytest.mark.parametrize("spe", [0.1 * k for k in range(1, 40)])
def test_boundaries_survive_float_noise(spe: float) -> None:
    plan = build_plan(
        scheduler="multistep",
        scheduler_params={"milestones": [1, 2, 3], "gamma": 0.5},
        lr0=1.0,
        epochs=4,
        steps_per_epoch=spe,
        interval="epoch",
    )
    assert [plan.lr(10**6, e) for e in range(4)] == [1.0, 0.5, 0.25, 0.125]
    step = create_schedule(
        "step", base_lr=1.0, total_steps=4 * spe, steps_per_epoch=spe, step_size=1, gamma=0.5
    )
    assert [step(e * spe) for e in range(4)] == [1.0, 0.5, 0.25, 0.125]


def _ultralytics_lrs(
    cos_lr: bool, lrf: float, epochs: int, nb: int, warmup_epochs: float, bias: bool
) -> list[float]:
    """Lrs Ultralytics 8.4's BaseTrainer sets per batch: LambdaLR per epoch, np.interp warmup per batch."""
    lr0, warmup_bias_lr = BASE_LR, 0.1

    def lf(x: int) -> float:  # trainer.lf: one_cycle(1, lrf, epochs) if cos_lr, else the linear lambda
        if cos_lr:
            return max((1 - math.cos(x * math.pi / epochs)) / 2, 0) * (lrf - 1) + 1
        return max(1 - x / epochs, 0) * (1.0 - lrf) + lrf

    we = min(warmup_epochs, max(epochs - 1, 0))
    nw = round(we * nb) if we > 0 else 0
    out = []
    for epoch in range(epochs):
        lr = lr0 * lf(epoch)  # scheduler.step() at the start of the epoch
        for i in range(nb):
            ni = i + nb * epoch
            if nw and ni <= nw:
                lr = float(np.interp(ni, [0, nw], [warmup_bias_lr if bias else 0.0, lr0 * lf(epoch)]))
            out.append(lr)
    return out


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("warmup_epochs", [0.0, 1.5, 3.0, 7.0])
@pytest.mark.parametrize("scheduler", ["linear", "cosine"])
def test_epoch_interval_reproduces_ultralytics(scheduler: str, warmup_epochs: float, bias: bool) -> None:
    epochs, nb, lrf = 5, 7, 0.05
    expected = _ultralytics_lrs(scheduler == "cosine", lrf, epochs, nb, warmup_epochs, bias)
    plan = build_plan(
        scheduler=scheduler,
        scheduler_params={"lrf": lrf},
        lr0=BASE_LR,
        epochs=epochs,
        steps_per_epoch=nb,
        interval="epoch",
        warmup_epochs=warmup_epochs,
    )
    got = [plan.lr(ni, ni // nb, bias=bias) for ni in range(epochs * nb)]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


# --- errors ----------------------------------------------------------------------------------------------


def _make(name: str, **params: Any) -> Any:
    return create_schedule(name, base_lr=BASE_LR, total_steps=TOTAL, steps_per_epoch=SPE, **params)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(
        ConfigError,
        match=r"scheduler \('cosin'\) is not a known schedule; did you mean 'cosine'\? "
        r"valid: constant, cosine, cosine_restarts",
    ):
        _make("cosin")
    assert issubclass(ConfigError, ValueError)


def test_unknown_param_names_it_and_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "scheduler_params.gama is not a parameter of schedule 'step' "
            "(did you mean 'gamma'?); valid parameters: step_size, gamma"
        ),
    ):
        _make("step", gama=0.5)
    with pytest.raises(ConfigError, match=r"scheduler_params\.lrf .* 'constant' \(it has none\)"):
        _make("constant", lrf=0.1)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        (
            "step",
            {"gamma": 1.5},
            "scheduler_params.gamma (1.5) must be a number in (0, 1]; use e.g. gamma: 0.5",
        ),
        ("step", {"gamma": True}, "scheduler_params.gamma (True) must be a number in (0, 1]"),
        (
            "step",
            {"step_size": 0},
            "scheduler_params.step_size (0) must be a number > 0; use e.g. step_size: 1",
        ),
        ("linear", {"lrf": -0.1}, "scheduler_params.lrf (-0.1) must be a number in [0, 1]"),
        (
            "multistep",
            {"milestones": [4, 2]},
            "scheduler_params.milestones ([4, 2]) must be a non-empty, strictly "
            "increasing list of epochs > 0; use e.g. milestones: [30, 60]",
        ),
        ("multistep", {"milestones": "30"}, "scheduler_params.milestones ('30') must be a non-empty"),
        (
            "onecycle",
            {"anneal": "cosine"},
            "scheduler_params.anneal ('cosine') must be one of 'cos', 'linear'",
        ),
        ("onecycle", {"pct_start": 1.0}, "scheduler_params.pct_start (1.0) must be a number in (0, 1)"),
        (
            "poly",
            {"min_lr": 0.01},
            "scheduler_params.min_lr (0.01) must be a number in [0, base lr 0.01); use e.g. min_lr: 0.0",
        ),
        (
            "cyclic",
            {"max_lr": 0.001},
            "scheduler_params.max_lr (0.001) must be a number above the base lr (0.01); "
            "use e.g. max_lr: 0.04",
        ),
        ("plateau", {"patience": 2.5}, "scheduler_params.patience (2.5) must be an integer >= 0"),
        ("cosine_restarts", {"period_mult": 0.5}, "scheduler_params.period_mult (0.5) must be a number >= 1"),
        (
            "wsd",
            {"decay_shape": "exp"},
            "scheduler_params.decay_shape ('exp') must be one of 'linear', 'cosine'",
        ),
    ],
)
def test_bad_values_name_field_value_rule_and_fix(name: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _make(name, **params)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr0": 0}, "lr0 (0) must be a number > 0; use e.g. lr0: 0.01"),
        ({"epochs": 0}, "epochs (0) must be an integer >= 1"),
        ({"steps_per_epoch": -1}, "steps_per_epoch (-1) must be a number > 0"),
        ({"interval": "batch"}, "scheduler_interval ('batch') must be one of 'step', 'epoch'"),
        ({"warmup_epochs": -1}, "warmup_epochs (-1) must be a number >= 0"),
        ({"warmup_momentum": 1.5}, "warmup_momentum (1.5) must be a number in [0, 1)"),
        ({"momentum": 1.0}, "momentum (1.0) must be a number in [0, 1)"),  # as TrainConfig: SGD diverges at 1
        ({"scheduler_params": [0.5]}, "scheduler_params ([0.5]) must be a mapping"),
        ({"scheduler": "stepp"}, "did you mean 'step'?"),
        (
            {"scheduler_params": {"base_lr": 0.1}},
            "scheduler_params.base_lr is not a parameter of schedule 'linear'",
        ),
    ],
)
def test_build_plan_rejects_bad_settings(overrides: dict[str, Any], message: str) -> None:
    kwargs: dict[str, Any] = {
        "scheduler": "linear",
        "scheduler_params": {},
        "lr0": 0.01,
        "epochs": 3,
        "steps_per_epoch": 4.0,
        **overrides,
    }
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_plan(**kwargs)


def test_create_schedule_rejects_bad_base_values() -> None:
    with pytest.raises(ConfigError, match=re.escape("base_lr (0) must be a finite number > 0")):
        create_schedule("constant", base_lr=0, total_steps=1, steps_per_epoch=1)
    with pytest.raises(ConfigError, match=re.escape("steps_per_epoch (nan) must be a finite number > 0")):
        create_schedule("constant", base_lr=0.1, total_steps=1, steps_per_epoch=math.nan)


def test_warmup_is_capped_like_ultralytics() -> None:
    plan = build_plan(
        scheduler="linear", scheduler_params={}, lr0=0.01, epochs=3, steps_per_epoch=4, warmup_epochs=5.0
    )
    assert plan.warmup_steps == 8  # min(warmup_epochs, epochs - 1) epochs
    assert (
        build_plan(
            scheduler="linear", scheduler_params={}, lr0=0.01, epochs=1, steps_per_epoch=4, warmup_epochs=1.0
        ).warmup_steps
        == 0
    )


# --- picture, key points, docs, import cost --------------------------------------------------------------


def test_key_points() -> None:
    plan = build_plan(
        scheduler="linear",
        scheduler_params={"lrf": 0.5},
        lr0=0.01,
        epochs=3,
        steps_per_epoch=4,
        interval="epoch",
        warmup_epochs=0.5,
    )
    assert [s for s, _ in key_points(plan)] == [0, 2, 4, 8, 11]
    assert key_points(plan)[0] == (0, 0.0)
    assert dict(key_points(plan))[8] == approx(0.01 * (1 / 3 * 0.5 + 0.5))


def test_plot_writes_png(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib", reason="plot() needs matplotlib")
    plan = build_plan(
        scheduler="onecycle", scheduler_params={}, lr0=0.01, epochs=8, steps_per_epoch=12.5, warmup_epochs=1.0
    )
    out = plot(plan, tmp_path / "sub" / "lr.png", log_y=True)
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5_000
    monkeypatch.setattr("detune.schedules._plot._MAX_POINTS", 50)  # long trainings are drawn from a subsample
    long = build_plan(scheduler="cosine", scheduler_params={}, lr0=0.01, epochs=80, steps_per_epoch=30)
    assert plot(long, tmp_path / "long.png").stat().st_size > 5_000


def test_plan_is_a_plain_dataclass() -> None:
    plan = LRPlan(schedule=_make("constant"), steps_per_epoch=2.0, epochs=3)
    assert plan.total_steps == 6.0 and plan.num_steps == 6 and plan.epoch_of(5) == 2
    plan.observe(0, 1.0)  # no-op for closed-form schedules
    assert plan.lr(3, 1) == BASE_LR


@pytest.mark.parametrize("module", ["_base", "_kinds", "_plateau", "_registry", "_warmup", "_plan", "_plot"])
def test_docstring_examples_run(module: str) -> None:
    mod = importlib.import_module(f"detune.schedules.{module}")
    assert doctest.testmod(mod, optionflags=doctest.ELLIPSIS).failed == 0


def test_import_is_light() -> None:
    heavy = "{'torch', 'matplotlib', 'ultralytics'}"
    code = f"import sys, detune.schedules; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_key_points_of_a_long_training_are_bounded() -> None:
    plan = build_plan(scheduler="step", scheduler_params={"step_size": 1000, "gamma": 0.5}, lr0=0.01,
                      epochs=100_000, steps_per_epoch=10_000_000, warmup_epochs=2.0)
    start = __import__("time").perf_counter()
    points = key_points(plan)
    assert __import__("time").perf_counter() - start < 5
    steps = [s for s, _ in points]
    assert 3 <= len(points) <= 1002 and steps == sorted(set(steps))
    assert steps[0] == 0 and steps[1] == 20_000_000 and steps[-1] == plan.num_steps - 1
    assert dict(points)[1000 * 10_000_000] == approx(0.005)  # the decays are among the epochs shown


def test_build_plan_bounds_steps_per_epoch() -> None:
    with pytest.raises(ConfigError, match=r"steps_per_epoch \(1e\+300\) must be <= 10000000"):
        build_plan(scheduler="constant", scheduler_params={}, lr0=0.01, epochs=2, steps_per_epoch=1e300)
