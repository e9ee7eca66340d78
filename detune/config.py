"""Typed training config: Ultralytics' names for every LR knob, validated before any compute."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from detune._checks import is_number
from detune._optimizers import (
    OPTIMIZERS,
    SCHEDULE_FREE,
    TORCH_OPTIMIZERS,
    default_lr0,
    prodigy_rules,
    require_package,
    schedule_free_rules,
)
from detune._yaml import YamlRefused, safe_load
from detune.errors import ConfigError, did_you_mean

__all__ = ["DetuneWarning", "FIELDS", "INTERVALS", "LR_MULT_PARTS", "LR_SCALINGS", "MAX_BATCH", "MAX_CONFIG_BYTES",
           "MAX_DIVERGENCE_FACTOR", "MAX_EPOCHS", "MAX_IMGSZ", "MAX_LR", "MAX_LR_MULT", "MAX_SEED", "MAX_THREADS",
           "NOMINAL_BATCH", "OPTIMIZERS", "SCHEDULE_FREE", "TORCH_OPTIMIZERS", "TrainConfig", "WARMUP_EPOCHS",
           "default_lr0", "from_dict", "load_config", "lr_plan", "optimizer_steps", "optimizer_warmup_steps",
           "parse_device", "parse_overrides", "read_yaml", "resolve_schedule_name", "schedule_kwargs",
           "ultralytics_train_keys"]


class DetuneWarning(UserWarning):
    """A setting is accepted but probably not what the user wants (shown by the CLI, never printed here)."""


LR_MULT_PARTS = ("backbone", "neck", "head")
LR_SCALINGS = ("none", "linear", "sqrt")
INTERVALS = ("step", "epoch")
NOMINAL_BATCH = 64  # Ultralytics' default nbs: the batch its default lr0 was tuned for
WARMUP_EPOCHS = 3.0  # Ultralytics' default warmup_epochs, which YOLO.train clamps to epochs - 1
# Sane ranges: far beyond any real training, well below what overflows torch or hangs a tool.
MAX_LR = 1e4  # lr0, warmup_bias_lr, max_lr (divergence tests go up to 1e3)
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536  # batch and nbs
MAX_IMGSZ = 16_384
MAX_SEED = 2**32 - 1  # numpy's seed range (Ultralytics seeds numpy with it)
MAX_THREADS = 1024
MAX_LR_MULT = 100.0
MAX_DIVERGENCE_FACTOR = 1e6
MAX_CONFIG_BYTES = 10_000_000

# Ultralytics train arguments that detune owns or that would break per-step LR control.
_RESERVED = {
    "resume": "detune resumes from its own checkpoints; use detune.tune(..., resume=True)",
    "time": "time-limited training re-plans epochs mid-run, which breaks the LR schedule; set epochs",
    "mode": "detune always trains",
    "cfg": "pass a detune YAML config instead",
    "trainer": "detune installs its own trainer",
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one detune training run.

    LR knobs keep Ultralytics' names and defaults, except ``optimizer`` (explicit ``SGD`` instead of
    ``auto``, which silently replaces lr0 and momentum). Any other Ultralytics train argument goes in
    ``extra`` (validated against Ultralytics' own ``cfg/default.yaml``).

    ``warmup_epochs`` left unset (None) reads as Ultralytics' 3.0 clamped to ``epochs - 1``
    (``warmup_clamped`` says when) and stays unset through ``replace`` and ``to_dict``; change settings with
    ``cfg.replace(...)``, not ``dataclasses.replace``, which would pass the clamped value as an explicit one.
    """

    model: str = "yolo11n.yaml"
    data: str = "shapes"  # an Ultralytics data YAML, or "shapes" for the generated dataset
    epochs: int = 100
    batch: int = 16
    imgsz: int = 640
    device: str = "auto"
    seed: int = 0
    project: str = "runs/detune"
    name: str = "train"
    optimizer: str = "SGD"
    lr0: float | str = 0.01  # or "auto": the LR finder's suggestion, resolved by detune.train before training
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 0.0005
    warmup_epochs: float | None = None  # None: Ultralytics' 3.0 clamped to epochs - 1, as YOLO.train does
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    cos_lr: bool = False
    nbs: int = 64
    scheduler: str | None = None  # None: cosine if cos_lr else linear (Ultralytics); schedule-free: constant
    scheduler_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    scheduler_interval: str = "step"
    lr_mult: dict[str, float] = dataclasses.field(default_factory=dict)
    lr_layer_decay: float | None = None  # layer k below the head trains at lr x decay^k (head at lr0)
    lr_scaling: str = "none"
    divergence_factor: float = 10.0  # stop when smoothed loss > factor x its minimum after warmup; 0 = off
    threads: int | None = None  # CPU threads for torch; None = every core this process may use
    tracking: Any = "auto"  # on when $MLFLOW_TRACKING_URI is set; False, True, a URI, a mapping: see tracking_config
    verbose: bool = False
    score_test: bool = False  # after training, score best.pt on the data YAML's test split (test/mAP50-95)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Whether warmup_epochs was left unset survives to_dict/from_dict round trips (to_dict writes None),
        # so a clamped default never turns into an explicit value that a later epochs change would reject.
        object.__setattr__(self, "_warmup_unset", self.warmup_epochs is None)
        _validate(self)

    @property
    def warmup_clamped(self) -> dict[str, float] | None:
        """``{"from": 3.0, "to": epochs - 1}`` when an unset warmup was shortened to fit the training."""
        if getattr(self, "_warmup_unset", False) and self.warmup_epochs < WARMUP_EPOCHS:
            return {"from": WARMUP_EPOCHS, "to": float(self.warmup_epochs)}
        return None

    @property
    def schedule_name(self) -> str:
        return resolve_schedule_name(self.scheduler, self.cos_lr, self.optimizer)

    @property
    def accumulate(self) -> int:
        """Batches per optimizer step, as Ultralytics computes it."""
        return max(round(self.nbs / self.batch), 1)

    @property
    def effective_lr0(self) -> float:
        """lr0 after ``lr_scaling`` relative to Ultralytics' nominal batch of 64 (Goyal et al., 2017)."""
        if self.lr0 == "auto":  # detune.train resolves it first (detune.lr_finder.resolve_auto_lr0)
            raise ConfigError("lr0 is 'auto' and not resolved yet; detune.train runs the LR finder first")
        ratio = self.batch * self.accumulate / NOMINAL_BATCH
        return self.lr0 * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling]

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe mapping that ``TrainConfig.from_dict`` (and ``detune.train``) accepts."""
        out = dataclasses.asdict(self)
        extra = out.pop("extra")
        out.update(extra)
        if getattr(self, "_warmup_unset", False):
            out["warmup_epochs"] = None  # unset stays unset: clamped again to whatever epochs becomes
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        return from_dict({**self.to_dict(), **changes})


FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "extra")


def resolve_schedule_name(scheduler: str | None, cos_lr: bool, optimizer: str | None = None) -> str:
    """The schedule a config runs: ``scheduler``, else Ultralytics' own (cosine with ``cos_lr``, else linear);
    constant for a schedule-free optimizer when ``scheduler`` is unset."""
    if optimizer in SCHEDULE_FREE and scheduler is None:
        return "constant"
    return scheduler or ("cosine" if cos_lr else "linear")


def from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """Build a ``TrainConfig`` from a flat mapping; unknown keys go to ``extra`` if Ultralytics knows them."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"a train config must be a mapping of settings, got {type(values).__name__}")
    own: dict[str, Any] = {}
    extra: dict[str, Any] = dict(values.get("extra") or {})
    for key, value in values.items():
        if key == "extra":
            continue
        if key in FIELDS:
            own[key] = value
        else:
            extra[key] = value
    for key in extra:
        _check_extra_key(key)
    return TrainConfig(**own, extra=extra)


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """Load a train config from a YAML path or mapping, then apply keyword overrides (highest precedence)."""
    base: dict[str, Any] = {}
    if isinstance(source, Mapping):
        base = dict(source)
    elif source is not None:
        base = read_yaml(source)
    return from_dict({**base, **overrides})


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping with ``safe_load``; errors name the file and the fix."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a directory; pass the path of a YAML file (e.g. "
                          f"{str(p / 'train.yaml')!r})")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass the path of a YAML file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {str(p)!r} is {p.stat().st_size:,} bytes, more than a config can be "
                          f"({MAX_CONFIG_BYTES:,}); pass a YAML file of settings")
    try:
        loaded = safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}); a config must be a UTF-8 YAML file: pass the right file or re-save it as "
                          "UTF-8") from None
    except YamlRefused as e:
        raise ConfigError(f"config file {str(p)!r}: {e}") from None
    except RecursionError:
        raise ConfigError(f"config file {str(p)!r} is nested too deeply to be a config; flatten it") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of settings, got {type(loaded).__name__}")
    return loaded


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse Ultralytics-style ``key=value`` arguments; values are YAML scalars (``lr0=1e-3``, ``cos_lr=true``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} must look like key=value, e.g. lr0=0.02")
        try:
            value = safe_load(raw) if raw else None
        except YamlRefused as e:
            raise ConfigError(f"override {key!r}: {e}") from None
        except RecursionError:
            raise ConfigError(f"override {key!r} is nested too deeply; write a flat value") from None
        except yaml.YAMLError:
            value = raw
        target = out
        *parents, leaf = key.split(".")  # scheduler_params.gamma=0.5
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return out


