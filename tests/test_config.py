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
