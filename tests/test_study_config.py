"""Study configs checked before anything runs: shipped configs, dotted overrides into every mapping, types,
searcher / scheduler params against their signatures, folders, the output_dir lock, --resume of nothing and
the shell-quoted resume command. Fast: Ray is imported for its classes but never started."""

from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from detune.cli import _parse, app
from detune.errors import ConfigError, TuneError
from detune.study import load_study
from detune.study_files import clear_unstarted, open_study, study_lock
from detune.tuning import check_study, tune

REPO = Path(__file__).resolve().parents[1]
STUDY_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name != "train.yaml")
runner = CliRunner()


def _study(tmp_path: Path, data: Path, **changes: Any) -> dict[str, Any]:
    return {"name": "s", "output_dir": str(tmp_path / "out"),
            "train": {"data": str(data), "epochs": 2, "imgsz": 32, "device": "cpu", "warmup_epochs": 0.0},
            "search_space": {"lr0": {"loguniform": [1.0e-4, 1.0e-1]}}, "search": "random",
            "trial_scheduler": "fifo", "num_samples": 1, "resources_per_trial": {"cpu": 1},
            "tracking": f"sqlite:///{tmp_path / 'mlflow.db'}", **changes}


def _ray_running() -> bool:
    import ray

    return bool(ray.is_initialized())


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "mlflow.db").exists()  # no parent run, not even a store
    assert not _ray_running()


# ---- shipped configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", STUDY_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_study_passes_every_check_made_before_ray(config: Path) -> None:
    check_study(load_study(config))


@pytest.mark.parametrize("search", ["optuna", "hyperopt", "bohb"])
def test_a_grid_under_a_searcher_that_cannot_take_it_is_refused_with_the_fix(tmp_path: Path, shapes_yaml: Path,
                                                                            search: str) -> None:
    space = {"lr0": {"loguniform": [1.0e-4, 1.0e-1]}, "momentum": {"grid": [0.9, 0.937]}}
    with pytest.raises(ConfigError, match=rf"search_space.momentum is a grid, which search: {search} cannot take"
                                          r".*use search_space.momentum: \{choice: \[0.9, 0.937\]\}"):
        load_study(_study(tmp_path, shapes_yaml, search=search, search_space=space))


def test_lr_search_with_a_momentum_grid_under_optuna_fails_before_ray(tmp_path: Path) -> None:
    """The shape of the broken shipped config: refused by tune() before Ray or any folder."""
    raw = yaml.safe_load((REPO / "configs" / "lr_search.yaml").read_text())
    raw["search_space"] = {"lr0": {"loguniform": [1.0e-4, 1.0e-1]}, "momentum": {"grid": [0.9, 0.937]}}
    raw.update(output_dir=str(tmp_path / "out"), tracking=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ConfigError, match="use search_space.momentum: {choice"):
        tune(raw)
    _nothing_written(tmp_path)


@pytest.mark.parametrize(("changes", "search", "params", "scheduler", "confirm"), [
    ({}, "optuna", {"sampler": "tpe"}, "detection", {"top_k": 2, "seeds": 2}),  # the default study
    ({"num_samples": 6}, "optuna", {"sampler": "tpe"}, "detection", None),  # a few trials: no confirmation
    ({"search_space": {"lr0": {"grid": [0.01, 0.02]}}, "num_samples": 4}, "random", {}, "detection",
     {"top_k": 2, "seeds": 2}),  # a grid: random enumerates it; 2 x 4 = 8 trials
    ({"trial_scheduler": "pbt", "search_space": {"lr0": {"loguniform": [1e-3, 1e-1]}}}, "random", {}, "pbt",
     None),  # PBT mutates trials itself
    ({"time_budget_s": 600}, "optuna", {"sampler": "tpe"}, "detection", None),  # retrainings would overrun it
    ({"search": "optuna"}, "optuna", {}, "detection", {"top_k": 2, "seeds": 2}),  # explicit: Optuna's TPE
    ({"search_params": {"n_startup_trials": 4}}, "optuna", {"n_startup_trials": 4}, "detection",
     {"top_k": 2, "seeds": 2}),  # TPE settings
    ({"confirm": False, "trial_scheduler": "asha"}, "optuna", {"sampler": "tpe"}, "asha", None),
])
def test_the_default_study_design_and_when_it_steps_aside(tmp_path: Path, changes: dict, search: str,
                                                            params: dict, scheduler: str, confirm: Any) -> None:
    study = load_study({"train": {"epochs": 4}, "output_dir": str(tmp_path), **changes})
    assert (study.search, study.search_params, study.trial_scheduler) == (search, params, scheduler)
    assert (study.confirm.to_dict() if study.confirm else None) == confirm
    assert load_study(study.to_dict()).confirm == study.confirm  # round trip


