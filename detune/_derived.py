"""Derived search keys: sampled on a scale that suits the search, turned into train settings by apply_params.

- ``lr0_scale``: lr0 = the base config's lr0 x (Ultralytics' default lr of the trial's optimizer family /
  that of the base config's optimizer) x scale. One dimension thus searches "x[1/10, 10] around the
  centre" for SGD and for AdamW at once, each around its own lr (0.01 and 0.001 for Ultralytics' defaults).
- ``one_minus_momentum``: momentum = 1 - value, so a log-uniform dimension samples momentum densely near 1
  (0.9 and 0.99 are as far apart as 0.99 and 0.999).

Both are plain float dimensions for every searcher (random, Optuna, PBT's mutations): the transform
happens only when a trial's config is built. Pure: imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from detune.config import default_lr0
from detune.errors import ConfigError

DERIVED_KEYS = ("lr0_scale", "one_minus_momentum")


def baseline_values(train: Mapping[str, Any]) -> dict[str, Any]:
    """The derived keys' values that reproduce the base config itself (its own lr0 and momentum)."""
    momentum = train.get("momentum")
    return {"lr0_scale": 1.0,
            "one_minus_momentum": 1.0 - momentum if isinstance(momentum, (int, float)) else None}


def apply_derived(out: MutableMapping[str, Any], base: Mapping[str, Any]) -> None:
    """Replace derived keys in a trial's flat train mapping ``out`` by the settings they stand for; ``base``
    is the study's train mapping (its lr0 is the centre of ``lr0_scale``)."""
    if "one_minus_momentum" in out:
        out["momentum"] = round(1.0 - float(out.pop("one_minus_momentum")), 12)
    if "lr0_scale" in out:
        scale, centre = float(out.pop("lr0_scale")), base.get("lr0", 0.01)
        if isinstance(centre, bool) or not isinstance(centre, (int, float)):
            raise ConfigError(f"search_space.lr0_scale needs a number as the base lr0, got {centre!r}; detune.tune "
                              "resolves lr0: auto with the LR finder before the trials start (set train.lr0 to a "
                              "number to search around it yourself)")
        base_opt, trial_opt = str(base.get("optimizer", "SGD")), str(out.get("optimizer", "SGD"))
        out["lr0"] = centre * default_lr0(trial_opt) / default_lr0(base_opt) * scale
