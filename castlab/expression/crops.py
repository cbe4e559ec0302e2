"""Face crops for the expression dataset: the identity stage's face box (``face_bbox``) padded by
``expression.context`` on every side, squared and clipped to the frame, with its quality gates: a face too small
(``small_face``), blurred (``blurred_face``) or covered by something in front of the character (``occluded_face``:
too much of the face box lies outside the character's own mask)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from castlab.config import Config
from castlab.frames.quality import sharpness

REASONS = ("no_face", "small_face", "blurred_face", "occluded_face")


@dataclass(frozen=True)
class FaceCrop:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the crop in the frame
    image: np.ndarray | None  # RGB, None when rejected
    sharpness: float | None
    occlusion: float | None
    reason: str | None  # one of REASONS when rejected
    detail: str


def crop_box(face: tuple[float, float, float, float], context: float, width: int, height: int
             ) -> tuple[int, int, int, int]:
    """The square around `face` (x0, y0, x1, y1) with `context` face sizes of padding, clipped to the frame."""
    x0, y0, x1, y1 = face
    side = max(x1 - x0, y1 - y0) * (1 + 2 * context)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (max(0, round(cx - side / 2)), max(0, round(cy - side / 2)), min(width, round(cx + side / 2)),
            min(height, round(cy + side / 2)))


def face_crop(frame_rgb: np.ndarray, face_bbox: object, mask: np.ndarray | None, cfg: Config) -> FaceCrop:
    """The expression crop of one instance (module docstring); `mask`: the character's own mask, or None."""
    s = cfg.expression
    height, width = frame_rgb.shape[:2]
    if face_bbox is None or len(face_bbox) != 4:
        return FaceCrop((0, 0, 0, 0), None, None, None, "no_face", "the identity stage found no face")
    x0, y0, x1, y1 = (float(v) for v in face_bbox)
    box = crop_box((x0, y0, x1, y1), float(s.context), width, height)
    if min(x1 - x0, y1 - y0) < s.min_face_px:
        return FaceCrop(box, None, None, None, "small_face",
                        f"face {x1 - x0:.0f}x{y1 - y0:.0f} px < expression.min_face_px {s.min_face_px}")
    face = frame_rgb[max(0, int(y0)):int(y1), max(0, int(x0)):int(x1)]
    sharp = round(sharpness(cv2.cvtColor(np.ascontiguousarray(face), cv2.COLOR_RGB2GRAY)), 2)
    occlusion = None
    if mask is not None:
        inside = mask[max(0, int(y0)):int(y1), max(0, int(x0)):int(x1)]
        occlusion = round(1.0 - float(inside.mean()), 4) if inside.size else 1.0
    if sharp < s.min_sharpness:
        return FaceCrop(box, None, sharp, occlusion, "blurred_face",
                        f"face sharpness {sharp:.1f} < expression.min_sharpness {s.min_sharpness:g}")
    if occlusion is not None and occlusion > s.max_occlusion:
        return FaceCrop(box, None, sharp, occlusion, "occluded_face",
                        f"{occlusion:.0%} of the face box is outside the character's mask > expression.max_occlusion "
                        f"{s.max_occlusion:g}")
    bx0, by0, bx1, by1 = box
    return FaceCrop(box, frame_rgb[by0:by1, bx0:bx1].copy(), sharp, occlusion, None, "ok")
