"""The shared picture helpers: tiles fitted into a box, the contact-sheet grid, the tiny-profile stamp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from castlab.pictures import TINY_STAMP, Grid, font, save_png, thumbnail, tiny_stamp


def test_thumbnail_fits_centres_and_shows_transparency_as_background(tmp_path: Path) -> None:
    path = tmp_path / "crop.png"
    rgba = np.zeros((80, 40, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:, :20, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(path)
    tile = np.asarray(thumbnail(path, (50, 50), background=(127, 127, 127)))
    assert tile.shape == (50, 50, 3)  # the crop scaled to 25 x 50, centred: columns 12-36
    assert tuple(tile[25, 15]) == (255, 0, 0)
    assert tuple(tile[25, 32]) == (127, 127, 127)  # its transparent half
    assert tuple(tile[25, 5]) == (127, 127, 127)   # the margin
    small = thumbnail(path, (100, 100))  # never enlarged: 40 x 80 at (30, 10)
    assert small.getpixel((31, 50)) == (255, 0, 0) and small.getpixel((29, 50)) == (90, 90, 90)
    assert small.getpixel((31, 9)) == (90, 90, 90) and small.getpixel((60, 50)) == (90, 90, 90)


def test_thumbnail_of_a_missing_or_unreadable_file_is_a_plain_tile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    for path in (None, tmp_path / "gone.png", bad):
        assert np.unique(np.asarray(thumbnail(path, (8, 6), missing=(60, 60, 60))).reshape(-1, 3), axis=0).tolist() \
            == [[60, 60, 60]]
    assert thumbnail(bad, (8, 6)).getpixel((0, 0)) == (90, 90, 90)


def test_grid_places_tiles_captions_labels_and_bands(tmp_path: Path) -> None:
    grid = Grid(3, 2, (10, 8), pad=4, caption_h=14, left=120, top=20, bottom=6)
    assert grid.size == (120 + 4 + 3 * 14, 20 + 4 + 2 * 26 + 6)
    assert grid.origin(0, 0) == (124, 24) and grid.origin(2, 1) == (152, 50)
    sheet, draw = grid.sheet()
    assert sheet.size == grid.size and sheet.getpixel((0, 0)) == (255, 255, 255)
    grid.put(sheet, draw, 2, 1, Image.new("RGB", (10, 8), (0, 0, 255)), caption="p=0.5 x")
    assert sheet.getpixel((152, 50)) == (0, 0, 255) and sheet.getpixel((161, 57)) == (0, 0, 255)
    assert sheet.getpixel((162, 50)) == (255, 255, 255)
    caption_band = np.asarray(sheet)[59:72, 152:200]
    assert (caption_band < 255).any()  # the caption was written under the tile
    save_png(sheet, tmp_path / "sheet.png")
    assert Image.open(tmp_path / "sheet.png").size == grid.size


def test_tiny_stamp_and_font() -> None:
    assert tiny_stamp("tiny") == TINY_STAMP and tiny_stamp("full") == "" and tiny_stamp(None) == ""
    assert font(12) is font(12)
