"""Search spaces: the YAML form (``lr0: {loguniform: [1e-4, 1e-1]}``) parsed, validated and applied.

No Ray import here: ``detune.tuning`` turns ``Dim`` objects into Ray Tune domains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from detune._checks import is_number
from detune._derived import DERIVED_KEYS, apply_derived, baseline_values
from detune.config import FIELDS, TrainConfig, from_dict, resolve_schedule_name, ultralytics_train_keys
from detune.errors import ConfigError, did_you_mean

__all__ = ["DISTRIBUTIONS", "Dim", "apply_params", "baseline_point", "parse_search_space"]

#: distribution name -> (number of args, description of its args)
DISTRIBUTIONS: dict[str, tuple[int | None, str]] = {
    "loguniform": (2, "[low, high] with 0 < low < high"),
    "uniform": (2, "[low, high] with low < high"),
    "quniform": (3, "[low, high, q] with low < high and q > 0"),
    "randint": (2, "[low, high) integers with low < high"),
    "choice": (None, "a non-empty list of values"),
    "grid": (None, "a non-empty list of values, each tried (times num_samples)"),
    "lr_finder": (None, "{span: [below, above]}: log-uniform around the LR finder's suggestion"),
}


@dataclasses.dataclass(frozen=True)
class Dim:
    """One searched setting: a dotted train-config key and its distribution."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def to_yaml(self) -> dict[str, Any]:
        if self.kind == "lr_finder":
            return {"lr_finder": dict(self.args[0])}
        return {self.kind: list(self.args)}

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this distribution can produce (lr_finder ranges are not known yet)."""
        if self.kind in ("choice", "grid"):
            return value in self.args
        if self.kind == "lr_finder" or isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "randint":
            return isinstance(value, int) and self.args[0] <= value < self.args[1]
        return self.args[0] <= value <= self.args[1]

    def bounds(self) -> list[Any]:
        """Values at the edges of the distribution, to validate against the base config before compute."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        if self.kind == "lr_finder":
            return []
        return [self.args[0], self.args[1]]


def parse_search_space(raw: Mapping[str, Any], base: TrainConfig) -> dict[str, Dim]:
    """Parse the YAML form into ``{dotted_key: Dim}``, checking keys, distributions and their bounds.

    Nested mappings are flattened: ``scheduler_params: {onecycle: {pct_start: {uniform: [0.1, 0.5]}}}``
    becomes ``scheduler_params.onecycle.pct_start``, which applies only in trials whose ``scheduler`` is
    ``onecycle`` (conditional params); ``scheduler_params.gamma`` applies to every trial.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("search_space must be a non-empty mapping, e.g. search_space: {lr0: {loguniform: "
                          "[1.0e-4, 1.0e-1]}}")
    dims: dict[str, Dim] = {}
    for key, spec in _flatten(raw):
        dims[key] = _parse_dim(key, spec)
    for dim in dims.values():
        parts = dim.key.split(".")
        context = {"scheduler": parts[1]} if parts[0] == "scheduler_params" and len(parts) == 3 else {}
        if dim.key == "lr0_scale" and base.lr0 == "auto":
            continue  # a range around the LR finder's suggestion: checked once detune.tune has resolved it
        for value in dim.bounds():
            try:
                from_dict(apply_params(base.to_dict(), {**context, dim.key: value}))
            except ConfigError as e:
                raise ConfigError(f"search_space.{dim.key} reaches {value!r}, which is invalid: {e}") from None
    return dims


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, spec in raw.items():
        path = f"{prefix}{key}"
        if isinstance(spec, Mapping) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS:
            out.append((path, spec))
        elif isinstance(spec, Mapping) and path.split(".")[0] in ("scheduler_params", "lr_mult") and spec:
            out.extend(_flatten(spec, f"{path}."))
        else:
            raise ConfigError(f"search_space.{path} ({spec!r}) must be one distribution such as "
                              f"{{loguniform: [1.0e-4, 1.0e-1]}}; valid: {', '.join(DISTRIBUTIONS)}")
    return out


def _parse_dim(key: str, spec: Mapping[str, Any]) -> Dim:
    top = key.split(".")[0]
    if top not in FIELDS and top not in ultralytics_train_keys() and top not in DERIVED_KEYS:
        close = did_you_mean(top, [*FIELDS, *ultralytics_train_keys(), *DERIVED_KEYS], n=3)
        hint = f"; {close}" if close else ""
        raise ConfigError(f"search_space.{key}: {top!r} is not a train setting{hint}")
    kind, args = next(iter(spec.items()))
    arity, rule = DISTRIBUTIONS[kind]
    where = f"search_space.{key}.{kind}"
    if kind == "lr_finder":
        span = (args or {}).get("span", [0.1, 3.0]) if isinstance(args, Mapping) else None
        if key != "lr0" or not (isinstance(span, list) and len(span) == 2 and 0 < span[0] < 1 < span[1]):
            raise ConfigError(f"{where} ({args!r}) must search lr0 with {{span: [below, above]}}, "
                              "0 < below < 1 < above, e.g. {lr_finder: {span: [0.1, 3]}}")
        return Dim(key, kind, ({"span": [float(span[0]), float(span[1])]},))
    if not isinstance(args, list) or not args or (arity is not None and len(args) != arity):
        raise ConfigError(f"{where} ({args!r}) must be {rule}")
    if arity is not None:
        if not all(is_number(a) for a in args):
            raise ConfigError(f"{where} ({args!r}) must hold finite numbers: {rule}")
        low, high = args[0], args[1]
        if not low < high or (kind == "loguniform" and low <= 0) or (kind == "quniform" and args[2] <= 0):
            raise ConfigError(f"{where} ({args!r}) must be {rule}; swap or fix the bounds")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{where} ({args!r}) must hold integers")
    return Dim(key, kind, tuple(args))


def apply_params(train: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Merge sampled ``{dotted_key: value}`` into a flat train mapping.

    ``scheduler_params.<kind>.<param>`` is applied only when the trial's scheduler is ``<kind>``.
    """
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in train.items()}
    for key, value in params.items():
        if "." not in key:
            out[key] = value
    apply_derived(out, train)  # lr0_scale, one_minus_momentum (detune._derived)
    scheduler = resolve_schedule_name(out.get("scheduler"), bool(out.get("cos_lr")), out.get("optimizer"))
    for key, value in params.items():
        parts = key.split(".")
        if len(parts) == 1:
            continue
        if parts[0] == "scheduler_params" and len(parts) == 3:
            if parts[1] != scheduler:
                continue
            parts = [parts[0], parts[2]]
        target = out.setdefault(parts[0], {})
        for part in parts[1:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def baseline_point(dims: Mapping[str, Dim], base: TrainConfig) -> dict[str, Any] | None:
    """The base config's own values of the searched keys (Ultralytics' defaults unless the study's train
    config sets others: lr0 0.01, lrf 0.01, momentum 0.937, ...), or None when one of them lies outside its
    distribution or is not set. Searchers try it first, so a study never ends below the untuned baseline
    and its report compares against a real baseline trial."""
    flat = {**base.to_dict(), "scheduler": base.schedule_name, "warmup_epochs": base.warmup_epochs,
            **baseline_values(base.to_dict())}
    point = {}
    for key, dim in dims.items():
        value: Any = flat
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if not dim.contains(value):
            return None
        point[key] = value
    return point

