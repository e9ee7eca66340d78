"""Datasets for detune: the generated shapes dataset and a pre-training check of Ultralytics data YAMLs."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detune._images import IMG_FORMATS, MAX_REPORTED, ImageChecker
from detune._paths import atomic_write
from detune._shapes import SHAPE_NAMES, ShapesSpec, make_shapes, make_shapes_from_spec, shapes_spec
from detune.errors import ConfigError, DatasetError

# Ultralytics accepts coordinates up to 1.01 and down to -0.01 (verify_image_label); so does detune.
COORD_TOLERANCE = 0.01
_MAX_REPORTED = MAX_REPORTED  # label problems listed in one DatasetError (shared with the image checks)


@dataclass(frozen=True)
class DatasetInfo:
    """What ``check_dataset`` found: resolved locations, classes, counts and non-fatal warnings."""

    yaml_path: Path
    root: Path
    names: tuple[str, ...]
    train: tuple[Path, ...]  # resolved train sources (dirs or list files), absolute
    val: tuple[Path, ...]
    train_images: int
    val_images: int
    train_instances: int
    val_instances: int
    val_is_train: bool
    warnings: tuple[str, ...] = ()
    train_dropped: tuple[str, ...] = ()  # images Ultralytics cannot decode and skips (not in the counts)
    val_dropped: tuple[str, ...] = ()
    # the checked image paths of a split whose sources hold more (unreadable or duplicated paths); () otherwise
    train_files: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    val_files: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    test: tuple[Path, ...] = ()  # the held-out test split's sources, absolute; () when the YAML has none

    @property
    def nc(self) -> int:
        """Number of classes."""
        return len(self.names)

    def summary(self) -> dict[str, str | int]:
        """Flat ``data.*`` entries for logging as run parameters (MLflow-safe keys, str or int values)."""
        return {
            "data.yaml": str(self.yaml_path),
            "data.root": str(self.root),
            "data.nc": self.nc,
            "data.train_images": self.train_images,
            "data.val_images": self.val_images,
            "data.train_instances": self.train_instances,
            "data.val_instances": self.val_instances,
            "data.val_is_train": "true" if self.val_is_train else "false",
            "data.warnings": len(self.warnings),
            "data.train_dropped": len(self.train_dropped),
            "data.val_dropped": len(self.val_dropped),
        }

    def to_ultralytics(self) -> dict[str, Any]:
        """The data YAML content with absolute paths: Ultralytics resolves it the same from any CWD."""

        def one(sources: tuple[Path, ...]) -> str | list[str]:
            return str(sources[0]) if len(sources) == 1 else [str(s) for s in sources]

        out = {
            "path": str(self.root),
            "train": one(self.train),
            "val": one(self.val),
            "names": dict(enumerate(self.names)),
        }
        if self.test:  # kept for scoring the confirmed best on held-out data (not checked like train/val)
            out["test"] = one(self.test)
        return out

    def write_yaml(self, dest: str | Path) -> Path:
        """Write ``to_ultralytics()`` to ``dest`` (a .yaml path), return it; give it to YOLO as ``data=``.

        A split with unreadable images or paths reaching the same file twice is written as a list of exactly
        the checked images (``<dest stem>.<split>.txt`` beside ``dest``), so Ultralytics trains on each
        readable file once and never tries the unreadable ones."""
        import yaml

        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        content = self.to_ultralytics()
        for key, files in (("train", self.train_files), ("val", self.val_files)):
            if files:
                content[key] = str(atomic_write(dest.with_name(f"{dest.stem}.{key}.txt"), "\n".join(files) + "\n"))
        return atomic_write(dest, yaml.safe_dump(content, sort_keys=False, allow_unicode=True))


def check_dataset(data: str | Path, *, datasets_dir: str | Path | None = None) -> DatasetInfo:
    """Validate an Ultralytics detection data YAML and its label files before any training.

    Path rules follow Ultralytics' ``check_det_dataset`` plus one addition. Without ``path`` the root is the
    YAML's folder; an absolute ``path`` is used as is; a relative ``path`` is tried against the YAML's folder
    (detune's addition), then the CWD, then ``datasets_dir`` (Ultralytics tries only the CWD, then its
    ``datasets_dir`` setting). To train on exactly what was checked, pass ``info.write_yaml(...)`` to YOLO.
    ``train``/``val`` are each a folder (searched recursively), a ``.txt`` list of image paths (``./x`` is
    relative to the list file, other relative paths to the CWD), or a list of those; a string starting with
    ``../`` that does not exist is retried without it. A label file is the image path with its last
    ``/images/`` replaced by ``/labels/`` and the suffix by ``.txt``; an image without one is a background
    image. A label line is ``class x_center y_center width height`` (or ``class x1 y1 x2 y2 ...``, a
    polygon): class an integer in ``0..nc-1``, coordinates in [0, 1] give or take ``COORD_TOLERANCE``,
    width and height >= 0.
    Every image's header is opened with Pillow, as Ultralytics does before training: a file that does not
    open, is smaller than 10 px a side or is in a format Ultralytics does not read is skipped by Ultralytics,
    so it is left out of the counts, listed in ``train_dropped``/``val_dropped`` and named in a warning.
    Paths are de-duplicated by the file they resolve to; a symlink to a folder that contains it is refused.

    Args:
        data: path of the data YAML (``.yaml``/``.yml``).
        datasets_dir: last folder to try for a relative ``path`` (Ultralytics' ``datasets_dir`` setting).

    Returns:
        A ``DatasetInfo``; ``warnings`` lists non-fatal findings (val equal to train, images without labels,
        unreadable images, duplicated paths).

    Raises:
        DatasetError: naming the file (and line) at fault, the bad value and the fix.

    Example:
        >>> info = check_dataset(make_shapes("shapes-demo", n_train=3, n_val=2, imgsz=64))
        >>> (info.nc, info.names[0], info.val_images, info.val_is_train)
        (3, 'circle', 2, False)
    """
    yaml_path = Path(data).expanduser()
    raw, lines = _load_yaml(yaml_path)
    notes: list[str] = []
    names = _names(yaml_path, raw, lines, notes)
    root = _root(
        yaml_path, raw, lines, None if datasets_dir is None else Path(datasets_dir).expanduser(), notes
    )
    if "val" not in raw and "validation" in raw:
        raw["val"] = raw.pop("validation")
        notes.append(f"{yaml_path}: key 'validation' read as 'val' (as Ultralytics does); rename it to 'val'")
    reader, opener = _LabelReader(len(names)), ImageChecker()
    splits: dict[str, tuple[tuple[Path, ...], list[str], tuple[int, int, str | None]]] = {}
    dropped: dict[str, tuple[str, ...]] = {}
    kept: dict[str, tuple[str, ...]] = {}
    lines.setdefault("val", lines.get("validation", 1))
    found: dict[str, list[str]] = {}
    for key in ("train", "val"):
        sources = _sources(yaml_path, raw, lines, key, root)
        found[key], paths = _images(yaml_path, lines[key], key, sources, notes)
        said = key == "val" and found["val"] == found["train"]  # val is train: every finding is said once
        images, dropped[key] = opener.split(yaml_path, lines[key], key, found[key], [] if said else notes)
        kept[key] = tuple(images) if len(images) < paths else ()
        splits[key] = (sources, images, reader.read_all(images))
    reader.raise_if_errors(yaml_path)
    test = _test_sources(yaml_path, raw, lines, root, notes)
    return dataclasses.replace(_info(yaml_path, root, names, lines, splits, notes, dropped),
                               train_files=kept["train"], val_files=kept["val"], test=test)


def _test_sources(path: Path, raw: dict[str, Any], lines: dict[str, int], root: Path,
                  notes: list[str]) -> tuple[Path, ...]:
    """The optional ``test:`` split's sources (resolved as train/val are); one that does not exist is a
    warning and is left out, since nothing trains on it."""
    if not has_test_split(raw):
        return ()
    try:
        return _sources(path, raw, lines, "test", root)
    except DatasetError as e:
        notes.append(f"{e}; the test split is left out (no held-out scores)")
        return ()


def has_test_split(data: str | Path | Mapping[str, Any]) -> bool:
    """Whether a data YAML (a path or its mapping) names a held-out ``test:`` split (a non-empty value; on
    a path, one that exists)."""
    if isinstance(data, Mapping):
        value = data.get("test")
        return bool(value) and (isinstance(value, str) or (isinstance(value, list) and all(value)))
    path = Path(data)
    raw, lines = _load_yaml(path)
    if not has_test_split(raw):
        return False
    try:
        _sources(path, raw, lines, "test", _root(path, raw, lines, None, []))
    except DatasetError:
        return False
    return True


def _load_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The YAML mapping and the 1-based line of each top-level key (``names[k]`` for class entries)."""
    import yaml

    from detune._yaml import safe_load

    if path.suffix.lower() not in {".yaml", ".yml"}:
        raise DatasetError(f"{path}: a data YAML must end in .yaml or .yml; pass the dataset's YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: data YAML not found; pass the path of an existing file (e.g. datasets/coco128.yaml)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the data YAML ({exc})") from exc
    try:
        raw = safe_load(text)  # detune's reader: refuses duplicated keys and anchor bombs
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise DatasetError(f"{where}: YAML syntax error: {problem}; fix the YAML at that line") from exc
    if not isinstance(raw, dict) or not isinstance(node, yaml.MappingNode):
        raise DatasetError(
            f"{path}: expected a mapping with train, val and names keys, got {type(raw).__name__}"
        )
    lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        lines[str(key_node.value)] = key_node.start_mark.line + 1
        if key_node.value == "names" and isinstance(value_node, yaml.MappingNode):
            lines.update({f"names[{k.value}]": k.start_mark.line + 1 for k, _ in value_node.value})
        elif key_node.value == "names" and isinstance(value_node, yaml.SequenceNode):
            lines.update({f"names[{i}]": v.start_mark.line + 1 for i, v in enumerate(value_node.value)})
    return raw, lines


def _names(path: Path, raw: dict[str, Any], lines: dict[str, int], notes: list[str]) -> tuple[str, ...]:
    names, nc = raw.get("names"), raw.get("nc")
    at = f"{path}:{lines.get('names', 1)}"
    if names is None and nc is None:
        raise DatasetError(
            f"{path}: no 'names' key; add names: {{0: first_class, 1: second_class, ...}} "
            "with one entry per class id"
        )
    if nc is not None:
        number = _as_float(nc) if not isinstance(nc, bool) else None  # Ultralytics accepts '3' and 3.0
        if number is None or not math.isfinite(number) or number != int(number) or number < 1:
            raise DatasetError(
                f"{path}:{lines['nc']}: nc ({nc!r}) must be a positive integer; set it to the "
                "number of classes or remove it (names decides)"
            )
        nc = int(number)
    if names is None:
        notes.append(
            f"{path}: no 'names'; classes are called class_0..class_{nc - 1}; add names for readable logs"
        )
        return tuple(f"class_{i}" for i in range(nc))
    if isinstance(names, list):
        items = dict(enumerate(names))
    elif isinstance(names, dict):
        items = {}
        for key, value in names.items():
            if isinstance(key, bool) or not (
                isinstance(key, int) or (isinstance(key, str) and key.isdigit())
            ):
                raise DatasetError(
                    f"{path}:{lines.get(f'names[{key}]', lines['names'])}: class id {key!r} in "
                    "names is not an integer; use names: {0: first_class, 1: ...}"
                )
            items[int(key)] = value
    else:
        raise DatasetError(
            f"{at}: names must be a list or a mapping of class id to name, got "
            f"{type(names).__name__} ({names!r})"
        )
    if not items:
        raise DatasetError(f"{at}: names is empty; list at least one class")
    missing = sorted(set(range(len(items))) - set(items))
    if missing:
        bad = max(items)
        raise DatasetError(
            f"{path}:{lines.get(f'names[{bad}]', lines['names'])}: class ids in names must be "
            f"0..{len(items) - 1} without gaps; found id {bad} while id {missing[0]} is missing"
        )
    if nc is not None and nc != len(items):
        raise DatasetError(
            f"{path}:{lines['nc']}: nc ({nc}) does not match the {len(items)} entries of names; "
            f"set nc: {len(items)} or remove nc"
        )
    return tuple(str(items[i]) for i in range(len(items)))


def _root(
    path: Path, raw: dict[str, Any], lines: dict[str, int], datasets_dir: Path | None, notes: list[str]
) -> Path:
    value = raw.get("path")
    if value is None or value == "":
        return path.parent.resolve()  # Ultralytics: no `path` -> the YAML's folder
    if not isinstance(value, str):
        raise DatasetError(f"{path}:{lines['path']}: path ({value!r}) must be a folder name (a string)")
    given = Path(value).expanduser()
    tried = (
        {"": given}
        if given.is_absolute()
        else {" (beside the YAML)": path.parent / given, " (the CWD)": Path.cwd() / given}
    )
    if datasets_dir is not None and not given.is_absolute():
        tried[" (datasets_dir)"] = datasets_dir / given
    found = next((p.resolve() for p in tried.values() if p.is_dir()), None)
    if found is None:
        places = ", ".join(f"{p}{why}" for why, p in tried.items())
        raise DatasetError(
            f"{path}:{lines['path']}: path {value!r} is not an existing folder (tried {places}); "
            "fix path, or place (or symlink) the dataset there"
        )
    if given.is_absolute():
        return found
    cwd_root = (Path.cwd() / given).resolve()
    if found != cwd_root and cwd_root.is_dir():
        notes.append(
            f"{path}:{lines['path']}: relative path {value!r} is read as {found} (beside the YAML), "
            f"but Ultralytics would use {cwd_root} (the CWD); train with info.write_yaml(...) output"
        )
    return found


def _sources(
    path: Path, raw: dict[str, Any], lines: dict[str, int], key: str, root: Path
) -> tuple[Path, ...]:
    if key not in raw:
        raise DatasetError(
            f"{path}: no '{key}' key; add {key}: images/{key} (a folder, a .txt list of images, "
            "or a list of those), relative to path"
        )
    value, at = raw[key], f"{path}:{lines[key]}"
    if isinstance(value, str) and value:
        found = (root / value).resolve()
        if not found.exists() and value.startswith("../"):  # Ultralytics retries without the leading ../
            found = (root / value[3:]).resolve()
        sources = [found]
    elif isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        sources = [(root / v).resolve() for v in value]
    else:
        raise DatasetError(
            f"{at}: {key} ({value!r}) must be a folder, a .txt list of images, or a non-empty list of those"
        )
    for source in sources:
        if not source.exists():
            raise DatasetError(
                f"{at}: {key} {source} not found (relative to the dataset root {root}); "
                f"fix '{key}:' or 'path:', or place (or symlink) the data there"
            )
        if source.is_file() and source.suffix[1:].lower() in IMG_FORMATS:
            raise DatasetError(f"{at}: {key} {source} is a single image; point it at a folder or a .txt list")
    return tuple(sources)


def _images(path: Path, line: int, key: str, sources: tuple[Path, ...], notes: list[str]) -> tuple[list[str], int]:
    """The split's image paths, one per real file (a path outside symlinks wins, else the first sorted), and
    the number of paths found."""
    files: list[str] = []
    for source in sources:
        files += _walk_images(source) if source.is_dir() else _list_file(source)
    if not files:
        where = ", ".join(str(s) for s in sources)
        raise DatasetError(
            f"{path}:{line}: {key} has no images in {where}; supported suffixes: "
            f"{', '.join(sorted(IMG_FORMATS))}"
        )
    by_file: dict[str, list[str]] = {}
    for file in sorted(files):
        by_file.setdefault(os.path.realpath(file), []).append(file)
    kept = [real if real in paths else paths[0] for real, paths in by_file.items()]
    if len(kept) < len(files):
        real, paths = next((r, p) for r, p in by_file.items() if len(p) > 1)
        notes.append(
            f"{len(files) - len(kept)} {key} image paths are duplicates: they resolve to the same file as "
            f"another path (e.g. {' and '.join(paths[:2])} are both {real}); each file is counted once here, "
            "and detune.train trains on each once; remove the extra symlinks or list entries"
        )
    return sorted(kept), len(files)


def split_images(dataset: DatasetInfo, split: str) -> list[str]:
    """The checked image paths of ``split`` (train or val), sorted: what Ultralytics trains on, each file once."""
    files = dataset.train_files if split == "train" else dataset.val_files
    if files:  # the sources hold unreadable or duplicated paths: the checked list
        return list(files)
    found: list[str] = []
    for source in dataset.train if split == "train" else dataset.val:
        found += _walk_images(source) if source.is_dir() else _list_file(source)
    return sorted(found)


def _is_image(name: str) -> bool:
    return name.rpartition(".")[-1].lower() in IMG_FORMATS


def _walk_images(folder: Path) -> list[str]:
    found: list[str] = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # glob("**/*.*") skips hidden entries too
        real_top = os.path.realpath(top)
        for name in dirs:
            target = os.path.realpath(os.path.join(top, name))
            if real_top == target or real_top.startswith(target + os.sep):  # Ultralytics' glob would loop ~40x
                raise DatasetError(
                    f"{os.path.join(top, name)} is a symlink loop: it points to {target}, a folder that contains "
                    f"it, so Ultralytics would read the same images again and again; remove the link or point "
                    f"it outside {target}"
                )
        found += [os.path.join(top, f) for f in files if not f.startswith(".") and _is_image(f)]
    return found


def _list_file(source: Path) -> list[str]:
    try:
        text = source.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{source}: cannot read this image list ({exc}); it must be UTF-8 text") from exc
    parent, found = str(source.parent) + os.sep, list[str]()
    for number, entry in enumerate(text.splitlines(), 1):
        if not _is_image(entry):
            continue  # Ultralytics silently skips non-image lines
        image = os.path.abspath(entry.replace("./", parent, 1) if entry.startswith("./") else entry)
        if not os.path.isfile(image):
            raise DatasetError(
                f"{source}:{number}: image {entry!r} not found (looked at {image}); './' paths are "
                "relative to the list file, other relative paths to the current directory"
            )
        found.append(image)
    return found


def label_path(image: str) -> str:
    """Ultralytics' ``img2label_paths``: the last /images/ becomes /labels/, the suffix becomes .txt."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return labels.join(image.rsplit(images, 1)).rsplit(".", 1)[0] + ".txt"


class _LabelReader:
    """Reads label files once each, counting instances and collecting up to ``_MAX_REPORTED`` problems."""

    def __init__(self, nc: int) -> None:
        self.nc = nc
        self.problems: list[str] = []
        self.unreported = 0
        self._counts: dict[str, int | None] = {}

    def read_all(self, images: list[str]) -> tuple[int, int, str | None]:
        """Instances, images without a label file, and the first such label path."""
        instances, missing, first_missing = 0, 0, None
        for image in images:
            label = label_path(image)
            if label not in self._counts:
                self._counts[label] = self._read(label)
            count = self._counts[label]
            if count is None:
                missing, first_missing = missing + 1, first_missing or label
            else:
                instances += count
        return instances, missing, first_missing

    def raise_if_errors(self, yaml_path: Path) -> None:
        if self.problems:
            more = f"\n  ... and {self.unreported} more" if self.unreported else ""
            count = len(self.problems) + self.unreported
            raise DatasetError(
                f"{count} label problem(s) in the dataset of {yaml_path}:\n  "
                + "\n  ".join(self.problems)
                + more
            )

    def _problem(self, text: str) -> None:
        if len(self.problems) < _MAX_REPORTED:
            self.problems.append(text)
        else:
            self.unreported += 1

    def _read(self, label: str) -> int | None:
        try:
            with open(label, encoding="utf-8-sig") as handle:
                text = handle.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self._problem(f"{label}: cannot read this label file ({exc}); it must be UTF-8 text")
            return 0
        count, kinds = 0, set[bool]()
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if fields:
                problem = _check_row(fields, self.nc)
                if problem:
                    self._problem(f"{label}:{number}: {problem}")
                else:  # a malformed row is reported above; it is neither a box nor a polygon
                    kinds.add(len(fields) == 5)
                count += 1
        if len(kinds) == 2:
            self._problem(
                f"{label}: mixes box rows (5 numbers) and polygon rows; Ultralytics drops this image; "
                "use one format per file"
            )
        return count


_BOX_FIELDS = ("x_center", "y_center", "width", "height")


def _check_row(fields: list[str], nc: int) -> str | None:
    """Why one label row is invalid, or None."""
    n = len(fields)
    if n != 5 and (n < 7 or n % 2 == 0):
        return (
            f"expected 5 numbers 'class x_center y_center width height', got {n}: {' '.join(fields)!r}; "
            "fix or remove the line"
        )
    try:
        values = [float(f) for f in fields]
    except ValueError:
        bad = next(f for f in fields if _as_float(f) is None)
        return f"{bad!r} is not a number; each line is 'class x_center y_center width height'"
    if not all(math.isfinite(v) for v in values):
        return f"non-finite value in {' '.join(fields)!r}; replace it with a number in [0, 1]"
    cls = values[0]
    if cls != int(cls):
        return f"class id {fields[0]} is not an integer; class ids are 0..{nc - 1}"
    if not 0 <= cls < nc:
        return (
            f"class id {fields[0]} is out of range: the data YAML has {nc} classes (ids 0..{nc - 1}); "
            "fix the class id or add the class to names"
        )
    coord_names = _BOX_FIELDS if n == 5 else tuple(f"{'xy'[i % 2]}{i // 2 + 1}" for i in range(n - 1))
    for name, text, value in zip(coord_names, fields[1:], values[1:], strict=True):
        if not -COORD_TOLERANCE <= value <= 1 + COORD_TOLERANCE:
            return (
                f"{name} {text} is outside [0, 1]: coordinates must be normalised by the image width and "
                "height; divide pixel values by the image size"
            )
    if n == 5 and min(values[3], values[4]) < 0:
        return f"negative width or height in {' '.join(fields)!r}; width and height must be >= 0"
    return None


def _as_float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _info(
    path: Path,
    root: Path,
    names: tuple[str, ...],
    lines: dict[str, int],
    splits: dict[str, tuple[tuple[Path, ...], list[str], tuple[int, int, str | None]]],
    notes: list[str],
    dropped: dict[str, tuple[str, ...]],
) -> DatasetInfo:
    (train_sources, train_images, train_counts), (val_sources, val_images, val_counts) = (
        splits["train"],
        splits["val"],
    )
    for key, images, (instances, _, _) in (
        ("train", train_images, train_counts),
        ("val", val_images, val_counts),
    ):
        if instances == 0:
            raise DatasetError(
                f"{path}:{lines[key]}: no labelled objects in {key}; labels are read from the image "
                f"path with its last /images/ replaced by /labels/ and suffix .txt, e.g. "
                f"{label_path(images[0])}; put the label files there"
            )
    warnings = list(notes)
    train_set, val_set = set(train_images), set(val_images)
    val_is_train = train_set == val_set
    if val_is_train:
        warnings.append(
            f"val and train are the same {len(val_set)} images: val mAP is training mAP (nothing is "
            "held out), so tuning on it rewards memorising; use a separate val split for a fair score"
        )
    elif overlap := len(train_set & val_set):
        warnings.append(
            f"{overlap} of {len(val_set)} val images are also train images; val mAP is optimistic"
        )
    for key, images, (_, missing, first) in (
        ("train", train_images, train_counts),
        ("val", val_images, val_counts),
    ):
        if missing and not (key == "val" and val_is_train):
            warnings.append(
                f"{missing} of {len(images)} {key} images have no label file and count as background "
                f"images (e.g. {first})"
            )
    return DatasetInfo(
        yaml_path=path.resolve(),
        root=root,
        names=names,
        train=train_sources,
        val=val_sources,
        train_images=len(train_images),
        val_images=len(val_images),
        train_instances=train_counts[0],
        val_instances=val_counts[0],
        val_is_train=val_is_train,
        warnings=tuple(warnings),
        train_dropped=dropped["train"],
        val_dropped=dropped["val"],
    )


def resolve_data(data: str | os.PathLike[str]) -> Path:
    """A data YAML path, or ``shapes[:key=value,...]``: the generated dataset (``make_shapes`` arguments,
    e.g. ``shapes:imgsz=64,n_train=256``), made once under detune's home and reused."""
    name, _, spec = str(data).partition(":")
    if name != "shapes":
        return Path(data).expanduser().resolve()
    import inspect

    from detune import _runtime
    from detune._yaml import safe_load

    valid = [p for p in inspect.signature(make_shapes).parameters if p != "root"]
    overrides: dict[str, Any] = {}
    for pair in filter(None, spec.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or key.strip() not in valid:
            raise ConfigError(f"data ({data!r}): {pair!r} is not key=value with a key in {', '.join(valid)}; "
                              "use e.g. data: shapes:imgsz=64,n_train=256")
        overrides[key.strip()] = safe_load(value)
    tag = "-".join(f"{k}{v}" for k, v in sorted(overrides.items())) or "default"
    return make_shapes(_runtime.home() / "datasets" / f"shapes-{tag}", **overrides)


@dataclass(frozen=True)
class PreparedData:
    """A run's data, prepared once and handed to the LR finder, the training and the trials: the checked
    dataset and its YAML with absolute paths (``yaml``), which Ultralytics resolves exactly as checked from
    any working directory (a Ray trial's too)."""

    dataset: DatasetInfo
    yaml: Path


def prepare_data(data: str | os.PathLike[str]) -> PreparedData:
    """Resolve ``data`` (see ``resolve_data``), check it (``check_dataset``) and write its absolute YAML.

    Raises:
        DatasetError: the dataset fails the check. ConfigError: a bad ``shapes:`` spec.
    """
    import hashlib

    from detune import _runtime

    dataset = check_dataset(resolve_data(data))
    key = hashlib.sha1(str(dataset.yaml_path).encode()).hexdigest()[:12]
    return PreparedData(dataset, dataset.write_yaml(_runtime.home() / "data" / f"{dataset.yaml_path.stem}-{key}.yaml"))


__all__ = [
    "COORD_TOLERANCE",
    "IMG_FORMATS",
    "SHAPE_NAMES",
    "DatasetInfo",
    "PreparedData",
    "ShapesSpec",
    "check_dataset",
    "label_path",
    "prepare_data",
    "resolve_data",
    "make_shapes",
    "make_shapes_from_spec",
    "shapes_spec",
    "split_images",
]
