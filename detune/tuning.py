"""Ray Tune studies: the only module that imports Ray, with detune's own searchers in ``_searchers``.

Each trial trains through ``detune.training.run`` (the same adapter as ``detune.train``), validates and
reports every epoch with a checkpoint (last.pt + detune's step counter), so ASHA/HyperBand stop on real
per-epoch metrics, PBT's exploit restores the donor's weights and optimizer state, and a resumed study
continues unfinished trials from their last epoch. Trials log their own nested MLflow child runs (one
writer per run, few writes per epoch); the driver creates the store and the parent run first and closes
the children of trials the scheduler stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from detune import _runtime
from detune._paths import atomic_write
from detune.adapters.base import STATE_FILE, read_state
from detune.config import from_dict
from detune.errors import ConfigError, TuneError, did_you_mean
from detune.refine import ROUND_KEY
from detune.search_space import Dim, baseline_point
from detune.study import StudyConfig, load_study
from detune.study_files import (
    INTERRUPTED,
    TRIAL_STATUSES,
    StudyResult,
    open_study,
    summarize,
)

__all__ = ["INTERRUPTED_STUDY", "STUDY_STATE", "check_study", "folds_at_once", "suggest_for_study", "trial_device",
           "tune"]

STUDY_STATE = "study.json"


def _domain(dim: Dim, lr_suggestion: float | None = None) -> Any:
    from ray import tune

    dim = _resolved(dim, lr_suggestion)
    a = dim.args
    if dim.kind == "loguniform":
        return tune.loguniform(a[0], a[1])
    if dim.kind == "uniform":
        return tune.uniform(a[0], a[1])
    if dim.kind == "quniform":
        return tune.quniform(a[0], a[1], a[2])
    if dim.kind == "randint":
        return tune.randint(a[0], a[1])
    if dim.kind == "choice":
        return tune.choice(list(a))
    if dim.kind == "grid":
        return tune.grid_search(list(a))
    raise TuneError(f"unsupported distribution {dim.kind!r}")


def _search_alg(study: StudyConfig, space: dict[str, Any]) -> Any:
    from ray.tune.search import BasicVariantGenerator

    params = dict(study.search_params)
    baseline = (baseline_point(study.search_space, study.train)
                if study.baseline_first and study.trial_scheduler != "pbt" else None)
    if baseline is not None and study.search != "grid":
        params.setdefault("points_to_evaluate", [baseline])
    if study.search in ("random", "grid"):
        # max_concurrent_trials is ignored for a SearchGenerator-less variant generator: pass it here
        return BasicVariantGenerator(random_state=study.seed, max_concurrent=study.max_concurrent_trials or 0,
                                     **params)
    if study.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        _runtime.quiet_loggers()
        return OptunaSearch(sampler=_optuna_sampler(study, params.pop("sampler", {}), baseline), **params)
    if study.search == "hyperopt":
        _require("hyperopt", "search: hyperopt", "pip install hyperopt")
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(random_state_seed=study.seed, **params)
    _require("hpbandster", "search: bohb", "pip install hpbandster ConfigSpace")
    _require("ConfigSpace", "search: bohb", "pip install hpbandster ConfigSpace")
    from ray.tune.search.bohb import TuneBOHB

    return TuneBOHB(seed=study.seed, **params)


SAMPLERS = ("tpe", "gp", "cmaes", "local")  # search_params.sampler by name; a mapping is TPESampler settings


def _optuna_sampler(study: StudyConfig, sampler: Any, baseline: Mapping[str, Any] | None) -> Any:
    """Optuna's TPE (a mapping: its settings), GP or CMA-ES sampler, or detune's local search around the best
    trial (``_searchers``); CMA-ES starts at the baseline (x0, its numeric dims; its categorical dims are
    sampled at random, as Optuna's CMA-ES does). Optuna samples the first 10 trials at random by default;
    small studies would never get past that, so every sampler starts modelling after
    min(10, max(3, num_samples // 4))."""
    import optuna

    startup = min(10, max(3, study.num_samples // 4))
    if isinstance(sampler, Mapping):
        return optuna.samplers.TPESampler(seed=study.seed, **{"n_startup_trials": startup, **sampler})
    if sampler not in SAMPLERS:
        close = did_you_mean(sampler, SAMPLERS)
        hint = f"; {close}" if close else ""
        raise ConfigError(f"search_params.sampler ({sampler!r}) must be one of {', '.join(SAMPLERS)} or a mapping "
                          f"of TPESampler settings such as {{n_startup_trials: 4}}{hint}")
    if sampler == "tpe":
        return optuna.samplers.TPESampler(seed=study.seed, n_startup_trials=startup)
    if sampler == "gp":
        return optuna.samplers.GPSampler(seed=study.seed, n_startup_trials=startup)
    if sampler == "local":
        from detune._searchers import LocalSearchSampler

        return LocalSearchSampler(seed=study.seed)
    if importlib.util.find_spec("cmaes") is None:
        raise ConfigError("search_params.sampler: cmaes needs the cmaes package, which is not installed; "
                          "pip install cmaes, or pip install 'detune[cmaes]' (or use sampler: gp, tpe or local)")
    x0 = {k: v for k, v in (baseline or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    with warnings.catch_warnings():  # Optuna 4.9 deprecated x0 (removal planned for 6.0); starting at the
        warnings.filterwarnings("ignore", message=".*`x0`", category=FutureWarning)  # baseline is the point
        return optuna.samplers.CmaEsSampler(x0=x0 or None, seed=study.seed, n_startup_trials=1,
                                            warn_independent_sampling=False)


def _require(module: str, what: str, fix: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise TuneError(f"{what} needs the {module} package, which is not installed; {fix}")


def _scheduler(study: StudyConfig) -> Any:
    from ray.tune import schedulers

    params = dict(study.trial_scheduler_params)
    # max_t one past the last epoch: ASHA/HyperBand kill a trial the moment it reaches max_t, before it
    # finishes its MLflow run; the last rung is still below the final epoch.
    max_t = study.train.epochs + 1
    try:
        if study.search == "bohb":
            return schedulers.HyperBandForBOHB(time_attr="training_iteration", max_t=max_t, **params)
        if study.trial_scheduler == "detection":
            return _detection_scheduler(study, **params)
        if study.trial_scheduler == "fifo":
            return schedulers.FIFOScheduler(**params)
        if study.trial_scheduler == "asha":
            params = {"grace_period": 1, "reduction_factor": 2, **params}
            return _FinishLastEpoch.wrap(schedulers.ASHAScheduler, study.train.epochs)(
                time_attr="training_iteration", max_t=max_t, **params)
        if study.trial_scheduler == "hyperband":
            return schedulers.HyperBandScheduler(time_attr="training_iteration", max_t=max_t, **params)
        if study.trial_scheduler == "median":
            params = {"grace_period": 1, "min_samples_required": 2, **params}
            return _FinishLastEpoch.wrap(schedulers.MedianStoppingRule, study.train.epochs)(
                time_attr="training_iteration", **params)
        mutations = {k: (list(d.args) if d.kind in ("choice", "grid") else _domain(d))
                     for k, d in study.search_space.items()}
        params = {"perturbation_interval": 1, **params}
        return _FinishLastEpoch.wrap(schedulers.PopulationBasedTraining, study.train.epochs, skip_last=True)(
            time_attr="training_iteration", hyperparam_mutations=mutations, **params)
    except TypeError as e:  # an unknown key in trial_scheduler_params
        raise TuneError(f"trial_scheduler_params ({study.trial_scheduler_params!r}) are invalid for "
                        f"{study.trial_scheduler}: {e}") from None


def detection_rungs(grace_period: int | None = None, reduction_factor: float = 2,
                    noise_floor: float | None = None) -> None:
    """The ``trial_scheduler_params`` of ``trial_scheduler: detection`` (detune.rungs): grace_period in epochs
    (default max(2, epochs // 4)), reduction_factor > 1, noise_floor of the metric (default 0.01)."""


def _detection_scheduler(study: StudyConfig, grace_period: int | None = None, reduction_factor: float = 2,
                         noise_floor: float | None = None) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    from detune.rungs import NOISE_FLOOR, AsyncRungs, milestones

    if grace_period is not None and (isinstance(grace_period, bool) or not isinstance(grace_period, int)
                                     or grace_period < 1):
        raise ConfigError(f"trial_scheduler_params.grace_period ({grace_period!r}) must be an integer >= 1 (epochs)")
    dim = study.search_space.get("warmup_epochs")  # no rung before the longest warmup a trial can get has ended
    warmups = [study.train.warmup_epochs, *(b for b in (dim.bounds() if dim else []) if isinstance(b, (int, float)))]
    rungs = AsyncRungs(milestones(study.train.epochs, max(warmups), reduction_factor, grace_period),
                       reduction_factor=reduction_factor, floor=NOISE_FLOOR if noise_floor is None else noise_floor,
                       metric=study.metric)

    class DetectionRungs(FIFOScheduler):  # type: ignore[misc]
        def __init__(self, rungs: AsyncRungs) -> None:
            super().__init__()
            self.rungs = rungs

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            epoch = int(result.get("training_iteration", 0))
            return str(self.STOP if self.rungs.on_result(trial.trial_id, epoch, result) else self.CONTINUE)

    return DetectionRungs(rungs)


# Keys of search_params / trial_scheduler_params that detune sets itself: key -> what to use instead
_SET_BY_DETUNE = {"metric": "the study's metric", "mode": "the study's mode", "space": "search_space",
                  "random_state": "seed", "random_state_seed": "seed", "seed": "the study's seed",
                  "max_concurrent": "max_concurrent_trials", "time_attr": "detune's epochs (training_iteration)",
                  "max_t": "train.epochs", "hyperparam_mutations": "search_space"}


def check_study(study: StudyConfig) -> None:
    """Check what Ray would only check after it started: ``search_params`` and ``trial_scheduler_params``
    against the parameters of the searcher and scheduler classes (``inspect.signature``), then build both
    once so bad values fail here. Starts nothing.

    Raises:
        ConfigError: naming the key, the class and the valid keys.
    """
    import inspect

    from ray.tune import schedulers
    from ray.tune.search import BasicVariantGenerator

    def check(field: str, params: Mapping[str, Any], cls: Any, what: str) -> None:
        accepted = [n for n, p in inspect.signature(cls).parameters.items()
                    if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        for key in params:
            if key in _SET_BY_DETUNE and key in accepted:
                raise ConfigError(f"{field}.{key} is set by detune from {_SET_BY_DETUNE[key]}; remove it")
            if key not in accepted:
                valid = [n for n in accepted if n not in _SET_BY_DETUNE]
                within = next((n for n in valid if key in n), None)  # a shortened name first: lr -> lr_min
                close = f"did you mean {within}?" if within else did_you_mean(key, valid)
                hint = f"{close} " if close else ""
                raise ConfigError(f"{field}.{key} is not a parameter of {cls.__name__} ({what}); {hint}valid: "
                                  f"{', '.join(valid) or 'none'}")

    searchers = {"random": BasicVariantGenerator, "grid": BasicVariantGenerator}
    if study.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        searchers["optuna"] = OptunaSearch
        sampler = study.search_params.get("sampler", {})
        if not isinstance(sampler, (Mapping, str)):
            raise ConfigError(f"search_params.sampler ({sampler!r}) must be one of {', '.join(SAMPLERS)} or a "
                              "mapping of TPESampler settings, e.g. {n_startup_trials: 4}")
        if isinstance(sampler, Mapping):
            check("search_params.sampler", sampler, optuna.samplers.TPESampler, "search: optuna")
        else:
            _optuna_sampler(study, sampler, None)
    elif study.search == "hyperopt":
        _require("hyperopt", "search: hyperopt", "pip install hyperopt")
        from ray.tune.search.hyperopt import HyperOptSearch

        searchers["hyperopt"] = HyperOptSearch
    elif study.search == "bohb":
        _require("hpbandster", "search: bohb", "pip install hpbandster ConfigSpace")
        _require("ConfigSpace", "search: bohb", "pip install hpbandster ConfigSpace")
        from ray.tune.search.bohb import TuneBOHB

        searchers["bohb"] = TuneBOHB
    if study.trial_scheduler != "pbt":
        check("search_params", study.search_params, searchers[study.search], f"search: {study.search}")
    elif study.search_params:
        raise ConfigError(f"search_params ({study.search_params!r}) are not used with trial_scheduler: pbt (it "
                          "samples trials itself); remove them")
    classes = {"fifo": schedulers.FIFOScheduler, "asha": schedulers.ASHAScheduler,
               "hyperband": schedulers.HyperBandScheduler, "median": schedulers.MedianStoppingRule,
               "pbt": schedulers.PopulationBasedTraining, "detection": detection_rungs}
    cls = schedulers.HyperBandForBOHB if study.search == "bohb" else classes[study.trial_scheduler]
    check("trial_scheduler_params", study.trial_scheduler_params, cls, f"trial_scheduler: {study.trial_scheduler}")
    try:
        _scheduler(study)
        if study.trial_scheduler != "pbt":
            _search_alg(study, {})
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigError(f"search_params ({study.search_params!r}) / trial_scheduler_params "
                          f"({study.trial_scheduler_params!r}) are invalid for search: {study.search}, "
                          f"trial_scheduler: {study.trial_scheduler}: {e or type(e).__name__}") from None


class _FinishLastEpoch:
    """A scheduler that never stops or pauses a trial on the result of its last epoch; the trial ends by
    itself right after that result anyway.
    - ASHA puts a rung at the last epoch whenever grace_period * reduction_factor**k equals ``epochs`` (2, 4,
      8 for 8 epochs), and a STOP there killed a trial that had trained every epoch while it closed its MLflow
      run (child run "stopped", trials.csv "completed").
    - PBT is not consulted at all on the last epoch (``skip_last``): a perturbation there has nothing left to
      train, and synchronous PBT paused trials at that barrier and exploited them from a donor's final
      checkpoint; Ray then restored each one's result.json from an older copy, so the trial lost epochs from
      its history and was reported "stopped"."""

    @staticmethod
    def wrap(cls: Any, epochs: int, *, skip_last: bool = False) -> Any:
        def on_trial_result(self: Any, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            last = result.get("training_iteration", 0) >= epochs
            if last and skip_last:
                return str(cls.CONTINUE)
            decision = cls.on_trial_result(self, tune_controller, trial, result)
            return str(cls.CONTINUE) if last and decision == cls.STOP else str(decision)

        # a subclass made here is pickled by value (cloudpickle) into the experiment, so --resume restores it
        return type(cls.__name__, (cls,), {"on_trial_result": on_trial_result})


# ---------------------------------------------------------------------------------------------------------
# Inside a trial (a Ray worker process)
# ---------------------------------------------------------------------------------------------------------
def trial_device(gpu: float) -> str:
    """The Ultralytics device of a trial: Ray sets CUDA_VISIBLE_DEVICES to the GPU it assigned, so the
    trial's GPU is always index 0 inside the worker; no GPU assigned means CPU."""
    import ray

    return "0" if gpu > 0 and ray.get_gpu_ids() else "cpu"


class _Reporter:
    """Adapter observer that reports each epoch to Ray with a checkpoint of last.pt."""

    def __init__(self, extra: Mapping[str, Any]) -> None:
        self.extra = dict(extra)

    def on_epoch(self, record: dict[str, float], weights_dir: Path) -> None:
        from ray import tune

        with tempfile.TemporaryDirectory(prefix="detune-ckpt-") as tmp:
            for name in ("last.pt", STATE_FILE):
                if (weights_dir / name).is_file():
                    shutil.copy2(weights_dir / name, Path(tmp) / name)
            tune.report({**record, **self.extra}, checkpoint=tune.Checkpoint.from_directory(tmp))


def _trainable(params: dict[str, Any], payload: dict[str, Any]) -> None:
    import ray
    from ray import tune

    from detune import training
    from detune.search_space import apply_params

    _runtime.prepare()
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    params = dict(params)
    refine_round = params.pop(ROUND_KEY, None)  # a refined study's round (detune.refine): a tag, not a setting
    train = apply_params(payload["train"], params)
    train.update(project=payload["trials_dir"], name=trial_id, exist_ok=True, device=trial_device(payload["gpu"]),
                 threads=train.get("threads") or max(1, int(payload["cpu"])))
    cfg = from_dict(train)
    resume_from, restored_from = None, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        local = Path(payload["trials_dir"]) / trial_id / "restore"
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        with checkpoint.as_directory() as d:
            shutil.copytree(d, local, dirs_exist_ok=True)
        resume_from = local / "last.pt"
        state = read_state(local) or {}
        restored_from = state.get("trial_id")
        if restored_from == trial_id and state["epoch"] + 1 >= cfg.epochs:
            # The driver died between this trial's last report and its return: nothing left to train.
            if payload["tracking"] is not None:
                from detune import tracking as tr

                tr.close_stopped_trial(payload["tracking"], parent_run_id=payload["parent_run_id"],
                                       trial_id=trial_id, status="completed")
            return
    tracking = None
    if payload["tracking"] is not None:
        from dataclasses import replace

        from detune import tracking as tr

        base = payload["tracking"]
        run_id = tr.find_trial_run(base, parent_run_id=payload["parent_run_id"], trial_id=trial_id)
        tracking = replace(base, parent_run_id=payload["parent_run_id"], run_id=run_id, run_name=trial_id,
                           tags={**base.tags, "detune.trial_id": trial_id, "detune.study": payload["name"],
                                 **({"detune.round": str(refine_round)} if refine_round else {})})
    extra = {"detune_trial_id": trial_id, "detune_device": cfg.device, "detune_gpu_ids": ",".join(
        str(g) for g in ray.get_gpu_ids()), "detune_node": ray.get_runtime_context().get_node_id(),
             "detune_restored_from": restored_from or "", "detune_status": "running"}
    if payload.get("cv"):  # one training per fold, then the fold-mean curve (detune.cv): no checkpoints
        result = training.run_folds(cfg, [Path(p) for p in payload["cv"]], metric=payload["metric"],
                                    tracking=tracking, fit=payload.get("fit"),
                                    parallel=_fold_tasks(payload) if payload.get("cv_parallel") else None)
        for record in result.history:
            tune.report({**record, **extra})
    else:
        result = training.run(cfg, observers=[_TrialState(trial_id), _Reporter(extra)], resume_from=resume_from,
                              tracking=tracking, fit=payload.get("fit"), data=payload.get("data"))
    _release_memory()  # this worker runs the next trial too (reuse_actors)
    if result.status == "diverged":
        worst = -math.inf if payload["mode"] == "max" else math.inf
        last = result.history[-1] if result.history else {}
        tune.report({**last, payload["metric"]: worst, **extra, "detune_status": "diverged",
                     "detune_reason": result.reason or ""})
    elif result.status == "failed":
        raise TuneError(f"trial {trial_id} failed: {result.reason}")


def _fold_tasks(payload: dict[str, Any]) -> Any:
    """Runs a cross-validated trial's folds at once: the first in the trial's own worker, the others as Ray
    tasks in the bundles the trial's placement group holds for them (``_trial_resources``), each with the
    trial's CPUs and GPU."""
    import ray

    def run_jobs(jobs: list[Any]) -> list[Any]:
        task = ray.remote(_train_fold).options(num_cpus=payload["cpu"], num_gpus=payload["gpu"])
        futures = [task.remote(cfg, fold_tracking, payload.get("fit"), payload["gpu"])
                   for cfg, fold_tracking in jobs[1:]]
        first = _train_fold(*jobs[0], payload.get("fit"), payload["gpu"])
        return [first, *ray.get(futures)]

    return run_jobs


def _train_fold(cfg: Any, tracking: Any, fit: Any, gpu: float) -> Any:
    """One fold's training, in a trial's worker or a Ray task (on the GPU Ray assigned to it, if any)."""
    from detune import training

    _runtime.prepare()
    return training.run(cfg.replace(device=trial_device(gpu)), tracking=tracking, fit=fit)


def _trial_resources(study: StudyConfig, parallel_folds: bool) -> Any:
    """What Ray reserves for a trial: ``resources_per_trial``, or for a cross-validated trial whose folds run
    at once, a placement group of one such bundle per fold (the trial's worker uses the first)."""
    from ray import tune

    one = {"cpu": study.resources_per_trial["cpu"], "gpu": study.resources_per_trial["gpu"]}
    if not parallel_folds:
        return one
    return tune.PlacementGroupFactory([{"CPU": one["cpu"], "GPU": one["gpu"]}] * study.cv.folds)


def folds_at_once(folds: int, per_trial: Mapping[str, float], cluster: Mapping[str, float]) -> bool:
    """Whether a cross-validated trial runs its folds at once: when the cluster holds ``folds`` trials'
    resources (``resources_per_trial``); else one after the other, in the trial's own resources."""
    return all(cluster.get(key.upper(), 0) >= folds * float(per_trial[key]) for key in ("cpu", "gpu"))


def _release_memory() -> None:
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class _TrialState:
    """Stamps the trial id into the checkpoint state, so a PBT exploit can be traced to its donor."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id

    def on_epoch(self, record: dict[str, float], weights_dir: Path) -> None:
        state = read_state(weights_dir)
        if state is not None:
            (weights_dir / STATE_FILE).write_text(json.dumps({**state, "trial_id": self.trial_id}))


# ---------------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------------
def tune(config: str | os.PathLike[str] | Mapping[str, Any] | StudyConfig, /, *, resume: bool = False,
         address: str | None = None, progress: Any = None, fit: Any = None, **overrides: Any) -> StudyResult:
    """Run (or resume) a Ray Tune study over YOLO learning-rate settings.

    Args:
        config: a study YAML path, mapping or ``StudyConfig``; ``overrides`` win (``num_samples=4``,
            ``train.epochs=3``).
        resume: continue the interrupted study in ``storage_path`` (finished trials are not rerun).
        address: an existing Ray cluster (``auto`` or ``ray://host:10001``); default: a local Ray.
        progress: called on the driver with one row per trial (trial_id, status, params, epoch, metric,
            best) whenever a trial starts, reports or ends; the CLI draws its live table from it.
        fit: replaces the Ultralytics adapter in trials and in an ``lr_finder`` range's LR range test (tests
            use ``detune._fake.fit``; see ``detune.adapters.base.Fit``).

    Returns a ``StudyResult``; ``best.yaml`` and ``trials.csv`` are written to ``output_dir``. Before anything
    is written, the study is checked (``check_study``), its folders too, and ``output_dir`` is locked: a second
    study on it fails at once. The MLflow parent run ends FINISHED, KILLED (interrupted) or FAILED with tags
    ``detune.status`` / ``detune.reason``; each trial's child run says what its trials.csv row says.
    Raises ``ConfigError`` for a bad study (before Ray starts) and ``TuneError`` when it cannot run (a
    locked or unusable folder, nothing to resume, an earlier study with results in the way).
    """
    study = config if isinstance(config, StudyConfig) else load_study(config, **overrides)
    check_study(study)
    with open_study(study, resume=resume):
        _runtime.prepare()
        return _tune_locked(study, resume=resume, address=address, progress=progress, fit=fit)


def _tune_locked(study: StudyConfig, *, resume: bool, address: str | None, progress: Any, fit: Any) -> StudyResult:
    from detune import tracking as tr
    from detune.tracking_config import resolve_tracking

    state_file = study.output_dir / STUDY_STATE
    state = json.loads(state_file.read_text()) if resume and state_file.is_file() else {}
    tcfg = resolve_tracking(study.tracking, default_experiment=study.name)
    train, data = _absolute_paths(study.train.to_dict())  # the dataset is checked before any run or Ray exists
    parent_run_id = state.get("parent_run_id")
    if tcfg is not None:
        tr.check_reachable(tcfg)
        tr.prepare_store(tcfg)  # before parallel trial writers: see the sqlite race in STACK-NOTES
        # a resumed study reopens its parent run (RUNNING again); a new one creates it
        parent_run_id = tr.start_study_run(tcfg.replace(run_id=parent_run_id), name=study.name,
                                           params=_study_params(study))
    try:
        study = _centre_prior(study, state, tcfg, parent_run_id, fit=fit, data=data)
        study = _pin_threads(study)  # best.yaml and the confirmation retrain with the trials' numerics
        train.update(lr0=study.train.lr0, threads=study.train.threads)
        atomic_write(state_file, json.dumps({"parent_run_id": parent_run_id, "name": study.name,
                                             "metric": study.metric, "mode": study.mode,
                                             "lr0_centre": study.train.lr0}, indent=2))
        payload = {
            "train": train, "trials_dir": str(study.output_dir / "trials"), "name": study.name,
            "gpu": study.resources_per_trial["gpu"], "cpu": study.resources_per_trial["cpu"],
            "metric": study.metric, "mode": study.mode, "tracking": tcfg, "parent_run_id": parent_run_id,
            "fit": fit, "data": data, "cv": _cv_folds(study, data),
        }
        _PROGRESS["live"], _PROGRESS["rows"] = set(), []
        started = time.monotonic()
        grid = _run_ray(study, payload, resume=resume, address=address, progress=progress)
        interrupted = frozenset(_PROGRESS.pop("live", set())) | _unfinished(grid)
        if study.time_budget_s is not None and time.monotonic() - started >= study.time_budget_s:
            interrupted = frozenset()  # the time budget ended the study: its live trials were stopped
        result = summarize(study, grid, parent_run_id=parent_run_id, interrupted=interrupted)
        confirmed: dict[str, float] = {}
        if study.confirm is not None and not interrupted:  # retrain the top trials with new seeds
            from detune import training
            from detune._confirm_run import run_confirmation

            result, confirmed = run_confirmation(
                study, result, train=lambda cfg: training.run(cfg, tracking=False, fit=fit, data=data),
                base=train, score_test=bool(data.dataset.test), progress=_confirm_progress(progress))
    except BaseException as e:
        _PROGRESS.pop("live", None)
        if tcfg is not None and parent_run_id is not None:
            _close_failed_study(tcfg, parent_run_id, e)
        raise
    report_dir = _report(study)
    result.report = report_dir / "report.md" if report_dir is not None else None
    if tcfg is not None:
        truth = {t["trial_id"]: (t["status"], t["reason"] or "") for t in result.trials}
        tr.sync_trial_runs(tcfg, parent_run_id=parent_run_id, truth=truth)
        tags = {"detune.status": "interrupted", "detune.reason": INTERRUPTED_STUDY} if interrupted else {
            "detune.status": "completed", "detune.reason": ""}
        tr.finish_run(tcfg, parent_run_id, status="KILLED" if interrupted else "FINISHED",
                      metrics={**_best_metrics(study, result), **confirmed}, tags=tags,
                      params={"best." + k: v for k, v in result.best_params.items()},
                      artifacts=[p for p in (result.best_yaml, result.trials_csv, report_dir) if p is not None]
                      + ([study.output_dir / "confirm.json"] if result.confirm else []))
    return result


INTERRUPTED_STUDY = "interrupted before all trials ended; resume with --resume"


def _confirm_progress(progress: Any) -> Any:
    """The study's ``progress`` sink for the confirmation's retrainings: their rows after the trials' rows."""
    if progress is None:
        return None
    trials = list(_PROGRESS.get("rows") or [])
    retrainings: dict[str, dict[str, Any]] = {}

    def update(row: dict[str, Any]) -> None:
        retrainings[row["trial_id"]] = row
        progress([*trials, *retrainings.values()])

    return update


def _cv_folds(study: StudyConfig, data: Any) -> list[str]:
    """A cross-validated study's fold data YAMLs (detune.cv), written once by the driver, before the trials;
    [] without ``cv``."""
    if study.cv is None:
        return []
    from detune.cv import write_folds

    return [str(p) for p in write_folds(data.dataset, study.cv, study.output_dir / "cv")]


def _pin_threads(study: StudyConfig) -> StudyConfig:
    """A trial trains with ``resources_per_trial.cpu`` torch threads; the thread count changes the float
    reductions, so best.yaml records it (when the study left ``train.threads`` unset) for a retraining on the
    same machine to repeat its trial's curve."""
    if study.train.threads is not None:
        return study
    threads = max(1, int(study.resources_per_trial["cpu"]))
    return dataclasses.replace(study, train=study.train.replace(threads=threads))


def _centre_prior(study: StudyConfig, state: Mapping[str, Any], tcfg: Any, parent_run_id: str | None, *,
                  fit: Any = None, data: Any = None) -> StudyConfig:
    """The default prior around the LR finder (train lr0 "auto" with an ``lr0_scale`` dimension, detune.prior):
    run the finder once, nested under the study's run (a resumed study reuses the centre it saved), and make
    its suggestion the base lr0 the trials scale."""
    if study.train.lr0 != "auto" or "lr0_scale" not in study.search_space:
        return study
    lr = state.get("lr0_centre")
    if not isinstance(lr, (int, float)):
        from detune import training

        tracking = tcfg.replace(parent_run_id=parent_run_id) if tcfg is not None else None
        lr = training.resolve_auto_lr0(study.train, tracking=tracking, fit=fit, data=data)[0].lr0
    return dataclasses.replace(study, train=study.train.replace(lr0=lr))


def _close_failed_study(tcfg: Any, parent_run_id: str, error: BaseException) -> None:
    """A study that ends by an exception closes its parent run (FAILED, or KILLED for Ctrl-C) with the
    reason, and the trial runs left RUNNING; the original error is what the caller sees."""
    from detune import tracking as tr

    killed = isinstance(error, KeyboardInterrupt)
    reason = INTERRUPTED_STUDY if killed else f"{type(error).__name__}: {error}"
    status = "interrupted" if killed else "failed"
    try:
        tr.sync_trial_runs(tcfg, parent_run_id=parent_run_id, truth={},
                           open_runs=(status, INTERRUPTED if killed else f"the study failed: {reason}"))
        tr.finish_run(tcfg, parent_run_id, status="KILLED" if killed else "FAILED",
                      tags={"detune.status": status, "detune.reason": reason[:2000]})
    except Exception as e:  # noqa: BLE001 - never hide the error that ended the study
        warnings.warn(f"could not close the study's MLflow run {parent_run_id}: {e}", stacklevel=3)


def _unfinished(grid: Any) -> frozenset[str]:
    """Ids of trials that had not ended (TERMINATED or ERROR) when ``fit`` returned: Ray's first Ctrl-C makes
    ``fit`` return with trials still running."""
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    return frozenset(t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR"))


def _report(study: StudyConfig) -> Path | None:
    """The study report (PNGs + report.md); a report bug must never lose a finished study."""
    from detune.config import DetuneWarning
    from detune.report import build_report

    try:
        return build_report(study.output_dir, metric=study.metric, mode=study.mode)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"study report not written: {e}", DetuneWarning, stacklevel=3)
        return None


def _absolute_paths(train: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Trials run in their own working directories: resolve data (generating "shapes" once, here, not in
    racing trials), check it before Ray starts (once: the trials reuse the check), and make a local model
    file path absolute. Returns the train mapping and the ``PreparedData``."""
    from detune.datasets import prepare_data

    data = prepare_data(train["data"])
    out = {**train, "data": str(data.dataset.yaml_path)}
    if Path(train["model"]).is_file():
        out["model"] = str(Path(train["model"]).resolve())
    return out, data


def _best_metrics(study: StudyConfig, result: StudyResult) -> dict[str, float]:
    out = {f"best/{k}": v for k, v in result.best_metrics.items() if isinstance(v, (int, float))}
    out["trials/total"] = len(result.trials)
    for status in TRIAL_STATUSES:
        out[f"trials/{status}"] = sum(t["status"] == status for t in result.trials)
    out["trial_epochs"] = sum(int(t["epochs_run"]) for t in result.trials) * (study.cv.folds if study.cv else 1)
    return out


def _study_params(study: StudyConfig) -> dict[str, Any]:
    out: dict[str, Any] = {f"search_space.{k}": json.dumps(d.to_yaml()) for k, d in study.search_space.items()}
    out.update(search=study.search, trial_scheduler=study.trial_scheduler, num_samples=study.num_samples,
               metric=study.metric, mode=study.mode, max_concurrent_trials=study.max_concurrent_trials,
               resources_per_trial=json.dumps(study.resources_per_trial), seed=study.seed)
    out.update({f"search_params.{k}": v for k, v in study.search_params.items()})
    out.update({f"refine.{k}": v for k, v in (study.refine.to_dict() if study.refine else {}).items()})
    out.update({f"cv.{k}": v for k, v in (study.cv.to_dict() if study.cv else {}).items()})
    out.update({f"trial_scheduler_params.{k}": v for k, v in study.trial_scheduler_params.items()})
    out.update({f"train.{k}": v for k, v in study.train.to_dict().items() if k != "tracking"})
    return out


def _run_ray(study: StudyConfig, payload: dict[str, Any], *, resume: bool, address: str | None,
             progress: Any = None) -> Any:
    import ray
    from ray import tune

    started = False
    if not ray.is_initialized():
        _start_ray(study, address)
        started = True
    try:
        _check_resources(study, address)
        payload["cv_parallel"] = study.cv is not None and folds_at_once(study.cv.folds, study.resources_per_trial,
                                                                         ray.cluster_resources())
        trainable = tune.with_resources(tune.with_parameters(_trainable, payload=payload),
                                        _trial_resources(study, payload["cv_parallel"]))
        experiment = study.storage_path / study.name  # checked in tune(), before Ray started
        if resume:
            tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            tuner = _new_tuner(study, trainable, payload["tracking"], payload["parent_run_id"], fit=payload.get("fit"))
        _PROGRESS["current"] = progress
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*reuse_actors.*")  # see reuse_actors above (PBT)
            return tuner.fit()
    finally:
        _PROGRESS.pop("current", None)
        if started:
            ray.shutdown()


def _start_ray(study: StudyConfig, address: str | None) -> None:
    """Start a local Ray (loopback only, token auth, no dashboard) or join the cluster at ``address``."""
    import ray

    if address is None:
        _runtime.local_ray_auth()
    _reload_ray_auth()
    try:
        with _loopback_only(address is None), _keep_sigterm_handler():
            # A local Ray's workers run at the driver's priority: Ray's default worker niceness (15) lets any
            # other process on the machine (a data loader, a second job) starve the trials.
            ray.init(address=address, include_dashboard=False, log_to_driver=study.train.verbose,
                     logging_level="ERROR", configure_logging=True,
                     **({"_node_ip_address": "127.0.0.1", "_system_config": {"worker_niceness": 0}}
                        if address is None else {}))
    except Exception as e:  # noqa: BLE001 - connection errors come in many types
        auth = os.environ.get("RAY_AUTH_MODE", "token")
        raise TuneError(f"could not start or join Ray (address={address!r}): {e}; check the address, or omit "
                        f"--address for a local Ray. RAY_AUTH_MODE is {auth!r}: a cluster started with token "
                        "auth refuses a client without its token; give this machine the cluster's token with "
                        "RAY_AUTH_TOKEN_PATH=<file> (or RAY_AUTH_TOKEN)") from e


def _reload_ray_auth() -> None:
    """Ray caches its auth mode and token per process: re-read them, since a local study and a cluster
    study in one process use different tokens."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # another Ray version: its own defaults apply
        pass


@contextlib.contextmanager
def _loopback_only(local: bool) -> Iterator[None]:
    """Bind a local Ray to 127.0.0.1. Ray 2.60's gcs_server, raylet and workers listen on all interfaces
    unless the node IP is 127.0.0.1, and ``ray.init`` turns ``_node_ip_address="127.0.0.1"`` into the
    machine's outward IP unless its single-machine mode (the one it uses on macOS and Windows,
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) is on: switch that on while the local node starts (measured
    with ``ss -ltnp``: every socket of the Ray tree then on 127.0.0.1). Joining a cluster is unchanged."""
    if not local:
        yield
        return
    from ray._private import ray_constants

    var = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(var)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[var] = "0"  # for the processes the node starts
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved[0]
        if saved[1] is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved[1]


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """``ray.init`` replaces the SIGTERM handler with one that kills Ray's processes and exits at once,
    skipping the study's own cleanup; a handler the caller installed (the CLI's: SIGTERM takes Ctrl-C's
    path) is put back. With none, Ray's stays."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and callable(previous):
            signal.signal(signal.SIGTERM, previous)


def _check_resources(study: StudyConfig, address: str | None) -> None:
    """Refuse a study whose trial no node of the cluster can ever hold: Ray would wait for it forever.

    An autoscaling cluster (started by Ray's cluster launcher: ``~/ray_bootstrap_config.yaml`` on the head,
    the test Ray Tune itself uses) may still add such a node: there it is a warning."""
    import ray

    cpu, gpu = float(study.resources_per_trial["cpu"]), float(study.resources_per_trial["gpu"])
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpu and r.get("GPU", 0) >= gpu for r in nodes):
        return
    total = ray.cluster_resources()
    where = "the local Ray" if address is None else f"the Ray cluster at {address}"
    have = (f"{where} has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs on {len(nodes)} "
            f"node(s), at most {max((r.get('CPU', 0) for r in nodes), default=0):g} CPUs and "
            f"{max((r.get('GPU', 0) for r in nodes), default=0):g} GPUs on one")
    if not any(r.get("GPU", 0) >= gpu for r in nodes):
        msg = (f"resources_per_trial.gpu ({gpu:g}) can never be met: {have}; set resources_per_trial: "
               "{gpu: 0} to train on CPU, or run the study where GPUs are (--address of a cluster with GPUs)")
    else:
        best = max((r.get("CPU", 0) for r in nodes if r.get("GPU", 0) >= gpu), default=0)
        msg = (f"resources_per_trial.cpu ({cpu:g}) can never be met: {have}; lower resources_per_trial.cpu "
               f"to {best:g} or less")
    if address is not None and Path("~/ray_bootstrap_config.yaml").expanduser().exists():
        from detune.config import DetuneWarning

        warnings.warn(f"{msg} (waiting: this autoscaling cluster may add such a node)", DetuneWarning,
                      stacklevel=3)
        return
    raise TuneError(msg + " (a trial would wait for them forever)")


def _new_tuner(study: StudyConfig, trainable: Any, tcfg: Any, parent_run_id: str | None, *, fit: Any = None) -> Any:
    from ray import tune

    dims = {k: _resolved(d, _lr_suggestion(study, d, tcfg, parent_run_id, fit=fit))
            for k, d in study.search_space.items()}
    space = {k: _domain(d) for k, d in dims.items()}
    scheduler = _scheduler(study)
    search_alg = _new_search_alg(study, dims)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric=study.metric, mode=study.mode, search_alg=search_alg,
                                    scheduler=scheduler, num_samples=study.num_samples,
                                    # random/grid: the limit lives in the variant generator itself
                                    max_concurrent_trials=None if study.refine is None and study.search in (
                                        "random", "grid") else study.max_concurrent_trials,
                                    time_budget_s=study.time_budget_s,
                                    # a new trial runs in the previous one's worker: no process start, no
                                    # torch/Ultralytics import (~7 s a trial here). Not for PBT, whose
                                    # in-place exploit then loses the donor's checkpoint (measured).
                                    reuse_actors=study.trial_scheduler != "pbt"),
        run_config=tune.RunConfig(name=study.name, storage_path=str(study.storage_path), verbose=0,
                                  # PBT donors must keep their checkpoints until the exploit copies them
                                  checkpoint_config=tune.CheckpointConfig(
                                      num_to_keep=4 if study.trial_scheduler == "pbt" else 2),
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  callbacks=[_driver_callback(study, tcfg, parent_run_id)]),
    )


def _new_search_alg(study: StudyConfig, dims: dict[str, Dim]) -> Any:
    """The study's search algorithm over ``dims`` (lr_finder ranges resolved), or a refined study's rounds of
    it over narrowing spaces (detune.refine). PBT too (random/grid only): a seeded variant generator makes
    its initial population reproducible."""
    if study.refine is None:
        return _search_alg(study, {k: _domain(d) for k, d in dims.items()})
    from detune._searchers import RefineSearcher
    from detune.refine import round_sizes

    return RefineSearcher(functools.partial(_round_searcher, study), dims,
                          round_sizes(study.num_samples, study.refine.rounds), study.refine.factor,
                          study.metric, study.mode)


def _resolved(dim: Dim, lr_suggestion: float | None) -> Dim:
    """An ``lr_finder`` range as the log-uniform range around the finder's suggestion; other dims as they are."""
    if dim.kind != "lr_finder":
        return dim
    if lr_suggestion is None:
        raise TuneError("search_space.lr0 uses lr_finder but no LR finder suggestion is available")
    low, high = dim.args[0]["span"]
    return Dim(dim.key, "loguniform", (lr_suggestion * low, lr_suggestion * high))


def _round_searcher(study: StudyConfig, dims: dict[str, Dim], index: int) -> Any:
    """The searcher of round ``index`` of a refined study: the study's own (random search as Optuna's random
    sampler), over ``dims``, seeded per round; only the first round starts with the baseline."""
    round_study = dataclasses.replace(study, search_space=dims, seed=study.seed + index, refine=None,
                                      num_samples=max(1, study.num_samples // study.refine.rounds),
                                      baseline_first=study.baseline_first and index == 0)
    space = {k: _domain(d) for k, d in dims.items()}
    if study.search == "random":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        _runtime.quiet_loggers()
        baseline = baseline_point(dims, study.train) if round_study.baseline_first else None
        searcher = OptunaSearch(sampler=optuna.samplers.RandomSampler(seed=round_study.seed),
                                points_to_evaluate=[baseline] if baseline else None)
    else:
        searcher = _search_alg(round_study, space)
    searcher.set_search_properties(study.metric, study.mode, space)
    return searcher


def _lr_suggestion(study: StudyConfig, dim: Dim, tcfg: Any, parent_run_id: str | None, *,
                   fit: Any = None) -> float | None:
    if dim.kind != "lr_finder":
        return None
    tracking = tcfg.replace(parent_run_id=parent_run_id) if tcfg is not None else None
    return suggest_for_study(study, tracking=tracking, fit=fit)  # its own MLflow run, nested under the study


def suggest_for_study(study: StudyConfig, *, tracking: Any = None, settings: Any = None, fit: Any = None) -> float:
    """The default-method LR finder suggestion for the study's base train config (centre of an ``lr_finder`` range).

    Args:
        tracking: None records nothing; a ``TrackingConfig`` with ``parent_run_id`` nests the finder's run
            under the study's run.
        fit: the trainer (default the Ultralytics adapter; tests pass ``detune._fake``).

    Raises:
        TuneError: when the finder gives no suggestion (with the reason).
    """
    from detune.lr_finder import DEFAULT_METHOD, range_test

    result = range_test(study.train, settings, tracking=tracking if tracking is not None else False, fit=fit)
    lr = result.suggestion(DEFAULT_METHOD)
    if lr is None:
        raise TuneError("search_space.lr0 uses lr_finder but the LR finder gave no suggestion: "
                        f"{result.reason}")
    return lr


# Ray pickles its callbacks into the experiment (and restores them on --resume), so the callback looks the
# progress sink up here by a fixed key instead of holding it (a live terminal display does not pickle).
_PROGRESS: dict[str, Any] = {}


def _driver_callback(study: StudyConfig, tcfg: Any, parent_run_id: str | None) -> Any:
    """Driver-side Ray callback. It closes the MLflow child run of a trial the scheduler stopped (that trial
    was killed mid-epoch: FINISHED, tag detune.status=stopped; runs a trial closed itself are left alone),
    and feeds ``progress`` one row per trial (trial_id, status, params, epoch, metric, best) as results come."""
    from ray import tune

    sign = 1 if study.mode == "max" else -1

    class DriverCallback(tune.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.rows: dict[str, dict[str, Any]] = {}

        def _update(self, trial: Any, status: str, result: Mapping[str, Any] | None = None) -> None:
            row = self.rows.setdefault(trial.trial_id, {"trial_id": trial.trial_id, "status": "pending",
                                                        "params": dict(trial.config), "epoch": 0,
                                                        "metric": None, "best": None})
            row["status"] = status
            if result:
                value = result.get(study.metric)
                row["epoch"] = int(result.get("epoch", row["epoch"]) or row["epoch"])
                row["metric"] = value
                if isinstance(value, (int, float)) and math.isfinite(value) and (
                        row["best"] is None or sign * value > sign * row["best"]):
                    row["best"] = value
                if result.get("detune_status") == "diverged":
                    row["status"] = "diverged"
            from detune import tuning  # the live module, not a pickled copy of its globals

            tuning._PROGRESS["rows"] = [dict(r) for r in self.rows.values()]  # the confirmation starts from them
            sink = tuning._PROGRESS.get("current")
            if sink is not None:
                sink([dict(r) for r in self.rows.values()])

        @staticmethod
        def _live(trial: Any, started: bool) -> None:
            """Trials started and not ended, for ``tune`` to tell an interrupted study (Ray's Ctrl-C handler
            ends ``fit`` normally and stops the live trials without ``on_trial_complete``)."""
            from detune import tuning

            live = tuning._PROGRESS.setdefault("live", set())
            (live.add if started else live.discard)(trial.trial_id)

        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._live(trial, True)
            self._update(trial, "running")

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                            **info: Any) -> None:
            self._update(trial, "running", result)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._live(trial, False)
            self._update(trial, "failed")

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._live(trial, False)
            row = self.rows.get(trial.trial_id, {})
            done = row.get("epoch", 0) >= study.train.epochs or row.get("status") == "diverged"
            self._update(trial, row.get("status") if row.get("status") == "diverged" else
                         "completed" if done else "stopped")
            if tcfg is not None and parent_run_id is not None:
                from detune import tracking as tr

                tr.close_stopped_trial(tcfg, parent_run_id=parent_run_id, trial_id=trial.trial_id,
                                       status="completed" if done else "stopped")

    return DriverCallback()

