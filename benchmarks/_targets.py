"""Datasets of the fine-tuning benchmarks: a generated SOURCE for pretraining, a generated TARGET that
differs from it, COCO128 and the from-scratch shapes.

SOURCE ("source", 15 classes): plain geometric shapes (circle ... rectangle) filled solid, striped,
checkered or with a gradient, in saturated colours, on gradients, soft blobs or faint textures, with
thin-line and small-shape clutter. TARGET ("target", 6 classes none of which is in the source): star,
ring, crescent, arrow, heart, bolt, filled solid, outlined or hatched in muted (low-saturation) colours on
cloud-like value-noise backgrounds, with arcs and specks as clutter. Both: 1-4 non-overlapping objects
per image, small random rotations, tight boxes taken from the drawn mask, train / val / test splits,
Ultralytics (COCO128-style) layout: ``images/<split>``, ``labels/<split>``, ``data.yaml``.

The bytes depend only on the ``SceneSpec`` (and ``GENERATOR_VERSION``): image i of a split is drawn from
its own generator seeded by (seed, kind, split, i), so it does not depend on the split's size. Datasets
are made once under the benchmark cache (``$DETUNE_BENCH_CACHE``, default ``benchmarks/.cache``, not
committed) and reused while their manifest matches.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _common
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

GENERATOR_VERSION = 1  # bump when the pixels or labels of a given spec change
CACHE = Path(os.environ.get("DETUNE_BENCH_CACHE") or Path(__file__).resolve().parent / ".cache")
MANIFEST = "scenes.json"
SPLITS = ("train", "val", "test")
KINDS = ("source", "target")

# ---- glyphs: drawn in white on a black local canvas of w x h pixels ----------------------------------


def _poly(points: list[tuple[float, float]]) -> Callable[[ImageDraw.ImageDraw, int, int], None]:
    def draw(d: ImageDraw.ImageDraw, w: int, h: int) -> None:
        d.polygon([(x * (w - 1), y * (h - 1)) for x, y in points], fill=255)
    return draw


def _regular(n: int, phase: float = 0.0, inner: float | None = None) -> list[tuple[float, float]]:
    """A regular n-gon (or an n-pointed star when ``inner`` is given), rescaled to fill the unit square."""
    step = math.pi / n if inner else 2 * math.pi / n
    pts = [((inner if inner and i % 2 else 1.0) * math.cos(phase + i * step),
            (inner if inner and i % 2 else 1.0) * math.sin(phase + i * step)) for i in range(2 * n if inner else n)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in pts]


def _ellipse(d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    d.ellipse((0, 0, w - 1, h - 1), fill=255)


def _semicircle(d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    d.pieslice((0, 0, w - 1, 2 * h - 1), 180, 360, fill=255)


def _ring(d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    d.ellipse((0, 0, w - 1, h - 1), fill=255)
    d.ellipse((0.27 * w, 0.27 * h, 0.73 * w, 0.73 * h), fill=0)


def _crescent(d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    d.ellipse((0, 0, w - 1, h - 1), fill=255)
    d.ellipse((0.35 * w, -0.05 * h, 1.3 * w, 0.95 * h), fill=0)


def _heart(d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    x, y = (x - x.min()) / np.ptp(x), (y - y.min()) / np.ptp(y)
    _poly(list(zip(x.tolist(), y.tolist(), strict=True)))(d, w, h)


# name -> (width / height, draw function). Source and target share no class and no outline.
SOURCE_GLYPHS: dict[str, tuple[float, Callable[[ImageDraw.ImageDraw, int, int], None]]] = {
    "circle": (1.0, _ellipse),
    "square": (1.0, _poly([(0, 0), (1, 0), (1, 1), (0, 1)])),
    "triangle": (1.0, _poly([(0.5, 0), (1, 1), (0, 1)])),
    "diamond": (1.0, _poly([(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)])),
    "cross": (1.0, _poly([(1 / 3, 0), (2 / 3, 0), (2 / 3, 1 / 3), (1, 1 / 3), (1, 2 / 3), (2 / 3, 2 / 3),
                          (2 / 3, 1), (1 / 3, 1), (1 / 3, 2 / 3), (0, 2 / 3), (0, 1 / 3), (1 / 3, 1 / 3)])),
    "hexagon": (1.1, _poly(_regular(6))),
    "pentagon": (1.0, _poly(_regular(5, -math.pi / 2))),
    "octagon": (1.0, _poly(_regular(8, math.pi / 8))),
    "semicircle": (2.0, _semicircle),
    "trapezoid": (1.5, _poly([(0.25, 0), (0.75, 0), (1, 1), (0, 1)])),
    "parallelogram": (1.8, _poly([(0.35, 0), (1, 0), (0.65, 1), (0, 1)])),
    "L-shape": (0.75, _poly([(0, 0), (0.4, 0), (0.4, 0.65), (1, 0.65), (1, 1), (0, 1)])),
    "T-shape": (1.0, _poly([(0, 0), (1, 0), (1, 0.35), (0.65, 0.35), (0.65, 1), (0.35, 1), (0.35, 0.35),
                            (0, 0.35)])),
    "ellipse": (2.0, _ellipse),
    "rectangle": (2.0, _poly([(0, 0), (1, 0), (1, 1), (0, 1)])),
}
TARGET_GLYPHS: dict[str, tuple[float, Callable[[ImageDraw.ImageDraw, int, int], None]]] = {
    "star": (1.0, _poly(_regular(5, -math.pi / 2, inner=0.42))),
    "ring": (1.0, _ring),
    "crescent": (0.75, _crescent),
    "arrow": (1.7, _poly([(0, 0.32), (0.58, 0.32), (0.58, 0), (1, 0.5), (0.58, 1), (0.58, 0.68), (0, 0.68)])),
    "heart": (1.1, _heart),
    "bolt": (0.6, _poly([(0.55, 0), (0.05, 0.58), (0.45, 0.58), (0.3, 1), (0.95, 0.4), (0.55, 0.4), (0.8, 0)])),
}


@dataclass(frozen=True)
class Style:
    """How one kind of scene looks (what makes the target differ from the source besides its classes)."""

    glyphs: dict[str, tuple[float, Callable[[ImageDraw.ImageDraw, int, int], None]]]
    objects: tuple[int, int]  # objects per image, inclusive
    size: tuple[float, float]  # longest object side as a fraction of imgsz
    rotation: float  # degrees, uniform in +-rotation
    fills: tuple[str, ...]
    muted: bool  # low-saturation palette (target) or any colour (source)
    contrast: float  # minimum luminance difference between an object and what lies beneath (0-255)


STYLES = {
    "source": Style(SOURCE_GLYPHS, (1, 4), (0.2, 0.45), 12.0, ("solid", "solid", "stripes", "checker", "gradient"),
                    muted=False, contrast=70.0),
    "target": Style(TARGET_GLYPHS, (1, 4), (0.18, 0.42), 25.0, ("solid", "outline", "hatch"), muted=True,
                    contrast=60.0),
}


@dataclass(frozen=True)
class SceneSpec:
    """Every parameter that decides the bytes of a generated scenes dataset."""

    kind: str  # "source" or "target"
    n_train: int
    n_val: int
    n_test: int
    imgsz: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind ({self.kind!r}) must be one of {', '.join(KINDS)}")
        for name in ("n_train", "n_val", "n_test", "imgsz", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (32 if name == "imgsz" else 0):
                raise ValueError(f"{name} ({value!r}) must be an integer >= {32 if name == 'imgsz' else 0}")

    def manifest(self) -> dict[str, Any]:
        return {"generator": "benchmarks._targets", "version": GENERATOR_VERSION, "spec": asdict(self),
                "names": list(STYLES[self.kind].glyphs)}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.manifest(), sort_keys=True).encode()).hexdigest()[:12]


def class_names(kind: str) -> tuple[str, ...]:
    return tuple(STYLES[kind].glyphs)


def make_scenes(spec: SceneSpec, root: Path | None = None) -> Path:
    """Write (or reuse) the dataset of ``spec``; return its data.yaml (absolute ``path``, train/val/test)."""
    root = (root or CACHE / "datasets" / f"{spec.kind}-{spec.imgsz}px-{spec.key()}").resolve()
    data_yaml = root / "data.yaml"
    if _current(root, spec):
        return data_yaml
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split_id, (split, count) in enumerate(zip(SPLITS, (spec.n_train, spec.n_val, spec.n_test), strict=True)):
            _write_split(tmp, spec, split, split_id, count)
        (tmp / "data.yaml").write_text(_yaml_text(root, spec), encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(spec.manifest(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if not _current(root, spec):  # else another process finished first
            shutil.rmtree(root, ignore_errors=True)
            os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data_yaml


def _current(root: Path, spec: SceneSpec) -> bool:
    try:
        return bool(json.loads((root / MANIFEST).read_text()) == spec.manifest()
                    and (root / "data.yaml").read_text() == _yaml_text(root, spec))
    except (OSError, ValueError):
        return False


def _yaml_text(root: Path, spec: SceneSpec) -> str:
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(class_names(spec.kind)))
    return (f"# Generated by benchmarks/_targets.py (generator v{GENERATOR_VERSION}); do not edit.\n"
            f"# spec: {json.dumps(asdict(spec), sort_keys=True)}\n"
            f"path: {json.dumps(str(root))}\ntrain: images/train\nval: images/val\ntest: images/test\n"
            f"names:\n{names}")


def _write_split(root: Path, spec: SceneSpec, split: str, split_id: int, count: int) -> None:
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for index in range(count):
        rng = np.random.default_rng([spec.seed, KINDS.index(spec.kind), split_id, index])
        image, rows = render(rng, spec.kind, spec.imgsz)
        stem = f"{split}_{index:05d}"
        image.save(images / f"{stem}.png", format="PNG", compress_level=6)
        (labels / f"{stem}.txt").write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")


# ---- one image ---------------------------------------------------------------------------------------

_LUMA = np.array([0.299, 0.587, 0.114])


def render(rng: np.random.Generator, kind: str, size: int) -> tuple[Image.Image, list[str]]:
    """One image of ``kind`` and its label rows (``class xc yc w h``, normalised)."""
    style = STYLES[kind]
    pixels = _source_background(rng, size) if kind == "source" else _target_background(rng, size)
    image = Image.fromarray(pixels, mode="RGB")
    _clutter(rng, ImageDraw.Draw(image), size, kind)
    names = list(style.glyphs)
    boxes: list[tuple[int, int, int, int]] = []
    rows: list[str] = []
    wanted = int(rng.integers(style.objects[0], style.objects[1] + 1))
    for _ in range(wanted * 20):  # rejection sampling for non-overlapping boxes
        if len(boxes) == wanted:
            break
        cls = int(rng.integers(len(names)))
        mask = _glyph_mask(rng, style, names[cls], size)
        w, h = mask.size
        if w < 4 or h < 4 or w > size or h > size:
            continue
        x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        if any(x0 < bx1 + 2 and bx0 < x0 + w + 2 and y0 < by1 + 2 and by0 < y0 + h + 2 for bx0, by0, bx1, by1 in boxes):
            continue
        under = np.asarray(image)[y0:y0 + h, x0:x0 + w].reshape(-1, 3).mean(axis=0) @ _LUMA
        fill, mask = _fill(rng, style, mask, float(under))
        image.paste(fill, (x0, y0), mask)
        boxes.append((x0, y0, x0 + w, y0 + h))
        rows.append(f"{cls} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
    return image, rows


def _glyph_mask(rng: np.random.Generator, style: Style, name: str, size: int) -> Image.Image:
    """The glyph, scaled, stretched a little, rotated and cropped to its exact extent (an L mask)."""
    aspect, draw = style.glyphs[name]
    aspect *= float(np.exp(rng.uniform(-0.15, 0.15)))
    longest = rng.uniform(*style.size) * size
    w, h = (longest, longest / aspect) if aspect >= 1 else (longest * aspect, longest)
    canvas = Image.new("L", (max(3, round(w)), max(3, round(h))), 0)
    draw(ImageDraw.Draw(canvas), *canvas.size)
    canvas = canvas.rotate(float(rng.uniform(-style.rotation, style.rotation)), resample=Image.Resampling.BILINEAR,
                           expand=True)
    canvas = canvas.point(lambda v: 255 if v >= 128 else 0)
    box = canvas.getbbox()
    return canvas.crop(box) if box else canvas


def _colour(rng: np.random.Generator, under: float, style: Style) -> np.ndarray:
    """A colour whose luminance differs from ``under`` by at least ``style.contrast``."""
    for _ in range(100):
        if style.muted:
            rgb = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.1, 0.45), rng.uniform(0.1, 1.0))) * 255
        else:
            rgb = rng.uniform(0, 255, size=3)
        if abs(float(rgb @ _LUMA) - under) >= style.contrast:
            return rgb
    return np.full(3, 0.0 if under > 127 else 255.0)


def _fill(rng: np.random.Generator, style: Style, mask: Image.Image, under: float) -> tuple[Image.Image, Image.Image]:
    """The object's pixels (an RGB patch of the mask's size) and the mask to paste them through."""
    w, h = mask.size
    kind = style.fills[int(rng.integers(len(style.fills)))]
    a, b = _colour(rng, under, style), _colour(rng, under, style)
    y, x = np.mgrid[0:h, 0:w]
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    if kind == "stripes":
        pick = (u // rng.integers(2, 5)) % 2 == 0
    elif kind == "checker":
        period = int(rng.integers(2, 5))
        pick = ((x // period) + (y // period)) % 2 == 0
    elif kind == "gradient":
        t = (u - u.min()) / max(float(np.ptp(u)), 1e-6)
        patch = a + t[..., None] * (b - a)
        return Image.fromarray(patch.clip(0, 255).astype(np.uint8), mode="RGB"), mask
    else:
        pick = np.ones((h, w), bool)
    patch = np.where(pick[..., None], a, b)
    if kind in ("outline", "hatch"):  # a border 1-2 px wide, and for hatch thin lines across the inside
        edge = np.asarray(mask) > np.asarray(mask.filter(ImageFilter.MinFilter(3 if min(w, h) < 16 else 5)))
        keep = edge
        if kind == "hatch":
            v = -x * np.sin(angle) + y * np.cos(angle)
            period = int(rng.integers(3, 6))
            keep = edge | ((u.astype(int) % period == 0) | (v.astype(int) % period == 0)) & (np.asarray(mask) > 0)
        mask = Image.fromarray((keep * 255).astype(np.uint8), mode="L")
        patch = np.broadcast_to(a, (h, w, 3))
    return Image.fromarray(np.ascontiguousarray(patch).clip(0, 255).astype(np.uint8), mode="RGB"), mask


def _source_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A two-colour gradient, soft blobs, or a faint stripe texture, plus Gaussian noise."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    a, b = rng.uniform(0, 255, size=(2, 3))
    style = int(rng.integers(3))
    if style == 0:
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * x + np.sin(angle) * y
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        pixels = a + t[..., None] * (b - a)
    elif style == 1:
        canvas = Image.new("RGB", (size, size), tuple(int(c) for c in a))
        d = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(3, 8))):
            x0, y0 = rng.uniform(-0.3, 1.0, size=2) * size
            r = rng.uniform(0.2, 0.6) * size
            colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
            d.ellipse((x0, y0, x0 + r, y0 + r * rng.uniform(0.5, 1.5)), fill=colour)
        pixels = np.asarray(canvas.filter(ImageFilter.GaussianBlur(size / 16)), dtype=float)
    else:
        period = rng.uniform(0.05, 0.2)
        angle = rng.uniform(0, np.pi)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(angle) * x + np.sin(angle) * y) / period)
        pixels = a + 0.25 * t[..., None] * (b - a)
    pixels = pixels + rng.normal(0.0, rng.uniform(4, 16), size=pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _target_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cloud-like value noise (three octaves) between two muted colours, plus fine grain."""
    noise = np.zeros((size, size))
    for cells, weight in ((3, 0.55), (7, 0.3), (15, 0.15)):
        grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8), mode="L")
        noise += weight * np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=float) / 255
    t = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-6)
    hue = rng.uniform(0, 1)
    a = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.1, 0.4), rng.uniform(0.15, 0.9))) * 255
    b = np.array(colorsys.hsv_to_rgb((hue + rng.uniform(-0.15, 0.15)) % 1, rng.uniform(0.1, 0.4),
                                     rng.uniform(0.15, 0.9))) * 255
    pixels = a + t[..., None] * (b - a) + rng.normal(0.0, rng.uniform(2, 8), size=(size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _clutter(rng: np.random.Generator, d: ImageDraw.ImageDraw, size: int, kind: str) -> None:
    """Unlabelled things much smaller than any object: lines, dots and small polygons (source), arcs and
    specks (target)."""
    for _ in range(int(rng.integers(2, 10))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, size=4))
        r = int(rng.integers(1, max(2, size // 24) + 1))
        roll = rng.random()
        if kind == "source" and roll < 0.4:
            d.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 3)))
        elif kind == "source" and roll < 0.7:
            d.regular_polygon((x0, y0, r + 1), int(rng.integers(3, 7)), fill=colour)
        elif kind == "target" and roll < 0.5:
            d.arc((min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1), int(rng.integers(0, 360)),
                  int(rng.integers(0, 360)), fill=colour, width=1)
        else:
            d.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=colour)