@functools.cache
def ultralytics_train_keys() -> frozenset[str]:
    """Keys of Ultralytics' ``cfg/default.yaml``, read from disk without importing Ultralytics."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    default = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "default.yaml"
    return frozenset(yaml.safe_load(default.read_text()) or {})


def _check_extra_key(key: str) -> None:
    if key in _RESERVED:
        raise ConfigError(f"{key!r} cannot be set through detune: {_RESERVED[key]}")
    known = ultralytics_train_keys()
    if key not in known:
        close = did_you_mean(key, [*FIELDS, *known], n=3)
        hint = f"; {close}" if close else "; see `detune train --help` for valid keys"
        raise ConfigError(f"unknown setting {key!r}{hint}")


def _fail(field: str, value: Any, rule: str, fix: str) -> None:
    raise ConfigError(f"{field} ({value!r}) {rule}; {fix}")


def _number(cfg: TrainConfig, field: str, kind: type = float) -> float:
    value = getattr(cfg, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        _fail(field, value, f"must be {'an integer' if kind is int else 'a number'}", f"set e.g. {field}: "
              f"{getattr(TrainConfig, field, 1)}")
    if not is_number(value):
        _fail(field, value, "must be finite", "use a finite number")
    return value


def _validate(cfg: TrainConfig) -> None:
    for field in ("epochs", "batch", "imgsz", "seed", "nbs"):
        _number(cfg, field, int)
    if cfg.epochs < 1:
        _fail("epochs", cfg.epochs, "must be >= 1", "train for at least one epoch")
    if cfg.warmup_epochs is None:  # unset: Ultralytics' default as YOLO.train applies it, min(3.0, epochs - 1)
        object.__setattr__(cfg, "warmup_epochs", float(min(WARMUP_EPOCHS, cfg.epochs - 1)))
    auto_lr0 = cfg.lr0 == "auto"  # the LR finder's suggestion, resolved by detune.train before use
    if isinstance(cfg.lr0, str) and not auto_lr0:
        _fail("lr0", cfg.lr0, "must be a number > 0 or exactly 'auto' (the LR finder's suggestion)",
              "use e.g. lr0: 0.01, or lr0: auto")
    for field in ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr",
                  "divergence_factor"):
        if not (field == "lr0" and auto_lr0):
            _number(cfg, field)
    _validate_ranges(cfg)
    if not isinstance(cfg.score_test, bool):
        _fail("score_test", cfg.score_test, "must be true or false", "use score_test: true (needs a test: split in "
              "the data YAML) or leave it out")
    if cfg.batch < 1:
        _fail("batch", cfg.batch, "must be a positive batch size (AutoBatch is not supported: the LR schedule "
              "needs the real number of optimizer steps)", "set e.g. batch: 16")
    if cfg.imgsz < 32:
        _fail("imgsz", cfg.imgsz, "must be >= 32 (the largest YOLO stride)", "set e.g. imgsz: 640")
    if cfg.nbs < 1:
        _fail("nbs", cfg.nbs, "must be >= 1", "set nbs to the batch size (one optimizer step per batch) or 64")
    if not auto_lr0 and cfg.lr0 <= 0:
        _fail("lr0", cfg.lr0, "must be > 0", "use a positive learning rate such as 0.01 (SGD) or 0.001 (Adam)")
    if not 0 < cfg.lrf <= 1:
        _fail("lrf", cfg.lrf, "must be in (0, 1] (final lr = lr0 * lrf)", "use e.g. lrf: 0.01")
    for field in ("momentum", "warmup_momentum"):
        if not 0 <= getattr(cfg, field) < 1:
            _fail(field, getattr(cfg, field), "must be in [0, 1)", f"use e.g. {field}: 0.9")
    if not 0 <= cfg.weight_decay <= 1:
        _fail("weight_decay", cfg.weight_decay, "must be in [0, 1]", "use e.g. weight_decay: 0.0005")
    if cfg.warmup_bias_lr < 0:
        _fail("warmup_bias_lr", cfg.warmup_bias_lr, "must be >= 0", "use e.g. warmup_bias_lr: 0.1")
    if not 0 <= cfg.warmup_epochs < cfg.epochs:
        _fail("warmup_epochs", cfg.warmup_epochs, f"must be >= 0 and below epochs ({cfg.epochs})",
              "lower warmup_epochs or raise epochs")
    if cfg.divergence_factor != 0 and cfg.divergence_factor <= 1:
        _fail("divergence_factor", cfg.divergence_factor, "must be > 1, or 0 to turn the guard off",
              "use e.g. divergence_factor: 10")
    if cfg.threads is not None and (isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int)
                                    or not 1 <= cfg.threads <= MAX_THREADS):
        _fail("threads", cfg.threads, f"must be a positive integer <= {MAX_THREADS} or null", "use e.g. threads: 2")
    _validate_choices(cfg)
    _validate_schedule(cfg)
    parse_device(cfg.device)
    if str(cfg.model).endswith(".pt") and not Path(cfg.model).is_file():
        _fail("model", cfg.model, "is a .pt file that does not exist here (detune never downloads weights)",
              "build from a model YAML such as yolo11n.yaml, or pass the path of a local .pt file")


def _validate_ranges(cfg: TrainConfig) -> None:
    """Upper bounds: a value past them is a typo or a test of the tool, and would overflow torch, exhaust memory
    or hang mid-training instead of failing here."""
    for field, hi, fix in (
        ("epochs", MAX_EPOCHS, f"train for at most {MAX_EPOCHS} epochs"),
        ("batch", MAX_BATCH, "use a batch that fits one device, e.g. batch: 16"),
        ("nbs", MAX_BATCH, "set nbs to the batch size (one optimizer step per batch) or 64"),
        ("imgsz", MAX_IMGSZ, "use e.g. imgsz: 640"),
        ("warmup_bias_lr", MAX_LR, "use e.g. warmup_bias_lr: 0.1"),
        ("divergence_factor", MAX_DIVERGENCE_FACTOR, "use e.g. divergence_factor: 10, or 0 to turn the guard off"),
    ):
        if getattr(cfg, field) > hi:
            _fail(field, getattr(cfg, field), f"must be <= {int(hi)}", fix)
    if cfg.lr0 != "auto" and cfg.lr0 > MAX_LR:
        _fail("lr0", cfg.lr0, f"must be <= {MAX_LR:g}", "use a learning rate such as 0.01 (SGD) or 0.001 (Adam)")
    if not 0 <= cfg.seed <= MAX_SEED:
        _fail("seed", cfg.seed, f"must be in [0, {MAX_SEED}] (numpy's seed range)", "use e.g. seed: 0")


def _validate_choices(cfg: TrainConfig) -> None:
    canonical = {o.lower(): o for o in OPTIMIZERS}
    if str(cfg.optimizer).lower() not in canonical:
        _fail("optimizer", cfg.optimizer, f"is not one of {', '.join(OPTIMIZERS)}", "pick one of those, e.g. SGD")
    if canonical[str(cfg.optimizer).lower()] != cfg.optimizer:
        object.__setattr__(cfg, "optimizer", canonical[str(cfg.optimizer).lower()])
    require_package(cfg.optimizer)
    schedule_free_rules(cfg.optimizer, cfg.scheduler, cfg.cos_lr, cfg.momentum)
    if cfg.optimizer == "Prodigy" and cfg.lr0 != "auto" and cfg.lr0 < 0.1:
        warnings.warn(f"optimizer Prodigy estimates its step size and multiplies it by lr0, which its authors keep "
                      f"at 1.0; lr0={cfg.lr0:g} makes every step {1 / cfg.lr0:.0f}x smaller: set lr0: 1.0",
                      DetuneWarning, stacklevel=4)
    if cfg.optimizer == "auto":
        warnings.warn("optimizer='auto' makes Ultralytics ignore lr0, momentum and warmup_bias_lr (it picks AdamW "
                      "or MuSGD with its own lr); set an explicit optimizer such as SGD to control the LR",
                      DetuneWarning, stacklevel=4)
    if cfg.scheduler_interval not in INTERVALS:
        _fail("scheduler_interval", cfg.scheduler_interval, f"must be one of {', '.join(INTERVALS)}",
              "use step (per optimizer step) or epoch (held within each epoch)")
    if cfg.lr_scaling not in LR_SCALINGS:
        _fail("lr_scaling", cfg.lr_scaling, f"must be one of {', '.join(LR_SCALINGS)}", "use none, linear or sqrt")
    if not isinstance(cfg.lr_mult, Mapping):
        _fail("lr_mult", cfg.lr_mult, "must be a mapping", "use e.g. lr_mult: {backbone: 0.1}")
    for part, mult in cfg.lr_mult.items():
        if part not in LR_MULT_PARTS:
            _fail(f"lr_mult.{part}", mult, f"names an unknown part; valid parts are {', '.join(LR_MULT_PARTS)}",
                  "use backbone, neck or head")
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not mult > 0:
            _fail(f"lr_mult.{part}", mult, "must be a number > 0", "use e.g. 0.1 to train that part 10x slower")
        if not mult <= MAX_LR_MULT:
            _fail(f"lr_mult.{part}", mult, f"must be a number in (0, {MAX_LR_MULT:g}]",
                  "use e.g. 0.1 to train that part 10x slower, 2 for 2x faster")
    decay = cfg.lr_layer_decay
    if decay is not None and (isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1):
        _fail("lr_layer_decay", decay, "must be a number in (0, 1] or null",
              "use e.g. 0.8 (each layer 0.8x the lr of the one above it, the head at lr0)")
    prodigy_rules(cfg.optimizer, cfg.lr_mult, decay)


def _validate_schedule(cfg: TrainConfig) -> None:
    from detune.schedules import build_schedule

    if not isinstance(cfg.scheduler_params, Mapping):
        _fail("scheduler_params", cfg.scheduler_params, "must be a mapping", "use e.g. scheduler_params: {gamma: 0.5}")
    # Build once with one step per epoch: raises ConfigError naming any unknown or invalid param. With lr0
    # "auto", params relative to the base lr (a min_lr below it, a max_lr above it) are checked for a low and
    # a high placeholder here, and for real once the LR finder has resolved lr0 (cfg.replace(lr0=...)).
    errors = []
    for base_lr in (0.01, 1e-12, 1e12) if cfg.lr0 == "auto" else (cfg.lr0,):
        try:
            build_schedule(cfg.schedule_name, schedule_kwargs(cfg), base_lr=base_lr,
                           total_steps=float(cfg.epochs), steps_per_epoch=1.0)
            return
        except ConfigError as e:
            errors.append(e)
    raise errors[0]


def schedule_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """Scheduler params with Ultralytics' ``lrf`` filled in for the kinds that use it."""
    from detune.schedules import schedule_params

    params = dict(cfg.scheduler_params)
    if "lrf" in schedule_params(cfg.schedule_name):
        params.setdefault("lrf", cfg.lrf)
    return params


