"""Cross-validated search (issue 16 section 2): ``cv: {folds: 3, seed: 0}``.

Small detection datasets give noisy validation mAP, so "lucky" configurations win studies. With ``cv``,
the train images are split into ``folds`` folds, stratified by class presence (every image in exactly one
fold; iterative stratification, ``iterstrat``), and each trial trains once per fold, fold i held out as
its validation set. The trial's curve is the mean over its folds, epoch by epoch (the study metric), with
the spread between folds beside it (``cv/std``, ``cv/fold<i>``). The data YAML's own val split is untouched:
the folds come from train only, and best.yaml and the confirmation stage train on the full splits.

Each fold is a folder of symlinks (``<output_dir>/cv/fold<i>/{train,val}/{images,labels}``) with its own
data YAML, so Ultralytics keeps a label cache per fold and never rewrites the dataset's own.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detune._checks import is_number, settings_block
from detune._paths import atomic_write
from detune.datasets import DatasetInfo, label_path, split_images
from detune.errors import ConfigError, DatasetError

__all__ = ["CVSettings", "assign_folds", "fold_mean", "parse_cv", "write_folds"]

MAX_FOLDS = 20


@dataclasses.dataclass(frozen=True)
class CVSettings:
    folds: int = 3
    seed: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def parse_cv(raw: Any) -> CVSettings | None:
    """The study's ``cv`` setting: a mapping, true (the defaults), false or absent (None: off).

    Raises:
        ConfigError: naming ``cv.<key>``, the value and the fix.
    """
    settings = settings_block(raw, "cv", CVSettings, "{folds: 3, seed: 0}")
    if settings is None:
        return None
    folds, seed = settings.folds, settings.seed
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= MAX_FOLDS:
        raise ConfigError(f"cv.folds ({folds!r}) must be an integer from 2 to {MAX_FOLDS}; e.g. cv: {{folds: 3}}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"cv.seed ({seed!r}) must be an integer, e.g. cv: {{folds: 3, seed: 0}}")
    return settings


def assign_folds(classes: Sequence[frozenset[int]], folds: int, seed: int) -> list[int]:
    """The fold of each image, given the classes present in it: every image in exactly one fold, each class
    spread over the folds in proportion (iterative stratification of the class-presence matrix)."""
    import numpy as np
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    nc = max((max(c) for c in classes if c), default=-1) + 2  # one column more: images without objects
    presence = np.zeros((len(classes), nc), dtype=np.int8)
    for row, present in enumerate(classes):
        presence[row, list(present) if present else [nc - 1]] = 1
    fold_of = [0] * len(classes)
    splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros((len(classes), 1)), presence)):
        for row in held:
            fold_of[int(row)] = fold
    return fold_of


def write_folds(dataset: DatasetInfo, settings: CVSettings, out: Path) -> list[Path]:
    """Split the train images of ``dataset`` into folds under ``out`` and return one data YAML per fold
    (fold i: its images as val, the other folds' as train). Deterministic for a dataset and settings, so a
    resumed study writes the same folds.

    Raises:
        DatasetError: fewer train images than 2 per fold.
    """
    import yaml

    images = split_images(dataset, "train")
    if len(images) < 2 * settings.folds:
        raise DatasetError(f"cv.folds ({settings.folds}) needs at least {2 * settings.folds} train images, but "
                           f"{dataset.yaml_path} has {len(images)}; lower cv.folds or add images")
    fold_of = assign_folds([_classes(label_path(image)) for image in images], settings.folds, settings.seed)
    paths = []
    for fold in range(settings.folds):
        root = out / f"fold{fold}"
        for split, keep in (("train", lambda f, fold=fold: f != fold), ("val", lambda f, fold=fold: f == fold)):
            chosen = [(n, image) for n, (image, f) in enumerate(zip(images, fold_of, strict=True)) if keep(f)]
            _link_split(root / split, chosen)
        content = {"path": str(root), "train": "train/images", "val": "val/images",
                   "names": dict(enumerate(dataset.names))}
        paths.append(atomic_write(root / "data.yaml", yaml.safe_dump(content, sort_keys=False, allow_unicode=True)))
    return paths


def _classes(label: str) -> frozenset[int]:
    try:
        with open(label, encoding="utf-8-sig") as f:
            return frozenset(int(float(line.split()[0])) for line in f if line.split())
    except FileNotFoundError:  # a background image
        return frozenset()


def _link_split(folder: Path, images: Sequence[tuple[int, str]]) -> None:
    """``folder/images`` and ``folder/labels`` as symlinks to the chosen images and their label files (named
    ``<index>_<name>``: two source folders may hold the same file name); the folder is rebuilt each time."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir(parents=True)
    for n, image in images:
        name = f"{n:06d}_{Path(image).name}"
        os.symlink(image, folder / "images" / name)
        label = Path(label_path(image))
        if label.is_file():
            os.symlink(label, folder / "labels" / (Path(name).stem + ".txt"))


def fold_mean(histories: Sequence[Sequence[Mapping[str, float]]], metric: str) -> list[dict[str, float]]:
    """The trial's curve from its folds' per-epoch records: every numeric key averaged over the folds at each
    epoch all of them reached, plus ``cv/std`` (the spread of ``metric`` between folds, 0 for one fold) and
    ``cv/fold<i>`` (each fold's ``metric``)."""
    epochs = min((len(h) for h in histories), default=0)
    out = []
    for e in range(epochs):
        rows = [h[e] for h in histories]
        keys = [k for k in rows[0] if all(is_number(r.get(k)) for r in rows)]
        record = {k: statistics.fmean(r[k] for r in rows) for k in keys}
        record["epoch"] = rows[0].get("epoch", e + 1)
        values = [r[metric] for r in rows if is_number(r.get(metric))]
        if len(values) == len(rows):
            record["cv/std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            record.update({f"cv/fold{i}": v for i, v in enumerate(values)})
        out.append(record)
    return out
