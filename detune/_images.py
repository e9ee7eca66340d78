"""Image checks before training: which images Ultralytics would skip as unreadable, and why (Pillow only)."""

from __future__ import annotations

import os
from pathlib import Path

from detune.errors import DatasetError

# Ultralytics' image suffixes (ultralytics/data/utils.py IMG_FORMATS); other files in a split are ignored.
IMG_FORMATS = frozenset(
    {"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"}
)
MAX_REPORTED = 10  # files or lines listed in one message


class ImageChecker:
    """Opens each image's header once, as Ultralytics' ``check_image`` does, and says why it would skip it."""

    def __init__(self) -> None:
        self._why: dict[str, str | None] = {}

    def split(
        self, path: Path, line: int, key: str, images: list[str], notes: list[str]
    ) -> tuple[list[str], tuple[str, ...]]:
        """The readable images and the skipped ones; a warning names the skipped ones, none readable raises."""
        todo = [image for image in images if image not in self._why]
        if len(todo) > 64:  # header reads wait on the disk: overlap them (a cold COCO-sized folder)
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=8) as pool:
                self._why.update(zip(todo, pool.map(_unreadable, todo), strict=True))
        else:
            self._why.update((image, _unreadable(image)) for image in todo)
        bad = [(image, self._why[image]) for image in images if self._why[image] is not None]
        if not bad:
            return images, ()
        named = ", ".join(f"{image} ({why})" for image, why in bad[:MAX_REPORTED])
        more = f" and {len(bad) - MAX_REPORTED} more" if len(bad) > MAX_REPORTED else ""
        if len(bad) == len(images):
            raise DatasetError(
                f"{path}:{line}: {key}: none of its {len(images)} images can be read ({named}{more}); "
                "replace them with valid images"
            )
        notes.append(
            f"{len(bad)} of {len(images)} {key} images cannot be read and Ultralytics skips them when it trains: "
            f"{named}{more}; replace or remove them"
        )
        skipped = {image for image, _ in bad}
        return [i for i in images if i not in skipped], tuple(image for image, _ in bad)


def _unreadable(image: str) -> str | None:
    """Why Ultralytics would skip this image (``ultralytics/data/utils.py`` ``check_image``), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(image) == 0:
            return "empty file, 0 bytes"
        with Image.open(image) as im:
            im.verify()
            width, height, fmt = im.width, im.height, (im.format or "?").lower()
    except UnidentifiedImageError:
        if image.rpartition(".")[-1].lower() in {"heic", "heif"}:
            return "HEIF: Ultralytics reads it only with the pi-heif package installed (pip install pi-heif)"
        return "not an image Pillow can read"
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data: Ultralytics skips it the same
        return f"cannot be decoded: {type(exc).__name__}: {exc}"
    if width < 10 or height < 10:
        return f"{width}x{height} px: Ultralytics needs at least 10 px a side"
    if fmt not in IMG_FORMATS | {"jpeg2000"}:
        return f"format {fmt!r} is not one Ultralytics reads"
    return None