def optimizer_steps(cfg: TrainConfig, train_images: int) -> tuple[int, int, int]:
    """``(images, batches, accumulate)`` per epoch as Ultralytics counts them: ``fraction`` of the train
    images, ceil(images / batch) batches, one optimizer step per round(nbs / batch) batches (capped at the
    batches of the whole run, as Ultralytics caps it)."""
    images = max(1, round(train_images * float(cfg.extra.get("fraction", 1.0) or 1.0)))
    batches = math.ceil(images / cfg.batch)
    return images, batches, min(cfg.accumulate, batches * cfg.epochs)


def lr_plan(cfg: TrainConfig, steps_per_epoch: float) -> Any:
    """The ``detune.schedules.LRPlan`` of a training config (the one place a config becomes a plan: the
    adapter applies it, ``detune schedule`` and the run's lr_schedule.png draw it)."""
    plan = _full_plan(cfg, steps_per_epoch)
    if cfg.optimizer in SCHEDULE_FREE:  # it warms up itself (optimizer_warmup_steps): no second warmup on top
        plan = dataclasses.replace(plan, warmup_steps=0)
    return plan


def optimizer_warmup_steps(cfg: TrainConfig, steps_per_epoch: float) -> int:
    """The ``warmup_steps`` handed to a schedule-free optimizer: the optimizer steps of the warmup detune's
    plan would have had (``warmup_epochs`` x steps per epoch, as Ultralytics rounds it); 0 for the others."""
    return _full_plan(cfg, steps_per_epoch).warmup_steps if cfg.optimizer in SCHEDULE_FREE else 0