# ---- dotted overrides reach into every mapping ----------------------------------------------------------------
def _cli_study(path: Path, *pairs: str) -> Any:
    """What ``detune tune <path> <pairs>`` loads."""
    return load_study(path, **_parse(list(pairs), verbose=False))


WIDE = """\
# a hand-written wide space (configs/lr_search.yaml before it took the default prior)
name: wide
train:
  model: yolo11n.yaml
  data: datasets/coco128.yaml
  epochs: 50
  batch: 16
  nbs: 64
  imgsz: 640
  optimizer: SGD
  workers: 4
search_space:
  lr0: {loguniform: [1.0e-4, 1.0e-1]}
  lrf: {loguniform: [1.0e-3, 1.0]}
  warmup_epochs: {uniform: [0.0, 3.0]}
  momentum: {choice: [0.9, 0.937]}
  scheduler: {choice: [linear, cosine, onecycle, cosine_restarts]}
  scheduler_params:
    onecycle: {pct_start: {uniform: [0.1, 0.4]}}
    cosine_restarts: {period: {choice: [5, 10, 25]}}
search: optuna
trial_scheduler: asha
trial_scheduler_params: {grace_period: 5, reduction_factor: 3}
num_samples: 16
resources_per_trial: {cpu: 4, gpu: 0.5}   # two trials share each GPU
metric: metrics/mAP50-95
mode: max
"""


@pytest.fixture
def wide(tmp_path: Path) -> Path:
    path = tmp_path / "wide.yaml"
    path.write_text(WIDE)
    return path


def test_override_of_one_search_space_entry_keeps_the_others(wide: Path) -> None:
    study = _cli_study(wide, "search_space.momentum={choice: [0.9, 0.937]}")
    assert list(study.search_space) == ["lr0", "lrf", "warmup_epochs", "momentum", "scheduler",
                                        "scheduler_params.onecycle.pct_start",
                                        "scheduler_params.cosine_restarts.period"]
    assert study.search_space["momentum"].kind == "choice"
    assert study.search_space["momentum"].args == (0.9, 0.937)
    assert study.search_space["lr0"].args == (1.0e-4, 1.0e-1)
    # the library takes the same dotted keys
    same = load_study(wide, **{"search_space.momentum": {"choice": [0.9, 0.937]}})
    assert same.search_space == study.search_space


def test_override_inside_the_search_spaces_scheduler_params_keeps_its_siblings(wide: Path) -> None:
    study = _cli_study(wide, "search_space.scheduler_params.onecycle.pct_start={uniform: [0.2, 0.3]}")
    assert study.search_space["scheduler_params.onecycle.pct_start"].args == (0.2, 0.3)
    assert study.search_space["scheduler_params.cosine_restarts.period"].args == (5, 10, 25)
    assert "lr0" in study.search_space and "scheduler" in study.search_space


def test_override_of_resources_per_trial_keeps_the_other_resource(wide: Path) -> None:
    study = _cli_study(wide, "resources_per_trial.cpu=2")
    assert study.resources_per_trial == {"cpu": 2, "gpu": 0.5}


def test_override_of_trial_scheduler_params_keeps_the_others(wide: Path) -> None:
    study = _cli_study(wide, "trial_scheduler_params.grace_period=2")
    assert study.trial_scheduler_params == {"grace_period": 2, "reduction_factor": 3}


