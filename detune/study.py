"""Study config: a base train config plus the search space, search algorithm and trial scheduler."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detune.config import TrainConfig, from_dict, parse_overrides, read_yaml
from detune.confirm import ConfirmSettings, parse_confirm
from detune.cv import CVSettings, parse_cv
from detune.errors import ConfigError, did_you_mean
from detune.refine import RefineSettings, parse_refine
from detune.search_space import Dim, parse_search_space

__all__ = ["MODES", "SEARCHES", "StudyConfig", "TRIAL_SCHEDULERS", "load_study", "parse_study_overrides"]

SEARCHES = ("random", "grid", "optuna", "hyperopt", "bohb")
TRIAL_SCHEDULERS = ("fifo", "asha", "hyperband", "median", "pbt", "detection")
MODES = ("max", "min")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A validated study: ``train`` is the base config every trial starts from."""

    train: TrainConfig
    search_space: dict[str, Dim]
    name: str = "study"
    output_dir: Path = Path("runs/detune/study")
    search: str = "optuna"
    search_params: dict[str, Any] = dataclasses.field(default_factory=lambda: {"sampler": "tpe"})
    trial_scheduler: str = "detection"
    trial_scheduler_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_samples: int = 8
    max_concurrent_trials: int | None = None
    metric: str = "metrics/mAP50-95"
    mode: str = "max"
    resources_per_trial: dict[str, float] = dataclasses.field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    time_budget_s: float | None = None
    storage_path: Path = Path("runs/detune/study/ray")
    tracking: Any = True
    seed: int = 0
    baseline_first: bool = True
    confirm: ConfirmSettings | None = None  # retrain the top trials with new seeds (detune.confirm)
    refine: RefineSettings | None = None  # zoom-in rounds (detune.refine)
    cv: CVSettings | None = None  # each trial trains once per fold of the train images (detune.cv)

    def to_dict(self) -> dict[str, Any]:
        """YAML-safe mapping that ``load_study`` accepts again."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["train"] = self.train.to_dict()
        out["search_space"] = {k: d.to_yaml() for k, d in self.search_space.items()}
        out["output_dir"], out["storage_path"] = str(self.output_dir), str(self.storage_path)
        out["confirm"] = self.confirm.to_dict() if self.confirm is not None else False
        out["refine"] = self.refine.to_dict() if self.refine is not None else False
        out["cv"] = self.cv.to_dict() if self.cv is not None else False
        return out

    @property
    def trial_count(self) -> int:
        """Trials the study runs: ``num_samples``, times every grid combination."""
        return self.num_samples * math.prod(len(d.args) for d in self.search_space.values() if d.kind == "grid")


CONFIRM_FROM = 8  # a study of this many trials confirms its top trials unless it says `confirm: false`
_STUDY_KEYS = tuple(f.name for f in dataclasses.fields(StudyConfig))


def load_study(source: str | os.PathLike[str] | Mapping[str, Any], **overrides: Any) -> StudyConfig:
    """Load and validate a study from a YAML path or mapping; ``overrides`` win (``train.lr0=...`` style
    dotted keys reach into the base train config)."""
    if isinstance(source, Mapping):
        raw, base_dir = dict(source), Path.cwd()
    else:
        raw, base_dir = read_yaml(source), Path(source).resolve().parent
    raw = _merge_overrides(raw, overrides, base_dir)
    unknown = [k for k in raw if k not in _STUDY_KEYS]
    if unknown:
        close = did_you_mean(unknown[0], _STUDY_KEYS, n=3)
        hint = f"; {close}" if close else f"; valid keys: {', '.join(_STUDY_KEYS)}"
        raise ConfigError(f"unknown study setting {unknown[0]!r}{hint}")
    train_raw = raw.get("train") or {}
    if isinstance(train_raw, (str, os.PathLike)):
        path = Path(train_raw) if Path(train_raw).is_absolute() else base_dir / train_raw
        train_raw = read_yaml(path)
    if isinstance(train_raw, Mapping) and "tracking" not in train_raw:  # the study's own `tracking` decides,
        train_raw = {**train_raw, "tracking": False}  # not detune.train's "auto" (on with MLFLOW_TRACKING_URI)
    train = from_dict(train_raw)
    train, search_space = _space(raw.get("search_space"), train)
    name = str(raw.get("name", "study"))
    if not _NAME.match(name):
        raise ConfigError(f"name ({name!r}) must be 1-100 letters, digits, '_', '.' or '-'; it names folders "
                          "and the MLflow experiment")
    output_dir = Path(_path(raw, "output_dir") or Path("runs") / "detune" / name).expanduser().resolve()
    search, search_params = _searcher(raw, search_space)
    cv = parse_cv(raw.get("cv"))
    study = StudyConfig(
        train=train, search_space=search_space, name=name,
        output_dir=output_dir, search=search, search_params=search_params,
        # cv reports a trial's curve once its folds have trained: nothing for early stopping to save
        trial_scheduler=raw.get("trial_scheduler", "fifo" if cv else "detection"), cv=cv,
        trial_scheduler_params=_mapping(raw, "trial_scheduler_params"),
        num_samples=raw.get("num_samples", 8), max_concurrent_trials=raw.get("max_concurrent_trials"),
        metric=raw.get("metric", "metrics/mAP50-95"), mode=raw.get("mode", "max"),
        resources_per_trial={"cpu": 1, "gpu": 0, **_mapping(raw, "resources_per_trial")},
        time_budget_s=raw.get("time_budget_s"),
        storage_path=Path(_path(raw, "storage_path") or output_dir / "ray").expanduser().resolve(),
        tracking=raw.get("tracking", True), seed=raw.get("seed", 0),
        baseline_first=raw.get("baseline_first", True),
    )
    _validate(study)
    confirm = parse_confirm(raw.get("confirm", _default_confirm(study)), num_samples=study.trial_count)
    if confirm is not None and study.trial_scheduler == "pbt":
        raise ConfigError("confirm cannot retrain PBT trials (their settings change during training); remove "
                          "confirm or use another trial_scheduler")
    if cv is not None and study.trial_scheduler != "fifo":
        raise ConfigError(f"cv cannot run with trial_scheduler: {study.trial_scheduler}: a cross-validated trial "
                          "reports its fold-mean curve once all its folds have trained, so early stopping would "
                          "save nothing; use trial_scheduler: fifo (the default with cv) or remove cv")
    refine = parse_refine(raw.get("refine"), num_samples=study.num_samples)
    if refine is not None:
        _check_refine(study)
    return dataclasses.replace(study, confirm=confirm, refine=refine)


def _check_refine(study: StudyConfig) -> None:
    """``refine`` runs rounds of a sampling searcher: not grids (nothing to narrow), BOHB (its own
    budgets) or PBT (which mutates trials itself)."""
    grids = [k for k, d in study.search_space.items() if d.kind == "grid"]
    if grids:
        raise ConfigError(f"refine cannot narrow the grid search_space.{grids[0]}; make it a choice, or remove refine")
    if study.search in ("grid", "bohb"):
        raise ConfigError(f"refine runs rounds of random, optuna or hyperopt search, not search: {study.search}; "
                          "change search or remove refine")
    if study.trial_scheduler == "pbt":
        raise ConfigError("refine cannot run with trial_scheduler: pbt (PBT mutates its trials itself); use "
                          "another trial_scheduler or remove refine")


def _searcher(raw: Mapping[str, Any], space: Mapping[str, Dim]) -> tuple[str, dict[str, Any]]:
    """``search`` and ``search_params``. The default is Optuna's TPE sampler, modelling after a few trials
    (detune.tuning; it won the sampler comparison of benchmarks/RESULTS.md section 5), or random search when
    the space has grid dimensions (Optuna cannot enumerate them) or the study runs PBT (which mutates trials
    itself)."""
    if "search" in raw:
        return raw["search"], _mapping(raw, "search_params")
    if raw.get("trial_scheduler") == "pbt" or any(d.kind == "grid" for d in space.values()):
        return "random", _mapping(raw, "search_params")
    return "optuna", _mapping(raw, "search_params") if "search_params" in raw else {"sampler": "tpe"}


def _default_confirm(study: StudyConfig) -> bool:
    """Confirmation is on by default for a study of ``CONFIRM_FROM`` trials or more, unless it runs PBT (its
    trials change settings as they train) or has a time budget (the retrainings would run past it)."""
    return study.trial_count >= CONFIRM_FROM and study.trial_scheduler != "pbt" and study.time_budget_s is None


def _space(raw: Any, train: TrainConfig) -> tuple[TrainConfig, dict[str, Dim]]:
    """No search_space: the default prior around the config's lr0; ``{lr0: auto}``: the same prior around the
    LR finder's suggestion (train lr0 becomes "auto"; detune.tune resolves it before the trials)."""
    from detune.prior import default_space

    if raw is None:
        return train, default_space(train)
    if isinstance(raw, Mapping) and dict(raw) == {"lr0": "auto"}:
        train = train.replace(lr0="auto")
        return train, default_space(train)
    return train, parse_search_space(raw, train)


