"""Small picture helpers shared by the reports: a sized default font, thumbnails, atomic PNG writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageFont, UnidentifiedImageError

from castlab.workspace import atomic_path

TINY_STAMP = " - TINY PROFILE, random weights"  # appended to picture titles made under the tiny profile


def font(size: int) -> Any:
    """Pillow's bundled font at `size` (a fixed-size bitmap font on Pillow builds without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def thumbnail(path: Path, box: tuple[int, int]) -> Image.Image:
    """`path` fitted into `box` (aspect kept) on a grey tile; an unreadable file becomes a marked tile."""
    tile = Image.new("RGB", box, (90, 90, 90))
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail(box)
    except (OSError, UnidentifiedImageError):
        return tile
    tile.paste(im, ((box[0] - im.width) // 2, (box[1] - im.height) // 2))
    return tile
