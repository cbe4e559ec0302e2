"""Picture helpers shared by the reports: a sized default font, the tiny-profile stamp, atomic PNG writes,
tiles (an image fitted into a box) and the layout of contact sheets (a grid of captioned tiles).

Each report keeps its own choices (which tiles, labels, sizes); the drawing primitives live here once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from castlab.errors import InputError
from castlab.workspace import atomic_path

TINY_STAMP = " - TINY PROFILE, random weights"  # appended to picture titles made under the tiny profile
WHITE = (255, 255, 255)
CAPTION_COLOUR = (60, 60, 60)
CAPTION_SIZE = 10
TAB20 = ("1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd", "8c564b", "e377c2", "bcbd22", "17becf", "aec7e8",
         "ffbb78", "98df8a", "ff9896", "c5b0d5", "c49c94", "f7b6d2", "dbdb8d", "9edae5", "393b79", "637939")
"""matplotlib's tab20 (dark shades first): the colours of clusters, tracked objects and overlay labels."""


def palette_colour(k: int) -> tuple[int, int, int]:
    """The `k`-th distinct colour: :data:`TAB20`, then golden-ratio hues."""
    if k < len(TAB20):
        return int(TAB20[k][0:2], 16), int(TAB20[k][2:4], 16), int(TAB20[k][4:6], 16)
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.75, 0.85)
    return int(r * 255), int(g * 255), int(b * 255)


def open_rgb(path: Path, purpose: str = "") -> Image.Image:
    """The image at `path` as RGB, read whole; InputError naming the file (and `purpose`) when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise InputError(path, f"is not a readable image{' ' + purpose if purpose else ''} ({exc})") from exc


@functools.cache
def font(size: int) -> Any:
    """Pillow's bundled font at `size` (a fixed-size bitmap font on Pillow builds without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def tiny_stamp(profile: str | None) -> str:
    """:data:`TINY_STAMP` under the tiny profile, else nothing."""
    return TINY_STAMP if profile == "tiny" else ""


def save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def fit_within(image: Image.Image, side: int, resample: int | None = None) -> Image.Image:
    """`image` scaled down so its longer side is at most `side` (never enlarged); `resample`: PIL's filter
    (default: PIL's own for the mode)."""
    scale = side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size) if resample is None else image.resize(size, resample)


def thumbnail(
    path: Path | None,
    box: tuple[int, int],
    background: tuple[int, int, int] = (90, 90, 90),
    missing: tuple[int, int, int] | None = None,
) -> Image.Image:
    """`path` fitted into `box` (aspect kept, centred) on a `background` tile; transparency shows the background.

    No path, or a missing or unreadable file, gives a plain tile of colour `missing` (default: `background`).
    """
    try:
        if path is None:
            raise FileNotFoundError
        with Image.open(path) as im:
            im = im.convert("RGBA")
            im.thumbnail(box)
    except (OSError, UnidentifiedImageError):
        return Image.new("RGB", box, missing or background)
    tile = Image.new("RGB", box, background)
    tile.paste(im, ((box[0] - im.width) // 2, (box[1] - im.height) // 2), im)
    return tile


@dataclass(frozen=True)
class Grid:
    """Where the tiles of a contact sheet go.

    `columns` x `rows` tiles of `tile` (width, height) pixels, `pad` pixels apart and around the grid, each
    with a caption band of `caption_h` pixels under it; `left` pixels of row labels before the grid, `top`
    pixels of title or column headers above it and `bottom` pixels of footer below it.
    """

    columns: int
    rows: int
    tile: tuple[int, int]
    pad: int
    caption_h: int = 0
    left: int = 0
    top: int = 0
    bottom: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole sheet."""
        w, h = self.tile
        return (self.left + self.pad + self.columns * (w + self.pad),
                self.top + self.pad + self.rows * (h + self.caption_h + self.pad) + self.bottom)

    def origin(self, column: int, row: int) -> tuple[int, int]:
        """Top-left pixel of the tile at (`column`, `row`)."""
        w, h = self.tile
        return (self.left + self.pad + column * (w + self.pad),
                self.top + self.pad + row * (h + self.caption_h + self.pad))

    def sheet(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        """A white sheet of :attr:`size` and a draw on it."""
        image = Image.new("RGB", self.size, WHITE)
        return image, ImageDraw.Draw(image)

    def put(
        self, sheet: Image.Image, draw: ImageDraw.ImageDraw, column: int, row: int, tile: Image.Image,
        caption: str | None = None,
    ) -> None:
        """Paste `tile` at (`column`, `row`) and write `caption` (small, grey) in the band under it."""
        x, y = self.origin(column, row)
        sheet.paste(tile, (x, y))
        if caption:
            draw.text((x, y + self.tile[1] + 1), caption, fill=CAPTION_COLOUR, font=font(CAPTION_SIZE))