def _mapping(raw: Mapping[str, Any], field: str) -> dict[str, Any]:
    value = raw.get(field)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        example = {"resources_per_trial": "{cpu: 1, gpu: 0}", "search_params": "{n_startup_trials: 4}",
                   "trial_scheduler_params": "{grace_period: 2}"}[field]
        raise ConfigError(f"{field} ({value!r}) must be a mapping of names to values, e.g. {field}: {example}")
    return dict(value)


def _path(raw: Mapping[str, Any], field: str) -> str | None:
    value = raw.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{field} ({value!r}) must be a folder path, e.g. {field}: runs/detune/my_study")
    return str(value)


def _merge_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """Apply ``overrides`` to the study mapping. A dotted key changes one value inside a mapping of the study
    (``search_space.momentum``, ``search_space.scheduler_params.onecycle.pct_start``, ``resources_per_trial.cpu``,
    ``search_params.n_startup_trials``, ``trial_scheduler_params.grace_period``, ``tracking.experiment``,
    ``train.lr0``) and keeps every other key of that mapping; the last part's value replaces what was there."""
    out = dict(raw)
    for key, value in overrides.items():
        first, *rest = key.split(".")
        if not rest:
            out[key] = value
            continue
        out[first] = _set_dotted(_as_mapping(first, out.get(first), base_dir), rest, value, first)
    return out


