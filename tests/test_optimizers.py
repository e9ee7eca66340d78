"""Optimizers detune builds itself: schedule-free AdamW/SGD and Prodigy (validation fast, trainings slow)."""

from __future__ import annotations

import math

import pytest

from detune import _optimizers
from detune.config import DetuneWarning, from_dict, lr_plan, optimizer_warmup_steps
from detune.errors import ConfigError

SCHEDULE_FREE = ["AdamWScheduleFree", "SGDScheduleFree"]


@pytest.mark.parametrize(("optimizer", "package", "extra"), [("AdamWScheduleFree", "schedulefree", "schedulefree"),
                                                             ("sgdschedulefree", "schedulefree", "schedulefree"),
                                                             ("Prodigy", "prodigyopt", "prodigy")])
def test_a_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, optimizer: str, package: str,
                                                  extra: str) -> None:
    monkeypatch.setattr(_optimizers, "_installed", lambda module: module != package)
    with pytest.raises(ConfigError, match=rf"optimizer \('\w+'\) needs the {package} package, which is not "
                                          rf"installed; pip install 'detune\[{extra}\]' \(or pip install {package}\)"):
        from_dict({"optimizer": optimizer})
    from_dict({"optimizer": "AdamW"})  # the others need nothing


@pytest.mark.parametrize("optimizer", SCHEDULE_FREE)
def test_schedule_free_runs_constant_unless_told_otherwise_and_refuses_a_schedule(optimizer: str) -> None:
    cfg = from_dict({"optimizer": optimizer, "epochs": 10, "warmup_epochs": 2.0, "lr0": 0.002})
    assert cfg.schedule_name == "constant" and cfg.scheduler is None
    assert from_dict({"optimizer": optimizer, "scheduler": "constant"}).schedule_name == "constant"
    with pytest.raises(ConfigError, match=rf"scheduler \('cosine'\) cannot be used with optimizer {optimizer}, which "
                                          r"replaces the schedule.*; leave scheduler unset \(or constant\)"):
        from_dict({"optimizer": optimizer, "scheduler": "cosine"})
    with pytest.raises(ConfigError, match=r"cos_lr \(True\) asks for a cosine schedule.*set cos_lr: false"):
        from_dict({"optimizer": optimizer, "cos_lr": True})
    with pytest.raises(ConfigError, match=r"momentum \(0\.0\) must be in \(0, 1\) for optimizer"):
        from_dict({"optimizer": optimizer, "momentum": 0.0})
    # detune's plan holds lr0 (no warmup of its own); the optimizer gets the warmup as its warmup_steps
    plan = lr_plan(cfg, steps_per_epoch=5)
    assert plan.warmup_steps == 0 and optimizer_warmup_steps(cfg, 5) == 10
    assert {plan.lr(k, k // 5, bias=bias) for k in range(50) for bias in (False, True)} == {0.002}
    assert optimizer_warmup_steps(cfg.replace(optimizer="AdamW"), 5) == 0


def test_prodigy_keeps_the_schedule_as_a_multiplier_of_lr0_1() -> None:
    cfg = from_dict({"optimizer": "Prodigy", "lr0": 1.0, "epochs": 4, "warmup_epochs": 1.0})
    assert cfg.schedule_name == "linear"
    plan = lr_plan(cfg, steps_per_epoch=2)
    assert plan.warmup_steps == 2 and plan.lr(7, 3) < 1.0
    assert plan.lr(0, 0, bias=True) == 0.0 and plan.lr(1, 0, bias=True) == plan.lr(1, 0)  # one lr for all groups


# ---- real tiny trainings on CPU ---------------------------------------------------------------------------


def _fast(tiny: dict, **changes) -> dict:
    # 16 train images, batch 4 -> 4 optimizer steps per epoch
    return {**tiny, "fraction": 0.5, "batch": 4, "nbs": 4, "imgsz": 32, **changes}


@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "lr0"), [("AdamWScheduleFree", 0.001), ("SGDScheduleFree", 0.1)])
def test_schedule_free_trains_warms_up_and_evaluates_and_saves_its_eval_weights(
        tiny: dict, optimizer: str, lr0: float, monkeypatch: pytest.MonkeyPatch) -> None:
    import schedulefree
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    from ultralytics.engine.trainer import BaseTrainer

    import detune

    steps: list[dict] = []
    checks: list[tuple] = []  # (event, train_mode, model in eval weights, BN refreshed)
    saved: dict = {}

    def pre_hook(opt, args, kwargs):
        g = opt.param_groups[0]
        steps.append({"type": type(opt), "lr": [x["lr"] for x in opt.param_groups], "k": g["k"],
                      "warmup_steps": g["warmup_steps"], "scheduled_lr": g["scheduled_lr"], "mode": g["train_mode"]})

    def eval_weights_differ(trainer) -> bool:
        """The training weights y lie between x and z: with z != x, switching modes really moves the weights."""
        opt = trainer.optimizer
        p = opt.param_groups[0]["params"][0]
        return not torch.equal(p, opt.state[p]["z"])

    original_validate, original_save = BaseTrainer.validate, BaseTrainer.save_model

    def validate(self):
        checks.append(("validate", self.optimizer.param_groups[0]["train_mode"], eval_weights_differ(self)))
        ema = self.ema.ema.state_dict()
        net = self.model.state_dict()
        checks.append(("ema==model", all(torch.equal(ema[k], net[k]) for k in net), None))
        return original_validate(self)

    def save_model(self):
        checks.append(("save", self.optimizer.param_groups[0]["train_mode"], None))
        saved["weights"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return original_save(self)

    monkeypatch.setattr(BaseTrainer, "validate", validate)
    monkeypatch.setattr(BaseTrainer, "save_model", save_model)
    handle = register_optimizer_step_pre_hook(pre_hook)
    try:
        result = detune.train(**_fast(tiny, optimizer=optimizer, lr0=lr0, epochs=2, warmup_epochs=0.5))
    finally:
        handle.remove()
    assert result.status == "completed", result.reason
    assert {s["type"] for s in steps} == {getattr(schedulefree, optimizer)}
    assert len(steps) == 8 and all(s["mode"] for s in steps)  # every step in train mode
    assert result.info["optimizer_warmup_steps"] == 2 == steps[0]["warmup_steps"]  # 0.5 epoch x 4 steps
    assert {lr for s in steps for lr in s["lr"]} == {lr0}  # detune holds lr0; the optimizer warms up itself
    assert [s["scheduled_lr"] for s in steps[1:4]] == pytest.approx([lr0 / 2, lr0, lr0])
    assert checks == [("validate", False, True), ("ema==model", True, None), ("save", False, None)] * 2
    ckpt = torch.load(result.weights["last"], weights_only=False)  # stripped by final_eval: the EMA is "model"
    last = ckpt["model"].float().state_dict()
    for key, value in saved["weights"].items():  # last.pt holds the eval weights (saved in half precision)
        assert torch.equal(last[key], value.half().float() if value.is_floating_point() else value), key
    tracked = {int(v) for k, v in last.items() if k.endswith("num_batches_tracked")}
    assert tracked == {4}  # BatchNorm statistics recomputed at x over the epoch's 4 batches (not 8 training ones)
    final = result.history[-1]
    assert all(math.isfinite(final[k]) for k in ("metrics/mAP50-95", "val/box_loss", "train/box_loss"))


def test_prodigy_refuses_per_group_factors_and_warns_about_a_small_lr0() -> None:
    with pytest.raises(ConfigError, match=r"lr_mult \(\{'backbone': 0\.1\}\) cannot be used with optimizer Prodigy: "
                                          r"Prodigy moves every param group by the same step"):
        from_dict({"optimizer": "Prodigy", "lr0": 1.0, "lr_mult": {"backbone": 0.1}})
    with pytest.raises(ConfigError, match=r"lr_layer_decay \(0\.8\) cannot be used with optimizer Prodigy"):
        from_dict({"optimizer": "Prodigy", "lr0": 1.0, "lr_layer_decay": 0.8})
    with pytest.warns(DetuneWarning, match=r"lr0=0\.01 makes every step 100x smaller: set lr0: 1\.0"):
        from_dict({"optimizer": "Prodigy"})


@pytest.mark.slow
def test_prodigy_trains_with_lr0_1_and_detune_schedule_as_multiplier(tiny: dict) -> None:
    from prodigyopt import Prodigy
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    import detune

    steps: list[dict] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: steps.append(
        {"type": type(opt), "lr": [g["lr"] for g in opt.param_groups], "d_denom": opt.param_groups[0].get("d_denom"),
         "decay": [g["weight_decay"] for g in opt.param_groups], "safeguard": opt.param_groups[0]["safeguard_warmup"]}))
    try:
        result = detune.train(**_fast(tiny, optimizer="Prodigy", lr0=1.0, epochs=2, warmup_epochs=0.5,
                                      scheduler="linear", lrf=0.1, weight_decay=0.001))
    finally:
        handle.remove()
    assert result.status == "completed", result.reason
    assert {s["type"] for s in steps} == {Prodigy} and len(steps) == 8
    assert steps[0]["decay"] == [0.001, 0.0, 0.0] and steps[0]["safeguard"]
    weights = [s["lr"][0] for s in steps]
    assert weights == pytest.approx([r["lr/pg0"] for r in result.steps])  # detune's warmup and schedule
    assert all(len(set(s["lr"])) == 1 for s in steps)  # one lr for every group (Prodigy refuses others)
    assert weights[0] == 0.0 and max(weights) <= 1.0 and weights[-1] < weights[2]
    assert steps[-1]["d_denom"] > 0  # Prodigy's step-size estimate runs (on this tiny data d stays at d0)
    assert all(math.isfinite(result.history[-1][k]) for k in ("metrics/mAP50-95", "val/box_loss"))