def test_override_of_search_params_keeps_the_others(tmp_path: Path, shapes_yaml: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(tmp_path, shapes_yaml, search="optuna", search_params={
        "sampler": {"n_startup_trials": 4, "multivariate": True}, "points_to_evaluate": [{"lr0": 0.01}]})))
    study = _cli_study(path, "search_params.sampler.n_startup_trials=2")
    assert study.search_params == {"sampler": {"n_startup_trials": 2, "multivariate": True},
                                   "points_to_evaluate": [{"lr0": 0.01}]}
    check_study(study)


def test_override_of_the_tracking_mapping_keeps_the_others(tmp_path: Path, shapes_yaml: Path) -> None:
    path = tmp_path / "study.yaml"
    tracking = {"uri": f"sqlite:///{tmp_path / 'm.db'}", "experiment": "a", "tags": {"team": "cv"}}
    path.write_text(yaml.safe_dump(_study(tmp_path, shapes_yaml, tracking=tracking)))
    assert _cli_study(path, "tracking.experiment=b").tracking == {**tracking, "experiment": "b"}
    assert _cli_study(path, "tracking.tags.owner=me").tracking["tags"] == {"team": "cv", "owner": "me"}
    # a tracking URI becomes the mapping form and keeps its URI
    path.write_text(yaml.safe_dump(_study(tmp_path, shapes_yaml, tracking=tracking["uri"])))
    assert _cli_study(path, "tracking.experiment=b").tracking == {"uri": tracking["uri"], "experiment": "b"}