def _as_mapping(field: str, current: Any, base_dir: Path) -> dict[str, Any]:
    if field == "train" and isinstance(current, (str, os.PathLike)):  # train: base.yaml, relative to the study
        path = Path(current) if Path(current).is_absolute() else base_dir / current
        return read_yaml(path)
    if field == "tracking" and current is not None and not isinstance(current, Mapping):
        # tracking: true / a URI / false: a tracking.<key> override turns it into the mapping form (on)
        return {"uri": str(current)} if isinstance(current, (str, os.PathLike)) else {}
    if current is None:
        return {}
    if not isinstance(current, Mapping):
        raise ConfigError(f"{field} ({current!r}) is not a mapping, so {field}.<key>=... cannot change a key in "
                          f"it; set the whole value instead ({field}=...)")
    return dict(current)


def _set_dotted(target: dict[str, Any], parts: list[str], value: Any, where: str) -> dict[str, Any]:
    out = dict(target)
    head, *rest = parts
    if not rest:
        out[head] = value
        return out
    inner = out.get(head)
    if inner is not None and not isinstance(inner, Mapping):
        raise ConfigError(f"{where}.{head} ({inner!r}) is not a mapping, so {where}.{head}.{'.'.join(rest)}=... "
                          f"cannot change a key in it; set {where}.{head}=... instead")
    out[head] = _set_dotted(dict(inner or {}), rest, value, f"{where}.{head}")
    return out


