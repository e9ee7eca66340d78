"""Real tiny trainings: the lr the optimizer actually used at every step equals detune's closed form."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.optim.optimizer import register_optimizer_step_pre_hook

import detune
from detune.adapters.base import read_state
from detune.schedules import build_plan, list_schedules

pytestmark = pytest.mark.slow


@pytest.fixture
def recorded_lrs():
    """Every optimizer step's param-group lrs and momenta, seen by a global torch pre-hook (independent of
    detune's own bookkeeping)."""
    seen: list[dict] = []

    def hook(optimizer, args, kwargs):
        seen.append({"lr": [g["lr"] for g in optimizer.param_groups],
                     "momentum": [g.get("momentum", g.get("betas", (None,))[0]) for g in optimizer.param_groups],
                     "kind": [g.get("param_group") for g in optimizer.param_groups]})

    handle = register_optimizer_step_pre_hook(hook)
    yield seen
    handle.remove()


def _fast(tiny: dict, **changes) -> dict:
    # 16 train images, batch 4 -> 4 optimizer steps per epoch
    return {**tiny, "fraction": 0.5, "batch": 4, "nbs": 4, "imgsz": 32, **changes}


PARAMS = {"step": {"step_size": 1, "gamma": 0.5}, "multistep": {"milestones": [1], "gamma": 0.3},
          "exponential": {"gamma": 0.5}, "cosine_restarts": {"period": 1}, "cyclic": {"step_size_up": 0.5},
          "plateau": {"patience": 0, "factor": 0.5}}


@pytest.mark.parametrize("kind", list_schedules())
def test_every_schedule_is_applied_at_every_step_with_warmup(tiny: dict, kind: str, recorded_lrs: list) -> None:
    result = detune.train(**_fast(tiny, lr0=0.02, scheduler=kind, scheduler_params=PARAMS.get(kind, {}),
                                  warmup_epochs=0.5, epochs=2))
    assert result.status == "completed", result.reason
    info = result.info
    plan = build_plan(scheduler=kind, scheduler_params={**PARAMS.get(kind, {}), "lrf": 0.01}
                      if kind in ("linear", "cosine") else PARAMS.get(kind, {}), lr0=0.02, epochs=2,
                      steps_per_epoch=info["steps_per_epoch"], interval="step", warmup_epochs=0.5,
                      warmup_bias_lr=0.1, warmup_momentum=0.8, momentum=0.937)
    assert len(recorded_lrs) == len(result.steps) == 8
    assert plan.warmup_steps == 2
    for step, (seen, logged) in enumerate(zip(recorded_lrs, result.steps, strict=True)):
        if kind == "plateau" and logged["epoch"] == 1:
            plan.observe(0, result.history[0]["fitness"])  # the one stateful kind, driven by validation
        for i, kind_name in enumerate(seen["kind"]):
            expected = plan.lr(step, int(logged["epoch"]), bias=kind_name == "bias")
            assert seen["lr"][i] == pytest.approx(expected, rel=1e-9), (step, kind_name)
            assert logged[f"lr/pg{i}"] == seen["lr"][i]
        assert seen["momentum"][0] == pytest.approx(plan.momentum_at(step), rel=1e-9)
    state = read_state(result.save_dir / "weights")  # the checkpoint's state: plateau's only when it learnt one
    if kind == "plateau":
        assert "num_bad_epochs" in state["plateau"], state
    else:
        assert "plateau" not in state, state  # closed-form: no empty "plateau": {} in every checkpoint


@pytest.mark.parametrize("cos_lr", [False, True])
def test_epoch_interval_reproduces_plain_ultralytics_exactly(tiny: dict, cos_lr: bool, recorded_lrs: list) -> None:
    """Compatibility mode: linear/cosine, scheduler_interval=epoch, default params, Ultralytics' warmup."""
    from detune import _runtime

    settings = _fast(tiny, lr0=0.02, epochs=3, warmup_epochs=1.0, cos_lr=cos_lr)
    result = detune.train(**settings, scheduler_interval="epoch")
    assert result.status == "completed", result.reason
    ours = list(recorded_lrs)
    recorded_lrs.clear()

    _runtime.prepare()
    from ultralytics import YOLO

    yolo_args = {k: v for k, v in settings.items() if k not in ("model", "threads")}  # detune-only key
    yolo_args.update(project=str(Path(tiny["project"]) / "plain"), optimizer="SGD", verbose=False)
    YOLO("yolo11n.yaml").train(**yolo_args)
    plain = list(recorded_lrs)
    assert len(plain) == len(ours) == 12
    for step, (a, b) in enumerate(zip(ours, plain, strict=True)):
        assert a["kind"] == b["kind"]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12), step
        assert a["momentum"] == pytest.approx(b["momentum"], rel=1e-12), step


def test_step_schedule_history_halves_each_epoch(tiny: dict) -> None:
    result = detune.train(**_fast(tiny, lr0=0.04, epochs=3, warmup_epochs=0.0, scheduler="step",
                                  scheduler_params={"step_size": 1, "gamma": 0.5}))
    assert result.status == "completed", result.reason
    assert [h["lr/pg0"] for h in result.history] == pytest.approx([0.04, 0.02, 0.01], rel=1e-12)