def _full_plan(cfg: TrainConfig, steps_per_epoch: float) -> Any:
    from detune.schedules import build_plan

    # Prodigy refuses groups with different lrs (other than 0): its biases warm up from 0 like the weights
    bias_lr = 0.0 if cfg.optimizer == "Prodigy" else cfg.warmup_bias_lr
    return build_plan(scheduler=cfg.schedule_name, scheduler_params=schedule_kwargs(cfg), lr0=cfg.effective_lr0,
                      epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, interval=cfg.scheduler_interval,
                      warmup_epochs=cfg.warmup_epochs, warmup_bias_lr=bias_lr,
                      warmup_momentum=cfg.warmup_momentum, momentum=cfg.momentum)


def parse_device(device: Any) -> str:
    """Normalise a device request: ``cpu``, ``auto``, ``0`` or ``cuda:0``; one device per training."""
    text = str(device).strip().lower().replace("cuda:", "")
    if text in ("cpu", "auto", "mps"):
        return text
    if text.isdigit():
        return text
    parts = [p for p in text.replace("[", "").replace("]", "").split(",") if p.strip()]
    if len(parts) > 1 and all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"device ({device!r}) names several GPUs; detune trains on one device per run (Ultralytics' "
                          "multi-GPU DDP runs in subprocesses detune's per-step LR control cannot reach); use one GPU, "
                          "e.g. device: 0, or run a study (detune tune) to use all GPUs at once")
    raise ConfigError(f"device ({device!r}) is not a device; use cpu, auto, a GPU index such as 0, or cuda:0")
