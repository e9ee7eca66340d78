"""Config validation: every bad value fails before any compute, naming field, value and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from detune.config import DetuneWarning, TrainConfig, from_dict, load_config, parse_device, parse_overrides
from detune.errors import ConfigError


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"lr0": -0.01}, r"lr0 \(-0.01\) must be > 0"),
        ({"lr0": 0}, r"lr0 \(0\) must be > 0"),
        ({"lrf": 0.0}, r"lrf \(0.0\) must be in \(0, 1\]"),
        ({"lrf": 1.5}, r"lrf \(1.5\)"),
        ({"momentum": 1.0}, r"momentum \(1.0\) must be in \[0, 1\)"),
        ({"weight_decay": -1e-4}, r"weight_decay"),
        ({"warmup_epochs": 5, "epochs": 5}, r"warmup_epochs \(5\) must be >= 0 and below epochs \(5\)"),
        ({"epochs": 0}, r"epochs \(0\) must be >= 1"),
        ({"batch": -1}, r"AutoBatch is not supported"),
        ({"imgsz": 16}, r"imgsz \(16\) must be >= 32"),
        ({"optimizer": "LBFGS"}, r"optimizer \('LBFGS'\) is not one of SGD"),
        ({"scheduler": "cosine_warm"}, r"cosine_warm"),
        ({"scheduler_interval": "batch"}, r"scheduler_interval \('batch'\)"),
        ({"lr_scaling": "cubic"}, r"lr_scaling"),
        ({"lr_mult": {"body": 0.1}}, r"lr_mult.body"),
        ({"lr_mult": {"backbone": 0}}, r"lr_mult.backbone \(0\) must be a number > 0"),
        ({"divergence_factor": 0.5}, r"divergence_factor"),
        ({"device": "0,1"}, r"one device per run"),
        ({"device": "gpu"}, r"device \('gpu'\) is not a device"),
        ({"model": "missing-weights.pt"}, r"never downloads weights"),
        ({"lr0": "fast"}, r"lr0 \('fast'\) must be a number"),
        ({"epochs": 2.5}, r"epochs \(2.5\) must be an integer"),
    ],
)
def test_invalid_values_raise_config_error(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(changes)


def test_unknown_key_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting 'lr_0'.*did you mean.*lr0"):
        from_dict({"lr_0": 0.01})


def test_ultralytics_keys_pass_through_to_extra() -> None:
    cfg = from_dict({"mosaic": 0.0, "close_mosaic": 0, "lr0": 0.02})
    assert cfg.extra == {"mosaic": 0.0, "close_mosaic": 0}
    assert cfg.to_dict()["mosaic"] == 0.0 and cfg.lr0 == 0.02


def test_reserved_ultralytics_keys_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"'time' cannot be set through detune"):
        from_dict({"time": 1.0})


def test_defaults_use_explicit_sgd_and_auto_warns() -> None:
    assert TrainConfig().optimizer == "SGD"
    with pytest.warns(DetuneWarning, match="ignore lr0"):
        from_dict({"optimizer": "auto"})
    assert from_dict({"optimizer": "adamw"}).optimizer == "AdamW"


def test_schedule_defaults_follow_cos_lr() -> None:
    assert TrainConfig().schedule_name == "linear"
    assert TrainConfig(cos_lr=True).schedule_name == "cosine"


def test_lr_scaling_relative_to_nominal_batch() -> None:
    assert TrainConfig(batch=16, nbs=16, lr0=0.04, lr_scaling="linear").effective_lr0 == pytest.approx(0.01)
    assert TrainConfig(batch=16, nbs=16, lr0=0.04, lr_scaling="sqrt").effective_lr0 == pytest.approx(0.02)
    assert TrainConfig(batch=16, nbs=64, lr0=0.04, lr_scaling="linear").effective_lr0 == pytest.approx(0.04)


def test_yaml_config_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("lr0: 0.02\nepochs: 3\nscheduler: step\nscheduler_params: {step_size: 1, gamma: 0.5}\n")
    cfg = load_config(path, epochs=4)
    assert (cfg.lr0, cfg.epochs, cfg.scheduler) == (0.02, 4, "step")
    assert from_dict(cfg.to_dict()) == cfg  # round-trips


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr0: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listy)


def test_parse_overrides_types_values() -> None:
    assert parse_overrides(["lr0=1e-3", "cos_lr=true", "scheduler=onecycle", "scheduler_params.pct_start=0.2"]) == {
        "lr0": 1e-3, "cos_lr": True, "scheduler": "onecycle", "scheduler_params": {"pct_start": 0.2}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr0"])


def test_parse_device() -> None:
    assert [parse_device(d) for d in ("cpu", "auto", "0", "cuda:1", 0)] == ["cpu", "auto", "0", "1", "0"]


def test_import_detune_is_light_and_side_effect_free(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = (
        "import os, sys, time; before = dict(os.environ); t = time.perf_counter(); import detune; "
        "dt = time.perf_counter() - t; heavy = [m for m in ('torch', 'ultralytics', 'ray', 'mlflow', 'matplotlib') "
        "if m in sys.modules]; assert not heavy, heavy; assert dict(os.environ) == before; print(dt)"
    )
    env = {**os.environ, "HOME": str(tmp_path), "DETUNE_HOME": str(tmp_path / "dh")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 1.0
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_detune_schedules_is_reachable_after_import_detune(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = ("import sys, detune; assert 'detune.schedules' not in sys.modules; "  # loaded on first use only
            "print('cosine' in detune.schedules.list_schedules(), 'schedules' in dir(detune))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "HOME": str(tmp_path), "DETUNE_HOME": str(tmp_path / "dh")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"], out.stdout


def test_baseline_point_is_the_base_configs_own_values_when_the_space_holds_them() -> None:
    from detune.search_space import baseline_point, parse_search_space

    base = from_dict({"model": "yolo11n.yaml", "data": "d.yaml"})
    space = parse_search_space({"lr0": {"loguniform": [1e-4, 1e-1]}, "lrf": {"uniform": [0.01, 1.0]},
                                "momentum": {"uniform": [0.6, 0.98]}, "scheduler": {"choice": ["linear", "cosine"]}},
                               base)
    assert baseline_point(space, base) == {"lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "scheduler": "linear"}
    step = from_dict({"model": "yolo11n.yaml", "data": "d.yaml", "scheduler": "step",
                      "scheduler_params": {"step_size": 2, "gamma": 0.5}})
    nested = parse_search_space({"scheduler_params": {"gamma": {"uniform": [0.1, 0.9]}}}, step)
    assert baseline_point(nested, step) == {"scheduler_params.gamma": 0.5}
    # one value outside its range (or not set at all): no baseline point, never a clipped one
    assert baseline_point(parse_search_space({"lr0": {"loguniform": [0.02, 0.1]}}, base), base) is None
    assert baseline_point(parse_search_space({"scheduler_params": {"gamma": {"uniform": [0.1, 0.4]}}}, step),
                          step) is None
    auto = from_dict({"model": "yolo11n.yaml", "data": "d.yaml", "lr0": "auto"})
    assert baseline_point(parse_search_space({"lrf": {"uniform": [0.01, 1.0]}}, auto), auto) == {"lrf": 0.01}


# ---- issue 13, section 6: an unset warmup never trips a short training ------------------------------------
def test_unset_warmup_is_clamped_like_ultralytics_and_explicit_warmup_still_errors() -> None:
    cfg = from_dict({"epochs": 2})  # warmup_epochs never set: Ultralytics' 3.0 would be min(3.0, epochs - 1)
    assert cfg.warmup_epochs == 1.0 and cfg.warmup_clamped == {"from": 3.0, "to": 1.0}
    assert from_dict({"epochs": 1}).warmup_epochs == 0.0
    assert from_dict({"epochs": 10}).warmup_epochs == 3.0 and from_dict({"epochs": 10}).warmup_clamped is None
    with pytest.raises(ConfigError, match=r"warmup_epochs \(3.0\) must be >= 0 and below epochs \(2\)"):
        from_dict({"epochs": 2, "warmup_epochs": 3.0})
    explicit = from_dict({"epochs": 5, "warmup_epochs": 2.0})
    assert explicit.warmup_clamped is None and explicit.to_dict()["warmup_epochs"] == 2.0
    with pytest.raises(ConfigError, match=r"warmup_epochs \(2.0\) must be >= 0 and below epochs \(2\)"):
        explicit.replace(epochs=2)  # an explicit value stays explicit


def test_unset_warmup_survives_round_trips_and_epoch_changes() -> None:
    import json

    import yaml

    from detune.search_space import apply_params, parse_search_space
    from detune.study import load_study

    short = from_dict({"epochs": 2})
    assert short.replace(epochs=1).warmup_epochs == 0.0  # the clamped 1.0 never became an explicit value
    assert short.replace(epochs=50).warmup_epochs == 3.0
    assert TrainConfig().replace(epochs=1).warmup_epochs == 0.0
    for text in (json.dumps(short.to_dict()), yaml.safe_dump(short.to_dict())):  # study.json, best.yaml
        assert from_dict({**yaml.safe_load(text), "epochs": 1}).warmup_epochs == 0.0
    assert from_dict(short.to_dict()) == short
    base = TrainConfig(data="d.yaml")
    assert from_dict(apply_params(base.to_dict(), {"epochs": 1})).warmup_epochs == 0.0  # a trial's params
    parse_search_space({"epochs": {"choice": [1, 2, 8]}}, base)  # bounds checked through to_dict
    study = load_study({"train": {"data": "d.yaml"}, "search_space": {"lr0": {"loguniform": [1e-3, 1e-1]}}},
                       **{"train.epochs": 1})
    assert study.train.warmup_epochs == 0.0 and from_dict({**study.train.to_dict(), "epochs": 2}).warmup_epochs == 1


def test_baseline_point_keeps_the_effective_unset_warmup() -> None:
    from detune.search_space import baseline_point, parse_search_space

    base = from_dict({"data": "d.yaml", "epochs": 50})
    space = parse_search_space({"warmup_epochs": {"uniform": [0.0, 3.0]}}, base)
    assert baseline_point(space, base) == {"warmup_epochs": 3.0}


def test_unset_warmup_clamp_is_warned_and_reported_in_result_info(tmp_path: Path, shapes_yaml: Path) -> None:
    from detune import _fake
    from detune.training import run

    cfg = from_dict({"data": str(shapes_yaml), "epochs": 2, "imgsz": 64, "batch": 8, "nbs": 8, "device": "cpu",
                     "plots": False, "project": str(tmp_path), "name": "w"})
    with pytest.warns(DetuneWarning, match=r"warmup_epochs.*3.*1.*epochs \(2\)"):
        result = run(cfg, fit=_fake.fit)
    assert result.info["warmup_clamped"] == {"from": 3.0, "to": 1.0}
    assert result.config["warmup_epochs"] == 1.0  # the resolved config says what ran
    quiet = from_dict({**cfg.to_dict(), "warmup_epochs": 1.0, "name": "x"})
    import warnings as _w

    with _w.catch_warnings(record=True) as seen:
        _w.simplefilter("always", DetuneWarning)
        assert "warmup_clamped" not in run(quiet, fit=_fake.fit).info
    assert not [w for w in seen if "warmup_epochs" in str(w.message)]  # an explicit warmup: no note


# ---- issue 13, section 7: values --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"lr0": 1e308}, r"lr0 \(1e\+308\) must be <= 10000"),
        ({"warmup_bias_lr": 1e300}, r"warmup_bias_lr \(1e\+300\) must be <= 10000"),
        ({"weight_decay": 1e308}, r"weight_decay \(1e\+308\) must be in \[0, 1\]"),
        ({"divergence_factor": 1e308}, r"divergence_factor \(1e\+308\) must be <= 1000000"),
        ({"lr_mult": {"head": 1e300}}, r"lr_mult.head \(1e\+300\) must be a number in \(0, 100\]"),
        ({"epochs": 10**9}, r"epochs \(1000000000\) must be <= 100000"),
        ({"batch": 10**12}, r"batch \(1000000000000\) must be <= 65536"),
        ({"nbs": 10**12}, r"nbs \(1000000000000\) must be <= 65536"),
        ({"imgsz": 10**9}, r"imgsz \(1000000000\) must be <= 16384"),
        ({"seed": 2**40}, r"seed \(1099511627776\) must be in \[0, 4294967295\]"),
        ({"seed": -1}, r"seed \(-1\) must be in \[0, 4294967295\]"),
        ({"threads": 10**9}, r"threads \(1000000000\) must be"),
        ({"scheduler": "onecycle", "scheduler_params": {"max_lr": 1e300}}, r"max_lr \(1e\+300\)"),
        ({"scheduler": "cyclic", "scheduler_params": {"max_lr": 1e300}}, r"max_lr \(1e\+300\)"),
        ({"scheduler": "onecycle", "scheduler_params": {"max_lr": 0.001}},
         r"scheduler_params.max_lr \(0.001\) must be a number >= the base lr \(0.01\)"),
    ],
)
def test_out_of_range_values_name_field_value_range_and_fix(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        from_dict(changes)
    assert "; " in str(info.value)  # the rule, then the fix


def test_value_bounds_keep_what_real_uses_need() -> None:
    from_dict({"lr0": 1e3, "epochs": 100_000, "batch": 1024, "imgsz": 8192, "seed": 2**32 - 1, "nbs": 1024})
    from_dict({"scheduler": "onecycle", "scheduler_params": {"max_lr": 0.01}})  # == lr0: the base peak
    from_dict({"scheduler": "onecycle", "scheduler_params": {"max_lr": 0.1}})
    from_dict({"lr0": "auto", "scheduler": "onecycle", "scheduler_params": {"max_lr": 0.1}})


def test_gpu_device_without_a_gpu_fails_before_any_compute(tmp_path: Path, shapes_yaml: Path) -> None:
    import torch

    from detune.training import train

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU")
    for device in ("cuda:0", "7", "0"):
        with pytest.raises(ConfigError, match=rf"device \({device!r}\).*sees 0 GPUs.*device=cpu"):
            train(data=str(shapes_yaml), epochs=1, device=device, project=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()  # nothing written, nothing trained
    from detune.lr_finder import lr_find

    with pytest.raises(ConfigError, match=r"device \('cuda:0'\).*sees 0 GPUs.*device=cpu"):
        lr_find(data=str(shapes_yaml), imgsz=32, batch=8, device="cuda:0", project=str(tmp_path / "lr"))


@pytest.mark.slow
def test_real_two_epoch_training_with_the_default_warmup(tiny: dict) -> None:
    import detune

    settings = {k: v for k, v in tiny.items() if k != "warmup_epochs"}  # never set, as a newcomer writes it
    with pytest.warns(DetuneWarning, match=r"warmup_epochs is not set"):
        result = detune.train(**settings)
    assert result.status == "completed", result.reason
    assert result.info["warmup_clamped"] == {"from": 3.0, "to": 1.0}
    assert result.info["warmup_steps"] == round(1.0 * result.info["steps_per_epoch"])  # min(3, epochs - 1) epochs
    assert result.config["warmup_epochs"] == 1.0


@pytest.mark.slow
def test_study_with_the_default_warmup_and_short_epochs_runs_in_ray(tmp_path: Path, shapes_yaml: Path) -> None:
    from detune import _fake
    from detune.tuning import tune

    study = {"name": "w", "output_dir": str(tmp_path / "out"),
             "train": {"data": str(shapes_yaml), "epochs": 20, "device": "cpu", "imgsz": 32, "batch": 8, "nbs": 8},
             "search_space": {"lr0": {"choice": [0.01, 0.02]}}, "search": "random", "trial_scheduler": "fifo",
             "num_samples": 2, "max_concurrent_trials": 1, "tracking": False, "resources_per_trial": {"cpu": 1}}
    result = tune(study, fit=_fake.fit, **{"train.epochs": 1})  # the payload carries warmup_epochs: None
    assert [t["status"] for t in result.trials] == ["completed", "completed"]
    assert result.best_config["epochs"] == 1 and result.best_config["warmup_epochs"] is None


def test_default_lr0_per_optimizer() -> None:
    from detune.config import OPTIMIZERS, default_lr0

    expected = {"SGD": 0.01, "MuSGD": 0.01, "auto": 0.01, "Adagrad": 0.01, "Adadelta": 1.0,
                "SGDScheduleFree": 0.1, "Prodigy": 1.0}
    assert {o: default_lr0(o) for o in OPTIMIZERS} == {o: expected.get(o, 0.001) for o in OPTIMIZERS}


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "x", True])
def test_lr_layer_decay_must_be_in_0_1(bad: object) -> None:
    with pytest.raises(ConfigError, match=rf"lr_layer_decay \({bad!r}\) must be a number in \(0, 1\] or null.*0\.8"):
        from_dict({"lr_layer_decay": bad})
    assert from_dict({"lr_layer_decay": 0.8}).lr_layer_decay == 0.8


def test_the_schedule_plot_draws_lr_mult_parts_and_decayed_layers() -> None:
    from detune.schedules import plot_groups

    groups = plot_groups({"backbone": 0.1}, 0.5)
    assert [g[2] for g in groups] == [1.0, 1.0, 1.0, 0.1, 0.5**5, 0.5**10, 0.5**20]
    assert groups[4][0] == "weights 5 layers below the head (x0.0312)" and plot_groups() == plot_groups({}, 1.0)
