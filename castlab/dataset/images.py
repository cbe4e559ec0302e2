"""A dataset image of one instance, and the quality score that ranks it.

The image is the crop region of the original frame: the mask box grown by ``dataset.context_margin`` of its
size per side (clipped to the frame), so the real background stays for context, at its own aspect ratio. Its
alpha channel is the character's soft mask (the instance crop's alpha, SAM2's probability inside the mask): the
input of masked loss (kohya's ``alpha_mask``). It is scaled towards ``resolution``² pixels, never enlarged more
than ``dataset.max_upscale``. ``dataset.background: neutral`` composites the RGB onto ``dataset.background_rgb``
(the alpha is kept). No flip, no colour change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from castlab.config import Config
from castlab.errors import InputError
from castlab.layers import media_path, open_rgba
from castlab.manifest import row_text


@dataclass
class DatasetImage:
    image: Image.Image  # RGBA
    crop_box: list[int]  # [x0, y0, x1, y1] in the frame (or in the crop when the frame is missing)
    scale: float
    context: str  # "frame" | "crop only (<why>)"


def _bbox(row: dict[str, Any]) -> list[int] | None:
    value = row.get("bbox")
    if value is None:
        return None
    box = [int(v) for v in np.asarray(value).ravel().tolist()]
    return box if len(box) == 4 and box[2] > 0 and box[3] > 0 else None


def _open_frame(row: dict[str, Any]) -> tuple[Image.Image | None, str]:
    path = media_path(row.get("frame_path")) if row_text(row.get("frame_path")) else None
    if path is None:
        return None, "crop only (no frame recorded)"
    if not path.is_file():
        return None, f"crop only (frame {path} missing)"
    try:
        return open_rgba(path, "frame"), "frame"
    except InputError as exc:
        return None, f"crop only ({exc})"


def context_region(box: list[int], margin: float, size: tuple[int, int]) -> list[int]:
    """``[x0, y0, x1, y1]``: the ``[x, y, w, h]`` box grown by `margin` of its size per side, inside `size`."""
    x, y, w, h = box
    dx, dy = round(w * margin), round(h * margin)
    return [max(0, x - dx), max(0, y - dy), min(size[0], x + w + dx), min(size[1], y + h + dy)]


def dataset_image(row: dict[str, Any], cfg: Config, resolution: int) -> DatasetImage:
    """The dataset image of `row` (InputError when its crop file is missing or unreadable)."""
    crop = open_rgba(media_path(row.get("crop_path")), "instance crop")
    box = _bbox(row)
    frame, context = _open_frame(row)
    if frame is not None and (box is None or (box[2], box[3]) != crop.size):
        frame, context = None, "crop only (mask box does not match the crop)"
    if frame is not None and box is not None:
        x0, y0, x1, y1 = region = context_region(box, float(cfg.dataset.context_margin), frame.size)
        rgb = frame.convert("RGB").crop((x0, y0, x1, y1))
        alpha = Image.new("L", rgb.size, 0)
        alpha.paste(crop.getchannel("A"), (box[0] - x0, box[1] - y0))
    else:
        region = [0, 0, crop.width, crop.height]
        rgb, alpha = crop.convert("RGB"), crop.getchannel("A")
    image, scale = scaled_rgba(rgb, alpha, cfg, resolution)
    return DatasetImage(image, region, scale, context)


def scaled_rgba(rgb: Image.Image, alpha: Image.Image, cfg: Config, resolution: int) -> tuple[Image.Image, float]:
    """(RGBA image, scale): `rgb` and its `alpha` scaled towards `resolution`² pixels, never enlarged more than
    ``dataset.max_upscale``; under ``dataset.background: neutral`` the RGB composited on ``background_rgb``."""
    scale = min(float(cfg.dataset.max_upscale), resolution / math.sqrt(rgb.width * rgb.height))
    if abs(scale - 1.0) > 1e-3:  # RGB and alpha resized apart: the RGB under alpha 0 is real context
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        alpha = alpha.resize(size, Image.Resampling.LANCZOS)
    if cfg.dataset.background == "neutral":
        flat = Image.new("RGB", rgb.size, tuple(int(c) for c in cfg.dataset.background_rgb))
        rgb = Image.composite(rgb, flat, alpha)
    image = rgb.copy()
    image.putalpha(alpha)
    return image, round(scale, 4)


@dataclass
class Quality:
    score: float
    sharpness: float
    size: float
    sam: float
    flagged: str  # caption QC flags of an unreviewed caption ("" when none)

    def describe(self) -> str:
        text = f"quality {self.score:.2f} (sharpness {self.sharpness:.2f}, size {self.size:.2f}, SAM2 {self.sam:.2f}"
        return text + (f", caption flagged: {self.flagged})" if self.flagged else ")")


def measure_quality(row: dict[str, Any], cfg: Config, resolution: int) -> Quality:
    """Sharpness (variance of the Laplacian inside the mask, over ``dataset.sharpness_ref``), size (mask side
    over half the resolution) and SAM2's score, averaged; times ``dataset.caption_flag_penalty`` when the
    row's caption is unreviewed and caption QC flagged it. InputError when the crop is missing or unreadable."""
    crop = open_rgba(media_path(row.get("crop_path")), "instance crop")
    grey = cv2.Laplacian(np.asarray(crop.convert("L"), np.float32), cv2.CV_32F)
    inside = np.asarray(crop.getchannel("A")) > 127
    values = grey[inside] if inside.sum() >= 16 else grey.ravel()
    sharpness = min(1.0, float(values.var()) / float(cfg.dataset.sharpness_ref)) if values.size else 0.0
    area = float(row.get("area") or inside.sum())
    size = min(1.0, math.sqrt(max(area, 0.0)) / (0.5 * resolution))
    sam_value = row.get("score")
    sam = float(sam_value) if sam_value is not None and math.isfinite(float(sam_value)) else 0.5
    flagged = "" if row_text(row.get("caption")) else row_text(row.get("caption_flags"))
    score = (sharpness + size + sam) / 3.0
    if flagged:
        score *= float(cfg.dataset.caption_flag_penalty)
    return Quality(round(score, 4), round(sharpness, 4), round(size, 4), round(sam, 4), flagged)