@pytest.mark.slow
def test_schedule_free_resumes_from_a_mid_run_checkpoint(tiny: dict, tmp_path) -> None:
    """What a study trial (and PBT's exploit) does: keep last.pt at an epoch end, continue from it later. The
    checkpoint holds the eval weights x and the optimizer in eval mode; the resumed run goes back to y, keeps
    counting steps and trains on."""
    import shutil

    import schedulefree
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from detune.training import run

    kept = tmp_path / "kept"

    class KeepCheckpoint:
        def on_epoch(self, record: dict, weights_dir) -> None:
            shutil.copytree(weights_dir, kept, dirs_exist_ok=True)

    settings = _fast(tiny, optimizer="SGDScheduleFree", lr0=0.1, warmup_epochs=0.0)
    first = run(from_dict({**settings, "epochs": 1}), observers=[KeepCheckpoint()])
    assert first.status == "completed", first.reason
    saved = torch.load(kept / "last.pt", weights_only=False)["optimizer"]
    assert saved["param_groups"][0]["train_mode"] is False and saved["param_groups"][0]["k"] == 4
    steps: list[tuple] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: steps.append(
        (type(opt), opt.param_groups[0]["k"], opt.param_groups[0]["train_mode"])))
    try:
        resumed = run(from_dict({**settings, "epochs": 2, "name": "resumed"}), resume_from=kept / "last.pt")
    finally:
        handle.remove()
    assert resumed.status == "completed", resumed.reason
    assert steps == [(schedulefree.SGDScheduleFree, k, True) for k in range(4, 8)]
    assert [h["epoch"] for h in resumed.history] == [2] and math.isfinite(resumed.history[0]["metrics/mAP50-95"])