def test_override_of_a_train_key_keeps_the_base_config_even_from_a_train_file(tmp_path: Path,
                                                                               shapes_yaml: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text(yaml.safe_dump({"data": str(shapes_yaml), "epochs": 3,
                                                                "lr0": 0.02, "device": "cpu"}))
    path = tmp_path / "sub" / "study.yaml"
    path.write_text(yaml.safe_dump({**_study(tmp_path, shapes_yaml), "train": "base.yaml"}))
    study = _cli_study(path, "train.epochs=5")  # base.yaml is found next to the study, not in the cwd
    assert study.train.epochs == 5 and study.train.lr0 == 0.02


def test_dotted_override_into_a_scalar_names_the_key(tmp_path: Path, shapes_yaml: Path) -> None:
    with pytest.raises(ConfigError, match=r"num_samples \(1\) is not a mapping.*num_samples=\.\.\."):
        load_study(_study(tmp_path, shapes_yaml), **{"num_samples.x": 2})


# ---- types and params checked before Ray ---------------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("resources_per_trial", [1], r"resources_per_trial \(\[1\]\) must be a mapping of names to values"),
    ("resources_per_trial", "cpu", r"resources_per_trial \('cpu'\) must be a mapping"),
    ("search_params", [1, 2], r"search_params \(\[1, 2\]\) must be a mapping"),
    ("trial_scheduler_params", 3, r"trial_scheduler_params \(3\) must be a mapping"),
    ("output_dir", 5, r"output_dir \(5\) must be a folder path"),
    ("storage_path", ["a"], r"storage_path \(\['a'\]\) must be a folder path"),
    ("seed", "x", r"seed \('x'\) must be an integer"),
    ("metric", 3, r"metric \(3\) must be a metric name"),
])
def test_wrong_types_are_config_errors_naming_the_field(tmp_path: Path, shapes_yaml: Path, field: str,
                                                         value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tune(_study(tmp_path, shapes_yaml, **{field: value}))
    _nothing_written(tmp_path)


def test_wrong_type_from_the_cli_is_one_error_line(tmp_path: Path, shapes_yaml: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(tmp_path, shapes_yaml)))
    result = runner.invoke(app, ["tune", str(path), "resources_per_trial=[1]"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: resources_per_trial ([1]) must be a mapping"), result.stderr
    assert "unexpected" not in result.stderr


@pytest.mark.parametrize("changes, message", [
    ({"search_params": {"foo": 1}}, r"search_params.foo is not a parameter of BasicVariantGenerator "
                                    r"\(search: random\); valid: points_to_evaluate, constant_grid_search"),
    ({"search": "optuna", "search_params": {"foo": 1}}, r"search_params.foo is not a parameter of OptunaSearch"),
    ({"search": "optuna", "search_params": {"sampler": {"n_startup": 2}}},
     r"search_params.sampler.n_startup is not a parameter of TPESampler .*did you mean n_startup_trials\?"),
    ({"search": "optuna", "search_params": {"seed": 3}}, r"search_params.seed is set by detune from the study's "
                                                         r"seed; remove it"),
    ({"trial_scheduler": "asha", "trial_scheduler_params": {"grace": 1}},
     r"trial_scheduler_params.grace is not a parameter of AsyncHyperBandScheduler \(trial_scheduler: asha\); "
     r"did you mean grace_period\?"),
    ({"trial_scheduler": "asha", "trial_scheduler_params": {"max_t": 3}},
     r"trial_scheduler_params.max_t is set by detune from train.epochs"),
    ({"trial_scheduler": "asha", "trial_scheduler_params": {"grace_period": 9}},
     r"trial_scheduler_params \(\{'grace_period': 9\}\) are invalid .*grace_period must be <= max_t"),
    ({"trial_scheduler": "fifo", "trial_scheduler_params": {"x": 1}},
     r"trial_scheduler_params.x is not a parameter of FIFOScheduler \(trial_scheduler: fifo\); valid: none"),
    ({"trial_scheduler": "pbt", "trial_scheduler_params": {"perturbation": 1}},
     r"trial_scheduler_params.perturbation is not a parameter of PopulationBasedTraining.*perturbation_interval"),
])
def test_searcher_and_scheduler_params_are_checked_against_their_signatures_before_ray(
        tmp_path: Path, shapes_yaml: Path, changes: dict[str, Any], message: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match=message):
        tune(_study(tmp_path, shapes_yaml, **changes))
    assert time.monotonic() - started < 30
    _nothing_written(tmp_path)


# ---- folders ------------------------------------------------------------------------------------------------
def test_impossible_output_dir_is_a_tune_error_naming_the_path(tmp_path: Path, shapes_yaml: Path) -> None:
    with pytest.raises(TuneError, match=r"output_dir \(/etc/passwd/study\) cannot be created: /etc/passwd is a file"):
        tune(_study(tmp_path, shapes_yaml, output_dir="/etc/passwd/study"))
    assert not _ray_running() and not (tmp_path / "mlflow.db").exists()


def test_impossible_storage_path_fails_before_ray_and_before_any_folder(tmp_path: Path, shapes_yaml: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TuneError, match=rf"storage_path \({tmp_path}/afile/ray\) cannot be created: .*afile is a "
                                        "file, not a folder; choose a writable folder with storage_path="):
        tune(_study(tmp_path, shapes_yaml, storage_path=str(tmp_path / "afile" / "ray")))
    _nothing_written(tmp_path)


def test_read_only_output_dir_is_a_tune_error_naming_the_path(tmp_path: Path, shapes_yaml: Path) -> None:
    """/sys is mounted read-only (root may write anywhere else, so chmod proves nothing here)."""
    try:
        os.mkdir("/sys/detune-probe")
    except OSError:
        pass
    else:
        os.rmdir("/sys/detune-probe")
        pytest.skip("/sys is writable on this machine")
    with pytest.raises(TuneError, match=r"output_dir \(/sys/detune-study\) cannot be created: /sys is not writable"):
        tune(_study(tmp_path, shapes_yaml, output_dir="/sys/detune-study"))
    assert not _ray_running() and not (tmp_path / "mlflow.db").exists()


def test_cli_checks_output_dir_before_opening_its_log(tmp_path: Path, shapes_yaml: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(tmp_path, shapes_yaml)))
    result = runner.invoke(app, ["tune", str(path), "output_dir=/etc/passwd/study"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: output_dir (/etc/passwd/study) cannot be created: /etc/passwd is a file")
    assert "unexpected" not in result.stderr


# ---- --resume of nothing ------------------------------------------------------------------------------------
def test_resume_of_a_study_that_never_ran_fails_before_anything_exists(tmp_path: Path, shapes_yaml: Path) -> None:
    started = time.monotonic()
    with pytest.raises(TuneError, match=rf"nothing to resume in {tmp_path}/out/ray/s; run the study without "
                                        "--resume first"):
        tune(_study(tmp_path, shapes_yaml), resume=True)
    assert time.monotonic() - started < 30
    _nothing_written(tmp_path)


def test_cli_resume_of_a_study_that_never_ran_leaves_no_folder(tmp_path: Path, shapes_yaml: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(tmp_path, shapes_yaml)))
    result = runner.invoke(app, ["tune", str(path), "--resume"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: nothing to resume in {tmp_path}/out/ray/s"), result.stderr
    _nothing_written(tmp_path)  # not even detune.log


# ---- the lock on output_dir ---------------------------------------------------------------------------------
def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding the study's lock, as a running ``detune tune`` does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\nprint('locked', flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_study_on_a_locked_output_dir_fails_at_once_and_writes_nothing(tmp_path: Path,
                                                                                shapes_yaml: Path) -> None:
    study = load_study(_study(tmp_path, shapes_yaml))
    holder = _hold_lock(study.output_dir / ".detune.lock")
    try:
        started = time.monotonic()
        with pytest.raises(TuneError, match=rf"study 's' is already running in {tmp_path}/out \(pid "
                                            rf"{holder.pid}\); wait for it to end"):
            tune(study)
        assert time.monotonic() - started < 30
        assert sorted(p.name for p in study.output_dir.iterdir()) == [".detune.lock"]  # no study.json
        assert not (tmp_path / "mlflow.db").exists() and not _ray_running()
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL of the holder released its flock: the folder is free again
    with study_lock(study) as lock:
        assert lock.read_text() == str(os.getpid())


def test_cli_second_study_on_a_locked_output_dir_is_one_error_line(tmp_path: Path, shapes_yaml: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(tmp_path, shapes_yaml)))
    holder = _hold_lock(tmp_path / "out" / ".detune.lock")
    try:
        result = runner.invoke(app, ["tune", str(path)])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: study 's' is already running in {tmp_path}/out (pid {holder.pid})")
    assert not (tmp_path / "out" / "detune.log").exists()


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across_processes(tmp_path: Path,
                                                                              shapes_yaml: Path) -> None:
    study = load_study(_study(tmp_path, shapes_yaml))
    with study_lock(study) as lock, study_lock(study):  # the CLI holds it around tune(), which takes it again
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: as another process
        finally:
            os.close(fd)
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the outer block
    os.close(fd)


# ---- a failed start does not block the rerun --------------------------------------------------------------------
def test_an_experiment_folder_without_results_does_not_block_a_new_study(tmp_path: Path, shapes_yaml: Path) -> None:
    study = load_study(_study(tmp_path, shapes_yaml))
    experiment = study.storage_path / study.name
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"x")  # what a start that failed inside Tuner.fit leaves
    (experiment / "trial_0").mkdir()
    (experiment / "trial_0" / "result.json").write_text("")  # a trial that never reported
    with open_study(study, resume=False):
        assert not experiment.exists()
    experiment.mkdir(parents=True)
    (experiment / "trial_1").mkdir()
    (experiment / "trial_1" / "result.json").write_text('{"epoch": 1}\n')
    with pytest.raises(TuneError, match=r"study 's' already exists in .*; pass --resume to continue it"):
        clear_unstarted(study, experiment)
    assert (experiment / "trial_1" / "result.json").is_file()


# ---- the printed resume command -----------------------------------------------------------------------------------
def test_resume_command_survives_bash(tmp_path: Path, shapes_yaml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("detune.tuning.tune", interrupted)
    path = tmp_path / "my study.yaml"
    path.write_text(yaml.safe_dump(_study(tmp_path, shapes_yaml, search="grid", search_space={
        "lr0": {"grid": [0.01]}})))
    args = [str(path), "search_space.lr0={grid:[0.01,0.02,0.03]}", "train.name=a b"]
    result = runner.invoke(app, ["tune", *args])
    assert result.exit_code == 130
    command = result.stderr.splitlines()[-1].split("can be resumed with: ", 1)[1]
    assert shlex.split(command) == ["detune", "tune", *args, "--resume"]
    echoed = subprocess.run(["bash", "-c", f"printf '%s\\n' {command}"], capture_output=True, text=True, check=True)
    assert echoed.stdout.splitlines() == ["detune", "tune", *args, "--resume"]  # no brace expansion, no split
