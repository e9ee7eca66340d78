"""The default study's search space (detune.prior): built from a train config, applied by apply_params."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from detune.config import MAX_LR, from_dict
from detune.errors import ConfigError
from detune.prior import default_space
from detune.search_space import apply_params, baseline_point, parse_search_space
from detune.study import load_study


def _train(**kw: object) -> object:
    return from_dict({"epochs": 30, **kw})


def _trial(train: object, params: dict[str, object]) -> object:
    return from_dict(apply_params(train.to_dict(), params))


def test_the_prior_searches_each_knob_of_the_issue_on_its_own_scale() -> None:
    dims = default_space(_train())
    assert set(dims) == {"optimizer", "lr0_scale", "lrf", "one_minus_momentum", "warmup_epochs", "scheduler"}
    assert (dims["lr0_scale"].kind, dims["lr0_scale"].args) == ("loguniform", (0.1, 10.0))
    assert (dims["lrf"].kind, dims["lrf"].args) == ("loguniform", (0.01, 1.0))
    assert dims["one_minus_momentum"].kind == "loguniform"
    assert dims["warmup_epochs"].kind == "uniform" and dims["warmup_epochs"].args == (0.0, 5.0)
    assert dims["optimizer"].args == ("SGD", "AdamW")
    assert dims["scheduler"].kind == "choice" and {"linear", "cosine"} <= set(dims["scheduler"].args)


def test_warmup_range_scales_with_the_epochs_and_keeps_the_configs_own_value() -> None:
    assert default_space(_train(epochs=30))["warmup_epochs"].args == (0.0, 5.0)
    assert default_space(_train(epochs=9, warmup_epochs=0.0))["warmup_epochs"].args == (0.0, 3.0)
    # 6 epochs: epochs/3 = 2, but Ultralytics' warmup 3.0 is the baseline and must stay inside the space
    assert default_space(_train(epochs=6))["warmup_epochs"].args == (0.0, 3.0)
    assert default_space(_train(epochs=6, warmup_epochs=1.0))["warmup_epochs"].args == (0.0, 2.0)


@pytest.mark.parametrize(("optimizer", "lr0"), [("SGD", 0.01), ("AdamW", 0.001), ("SGD", 0.02)])
def test_the_baseline_is_inside_the_prior_and_reproduces_the_config(optimizer: str, lr0: float) -> None:
    train = _train(optimizer=optimizer, lr0=lr0)
    dims = default_space(train)
    point = baseline_point(dims, train)
    assert point is not None and point["lr0_scale"] == 1.0 and point["optimizer"] == optimizer
    again = _trial(train, point)
    assert again.lr0 == pytest.approx(lr0) and again.momentum == pytest.approx(train.momentum, abs=1e-12)
    assert (again.optimizer, again.lrf, again.schedule_name) == (optimizer, train.lrf, train.schedule_name)


def test_lr0_follows_the_optimizer_family_ultralytics_defaults_apart() -> None:
    train = _train(optimizer="SGD", lr0=0.01)
    assert _trial(train, {"optimizer": "AdamW", "lr0_scale": 1.0}).lr0 == pytest.approx(0.001)
    assert _trial(train, {"optimizer": "SGD", "lr0_scale": 3.0}).lr0 == pytest.approx(0.03)
    assert _trial(train, {"optimizer": "AdamW", "lr0_scale": 10.0}).lr0 == pytest.approx(0.01)
    adamw = _train(optimizer="AdamW", lr0=0.002)
    assert _trial(adamw, {"optimizer": "SGD", "lr0_scale": 0.5}).lr0 == pytest.approx(0.01)


def test_lr0_is_centred_on_the_lr_finders_suggestion_when_given() -> None:
    train = _train(lr0=0.01)
    dims = default_space(train, lr_suggestion=0.03)
    # the centre lives in the train config the trials start from: the caller sets lr0 to the suggestion
    centred = train.replace(lr0=0.03)
    assert _trial(centred, {"optimizer": "SGD", "lr0_scale": dims["lr0_scale"].args[0]}).lr0 == pytest.approx(0.003)
    assert _trial(centred, {"optimizer": "SGD", "lr0_scale": dims["lr0_scale"].args[1]}).lr0 == pytest.approx(0.3)


def test_the_lr0_range_is_clipped_to_the_configs_lr0_range() -> None:
    dims = default_space(_train(lr0=MAX_LR / 2))
    low, high = dims["lr0_scale"].args
    assert low == 0.1 and high == pytest.approx(2.0)
    assert _trial(_train(lr0=MAX_LR / 2), {"optimizer": "SGD", "lr0_scale": high}).lr0 <= MAX_LR


def test_momentum_is_sampled_on_a_log_scale_of_one_minus_momentum() -> None:
    dims = default_space(_train())
    low, high = dims["one_minus_momentum"].args
    assert math.isclose(1 - high, 0.7) and math.isclose(1 - low, 0.98)
    assert _trial(_train(), {"one_minus_momentum": 0.1}).momentum == pytest.approx(0.9)


def test_the_prior_round_trips_through_yaml_and_every_edge_is_a_valid_config() -> None:
    train = _train(epochs=6)
    dims = default_space(train)
    assert parse_search_space({k: d.to_yaml() for k, d in dims.items()}, train) == dims


def test_a_study_without_search_space_or_with_lr0_auto_gets_the_prior(tmp_path: object) -> None:
    base = {"train": {"epochs": 12, "data": "shapes"}, "output_dir": str(tmp_path)}
    plain = load_study(base)
    assert plain.search_space == default_space(plain.train)
    auto = load_study({**base, "search_space": {"lr0": "auto"}})
    assert set(auto.search_space) == set(plain.search_space) and auto.train.lr0 == "auto"
    with pytest.raises(ConfigError, match="search_space.lr0"):
        load_study({**base, "search_space": {"lr0": "automatic"}})


def test_pbt_cannot_switch_optimizers_so_the_prior_is_refused_under_it(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="trial_scheduler: pbt cannot search optimizer"):
        load_study({"train": {"epochs": 12}, "trial_scheduler": "pbt", "output_dir": str(tmp_path)})


def test_a_user_space_may_name_the_derived_keys() -> None:
    train = _train()
    dims = parse_search_space({"one_minus_momentum": {"loguniform": [0.01, 0.2]}}, train)
    assert dims["one_minus_momentum"].args == (0.01, 0.2)
    with pytest.raises(ConfigError, match="one_minus_momentum"):
        parse_search_space({"one_minus_momentum": {"uniform": [0.5, 1.5]}}, train)


def test_importing_the_prior_loads_no_heavy_dependency() -> None:
    code = ("import sys, detune.prior, detune.rungs, detune.confirm; "
            "print(sorted(m for m in ('torch', 'ultralytics', 'ray', 'optuna', 'mlflow', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_resumed_prior_study_reuses_its_saved_lr0_centre(tmp_path: object) -> None:
    from detune.tuning import _centre_prior

    study = load_study({"train": {"epochs": 12}, "search_space": {"lr0": "auto"}, "output_dir": str(tmp_path)})
    centred = _centre_prior(study, {"lr0_centre": 0.02}, None, None)
    assert centred.train.lr0 == 0.02 and centred.search_space == study.search_space
    plain = load_study({"train": {"epochs": 12, "lr0": 0.03}, "output_dir": str(tmp_path)})
    assert _centre_prior(plain, {"lr0_centre": 0.02}, None, None) is plain  # a number is the centre itself


def test_the_lr_finder_centres_the_prior_of_a_lr0_auto_study(tmp_path: object, shapes_yaml: object) -> None:
    from detune import _fake
    from detune.config import DetuneWarning
    from detune.tuning import _centre_prior

    train = {"data": str(shapes_yaml), "epochs": 4, "imgsz": 32, "batch": 8, "nbs": 8, "device": "cpu",
             "warmup_epochs": 0.0}
    study = load_study({"train": train, "search_space": {"lr0": "auto"}, "output_dir": str(tmp_path)})
    fake = _fake.Fake()  # the range test's loss is the u-curve: falls from ~3 at 1e-5 to ~0.1 near 0.1
    centred = _centre_prior(study, {}, None, None, fit=fake)
    assert len(fake.configs) == 1  # one range test
    assert 1e-4 < centred.train.lr0 < 1e-2  # inside the descent, below its bottom
    trial = _trial(centred.train, {"optimizer": "AdamW", "lr0_scale": 2.0})
    assert trial.lr0 == pytest.approx(centred.train.lr0 * 0.1 * 2.0)
    resumed = _fake.Fake()  # a resumed study reuses the centre it saved: no second range test
    assert _centre_prior(study, {"lr0_centre": 0.02}, None, None, fit=resumed).train.lr0 == 0.02
    assert resumed.configs == []
    flat = _fake.Fake(curve=lambda lr: 1.0)  # no signal: Ultralytics' default for the optimizer, with a warning
    with pytest.warns(DetuneWarning, match="gave no valley suggestion"):
        assert _centre_prior(study, {}, None, None, fit=flat).train.lr0 == 0.01


def test_a_schedule_free_config_searches_no_schedule_and_its_trials_are_valid() -> None:
    """Its trials run constant (the optimizer's own), the SGD and AdamW trials Ultralytics' linear."""
    train = _train(optimizer="SGDScheduleFree", lr0=0.1)
    dims = default_space(train)
    assert "scheduler" not in dims and dims["optimizer"].args == ("SGD", "AdamW", "SGDScheduleFree")
    own = _trial(train, {"optimizer": "SGDScheduleFree", "lr0_scale": 2.0, "lrf": 0.1, "warmup_epochs": 1.0})
    assert own.schedule_name == "constant" and own.lr0 == pytest.approx(0.2)
    other = _trial(train, {"optimizer": "SGD", "lr0_scale": 1.0})
    assert other.schedule_name == "linear" and other.lr0 == pytest.approx(0.01)  # SGD's centre, 10x below