def test_absurd_lr_diverges_early_without_raising(tiny: dict) -> None:
    result = detune.train(**_fast(tiny, lr0=1e3, epochs=10, warmup_epochs=0.0, scheduler="constant"))
    assert result.status == "diverged"
    assert "epoch" in result.reason and "step" in result.reason
    assert len(result.history) < 3  # stopped well before the 10-epoch budget


def test_lr_mult_gives_backbone_its_own_scaled_groups(tiny: dict, recorded_lrs: list) -> None:
    result = detune.train(**_fast(tiny, lr0=0.02, epochs=1, scheduler="constant", lr_mult={"backbone": 0.1}))
    assert result.status == "completed", result.reason
    first = recorded_lrs[0]
    assert first["kind"][:3] == ["weight", "bn", "bias"] and len(first["kind"]) == 6
    assert first["lr"][3:] == pytest.approx([0.002, 0.002, 0.002])
    assert first["lr"][:3] == pytest.approx([0.02, 0.02, 0.02])


def test_lr_layer_decay_gives_each_layer_below_the_head_a_decayed_lr(tiny: dict) -> None:
    """Layer i of yolo11n's 24 (the head is layer 23) trains at lr0 x 0.5^(23 - i), times its lr_mult part."""
    seen: list[list[tuple]] = []
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append(
        [(g["lr"], g.get("detune_layer"), g.get("detune_part"), g["param_group"]) for g in opt.param_groups]))
    try:
        result = detune.train(**_fast(tiny, lr0=0.02, epochs=1, scheduler="constant", lr_layer_decay=0.5,
                                      lr_mult={"backbone": 0.1}))
    finally:
        hook.remove()
    assert result.status == "completed", result.reason
    groups = seen[0]
    assert [g[3] for g in groups[:3]] == ["weight", "bn", "bias"]
    assert {g[:3] for g in groups[:3]} == {(0.02, None, None)}  # the head's groups at lr0
    layers = sorted({g[1] for g in groups if g[1] is not None})
    assert layers[0] == 0 and layers[-1] == 22  # every layer below the head that has params
    for lr, layer, part, _ in groups[3:]:
        if layer is not None:
            assert lr == pytest.approx(0.02 * (0.1 if part == "backbone" else 1.0) * 0.5 ** (23 - layer))
    assert len(groups) == len(seen[-1]) > 40  # dozens of groups, the same at every step
    assert len([k for k in result.history[0] if k.startswith("lr/pg")]) == len(groups)


@pytest.mark.parametrize(("optimizer", "lr0"), [("Adagrad", 0.02), ("Adadelta", 0.5)])
def test_torch_optimizers_take_ultralytics_groups_lr0_warmup_and_schedule(tiny: dict, optimizer: str, lr0: float,
                                                                           recorded_lrs: list) -> None:
    """Adagrad and Adadelta, which Ultralytics does not build: torch's class over Ultralytics' three groups
    (weight decay on the weights only), lr0 honoured, detune's warmup and schedule applied to every step."""
    import torch

    seen: set[tuple] = set()
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.add((type(opt), tuple(g["weight_decay"] for g in opt.param_groups))))
    try:
        result = detune.train(**_fast(tiny, lr0=lr0, epochs=2, optimizer=optimizer, weight_decay=0.001,
                                      warmup_epochs=0.5, scheduler="linear", lrf=0.1))
    finally:
        hook.remove()
    assert result.status == "completed", result.reason
    assert seen == {(getattr(torch.optim, optimizer), (0.001, 0.0, 0.0))}
    assert [s["kind"] for s in recorded_lrs[:1]] == [["weight", "bn", "bias"]]
    weights = [s["lr"][0] for s in recorded_lrs]
    peak = weights.index(max(weights))
    assert weights[:peak + 1] == sorted(weights[:peak + 1]) and weights[0] < 0.5 * weights[peak]  # warmup
    assert 0.6 * lr0 < weights[peak] <= lr0 and weights[peak:] == sorted(weights[peak:], reverse=True)  # decay
    assert weights[-1] < 0.5 * lr0
    assert [r["lr/pg0"] for r in result.steps] == pytest.approx(weights)  # detune's record is what torch used


@pytest.mark.parametrize("optimizer", ["SGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp", "MuSGD"])
def test_every_optimizer_honours_lr0_and_momentum(tiny: dict, optimizer: str, recorded_lrs: list) -> None:
    result = detune.train(**_fast(tiny, lr0=0.003, momentum=0.85, epochs=1, optimizer=optimizer,
                                  scheduler="constant", fraction=0.25))
    assert result.status == "completed", result.reason
    seen = recorded_lrs[-1]
    factors = sorted({round(lr / 0.003, 9) for lr in seen["lr"]})
    assert factors == ([1.0, 3.0] if optimizer == "MuSGD" else [1.0])  # MuSGD keeps its x3 head groups
    assert seen["momentum"][0] == pytest.approx(0.85)