# ---- the benchmark targets ---------------------------------------------------------------------------

# Sizes per mode: "quick" (smoke), "cpu" (2 cores), "gpu" (one GPU node).
SOURCE = {"quick": SceneSpec("source", 16, 8, 8, 32), "cpu": SceneSpec("source", 4000, 250, 250, 64),
          "gpu": SceneSpec("source", 20000, 1000, 1000, 256)}
TARGET = {"quick": SceneSpec("target", 16, 8, 8, 32), "cpu": SceneSpec("target", 320, 96, 96, 64),
          "gpu": SceneSpec("target", 1000, 300, 300, 256)}


def mode(gpu: bool, quick: bool) -> str:
    return "quick" if quick else "gpu" if gpu else "cpu"


@dataclass(frozen=True)
class Target:
    """One benchmark target: its data YAML, whether trials start from the pretrained checkpoint, a note."""

    name: str
    data: Path
    pretrained: bool
    imgsz: int
    note: str


def targets(workdir: Path, *, gpu: bool = False, quick: bool = False) -> list[Target]:
    """The targets of section 1 of issue 15: generated scenes and COCO128 fine-tuned from the pretrained
    checkpoint (``pretrain.pretrained_checkpoint``), and the from-scratch shapes kept for continuity."""
    m = mode(gpu, quick)
    spec = TARGET[m]
    out = [Target("scenes", make_scenes(spec), True, spec.imgsz,
                  f"generated target: {len(class_names('target'))} classes absent from the source "
                  f"({', '.join(class_names('target'))}), muted colours, value-noise backgrounds; "
                  f"{spec.n_train}/{spec.n_val}/{spec.n_test} train/val/test images at {spec.imgsz} px")]
    coco = _common.coco128(Path(workdir))
    if coco is not None:
        out.append(Target("coco128", coco, True, {"quick": 32, "cpu": 64, "gpu": 320}[m],
                          "COCO128, 80 classes: val == train (the same 128 images), no test split, so its "
                          "scores measure fitting the training images, not generalisation"))
    shapes = {"quick": {"imgsz": 32, "n_train": 16}, "cpu": {"imgsz": 64, "n_train": 256},
              "gpu": {"imgsz": 256, "n_train": 1024}}[m]
    out.append(Target("shapes", _common.shapes(**shapes), False, shapes["imgsz"],
                      "detune's generated shapes (3 classes), from scratch as in earlier runs; no test split"))
    return out