def _validate(s: StudyConfig) -> None:
    def choice(field: str, value: Any, valid: tuple[str, ...]) -> None:
        if value not in valid:
            close = did_you_mean(value, valid)
            hint = f" ({close})" if close else ""
            raise ConfigError(f"{field} ({value!r}) must be one of {', '.join(valid)}{hint}")

    choice("search", s.search, SEARCHES)
    choice("trial_scheduler", s.trial_scheduler, TRIAL_SCHEDULERS)
    choice("mode", s.mode, MODES)
    if not isinstance(s.num_samples, int) or isinstance(s.num_samples, bool) or s.num_samples < 1:
        raise ConfigError(f"num_samples ({s.num_samples!r}) must be an integer >= 1; e.g. num_samples: 8")
    if s.max_concurrent_trials is not None and (not isinstance(s.max_concurrent_trials, int)
                                                or s.max_concurrent_trials < 1):
        raise ConfigError(f"max_concurrent_trials ({s.max_concurrent_trials!r}) must be an integer >= 1 or null")
    for key, value in s.resources_per_trial.items():
        if key not in ("cpu", "gpu"):
            raise ConfigError(f"resources_per_trial.{key} is unknown; use cpu and gpu (fractions allowed for gpu)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"resources_per_trial.{key} ({value!r}) must be a number >= 0")
    if s.resources_per_trial["cpu"] <= 0 and s.resources_per_trial["gpu"] <= 0:
        raise ConfigError("resources_per_trial needs cpu > 0 or gpu > 0")
    if s.resources_per_trial["gpu"] > 1:
        raise ConfigError(f"resources_per_trial.gpu ({s.resources_per_trial['gpu']}) must be at most 1: each trial "
                          "trains on one GPU (no DDP inside a trial); use fractions such as 0.5 to pack trials")
    if not isinstance(s.baseline_first, bool):
        raise ConfigError(f"baseline_first ({s.baseline_first!r}) must be true or false")
    if s.time_budget_s is not None and (not isinstance(s.time_budget_s, (int, float)) or s.time_budget_s <= 0):
        raise ConfigError(f"time_budget_s ({s.time_budget_s!r}) must be a number of seconds > 0 or null")
    if s.search == "grid" and any(d.kind != "grid" for d in s.search_space.values()):
        bad = next(k for k, d in s.search_space.items() if d.kind != "grid")
        raise ConfigError(f"search: grid needs every search_space entry to be {{grid: [...]}}; {bad} is "
                          f"{s.search_space[bad].kind}; use search: random or make it a grid")
    grids = [k for k, d in s.search_space.items() if d.kind == "grid"]
    if grids and s.search not in ("random", "grid"):
        raise ConfigError(f"search_space.{grids[0]} is a grid, which search: {s.search} cannot take (it samples "
                          f"each value itself); use search_space.{grids[0]}: {{choice: "
                          f"{list(s.search_space[grids[0]].args)}}}, or search: random to try every grid value")
    if not isinstance(s.metric, str) or not s.metric:
        raise ConfigError(f"metric ({s.metric!r}) must be a metric name such as metrics/mAP50-95")
    if not isinstance(s.seed, int) or isinstance(s.seed, bool):
        raise ConfigError(f"seed ({s.seed!r}) must be an integer, e.g. seed: 0")
    if s.trial_scheduler == "pbt" and s.search not in ("random", "grid"):
        raise ConfigError(f"trial_scheduler: pbt mutates trials itself and cannot be combined with search: "
                          f"{s.search}; use search: random")
    if s.trial_scheduler == "detection" and s.mode != "max":
        raise ConfigError(f"trial_scheduler: detection ranks a detection metric to maximise (mode: max, e.g. "
                          f"metrics/mAP50-95), not {s.metric} with mode: {s.mode}; use trial_scheduler: asha")
    if s.trial_scheduler == "pbt" and "optimizer" in s.search_space:
        raise ConfigError("trial_scheduler: pbt cannot search optimizer (an exploit would load one optimizer's "
                          "state into another); remove search_space.optimizer or use trial_scheduler: asha")
    if s.trial_scheduler == "pbt" and any(d.kind == "lr_finder" for d in s.search_space.values()):
        raise ConfigError("trial_scheduler: pbt cannot mutate an lr_finder range; use loguniform for lr0")
    if s.resources_per_trial["gpu"] == 0 and s.train.device not in ("cpu", "auto"):
        raise ConfigError(f"train.device ({s.train.device!r}) asks for a GPU but resources_per_trial.gpu is 0; "
                          "set resources_per_trial: {gpu: 1} (Ray assigns the GPU to each trial)")


def parse_study_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` strings as ``load_study`` takes them: dotted keys stay dotted (``train.epochs=3``,
    ``search_space.momentum={choice: [0.9, 0.937]}`` change one key of that mapping; nested, they would
    replace the whole ``train`` or ``search_space`` mapping). A repeated key counts at its last position.

    Raises:
        ConfigError: a pair without ``=`` or with a value that is not YAML.
    """
    values: dict[str, Any] = {}
    for pair in pairs:
        key = pair.partition("=")[0]
        value: Any = parse_overrides([pair])
        for part in key.split("."):
            value = value[part]
        values.pop(key, None)
        values[key] = value
    return values

