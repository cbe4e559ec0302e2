"""ControlNet conditioning from a reference image (``--control KIND=IMAGE``):

- ``pose``: an OpenPose skeleton image as the pose dataset writes them (``conditioning/<name>.png``: coloured
  limbs on black) is used as it is; any other picture (a reference frame) gets the pose model's keypoints over the
  whole image drawn as one (:mod:`castlab.pose.skeleton`);
- ``depth``: the depth model's map (:mod:`castlab.models.depth`);
- ``canny``: OpenCV's Canny edges at ``generation.canny`` thresholds.

The condition is made once per image size, at that size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from castlab.config import Config
from castlab.errors import InputError
from castlab.models.controlnet import KINDS

SKELETON_BLACK = 0.7  # an image at least this dark (share of near-black pixels) with colour in the rest: a skeleton


@dataclass
class Control:
    kind: str
    reference: Path
    scale: float
    made: dict[tuple[int, int], Image.Image] = field(default_factory=dict)
    how: str = ""

    def describe(self) -> str:
        return f"{self.kind} from {self.reference.name} at {self.scale:g}" + (f" ({self.how})" if self.how else "")


def parse_control(value: str, scale: float) -> Control:
    """``KIND=IMAGE``; InputError naming an unknown kind or a missing or unreadable image."""
    kind, sep, path = value.partition("=")
    if not sep or kind not in KINDS:
        raise InputError(value, f"expected KIND=IMAGE with KIND one of {', '.join(KINDS)}")
    reference = Path(path).expanduser()
    try:
        with Image.open(reference) as image:
            image.verify()
    except OSError as exc:
        raise InputError(reference, f"is not a readable image for the {kind} ControlNet ({exc})") from exc
    return Control(kind, reference.resolve(), float(scale))


def is_skeleton(image: Image.Image) -> bool:
    """Coloured strokes on black, as OpenPose skeleton images are."""
    rgb = np.asarray(image.convert("RGB"), np.int16)
    dark = (rgb.max(axis=-1) < 16).mean()
    saturated = (rgb.max(axis=-1) - rgb.min(axis=-1) > 80).mean()
    return bool(dark >= SKELETON_BLACK and saturated > 0.005)


def condition(control: Control, size: tuple[int, int], cfg: Config, models: dict[str, Any]) -> Image.Image:
    """The conditioning image of `control` at `size` (width, height); `models` caches the depth and pose models."""
    if size in control.made:
        return control.made[size]
    with Image.open(control.reference) as opened:
        reference = opened.convert("RGB")
    if control.kind == "canny":
        low, high = (int(v) for v in cfg.generation.canny)
        edges = cv2.Canny(np.asarray(reference.convert("L")), low, high)
        image, control.how = Image.fromarray(edges).convert("RGB"), f"Canny {low}/{high}"
    elif control.kind == "depth":
        from castlab.models.depth import load_depth_estimator

        if "depth" not in models:
            models["depth"] = load_depth_estimator(cfg)
        image, control.how = models["depth"].depth_map(reference), models["depth"].model_version
    elif is_skeleton(reference):
        image, control.how = reference, "skeleton image"
    else:
        from castlab.models.pose import load_pose_estimator
        from castlab.pose.skeleton import draw_skeleton

        if "pose" not in models:
            models["pose"] = load_pose_estimator(cfg)
        model = models["pose"]
        keypoints = model.keypoints(reference, [(0.0, 0.0, float(reference.width), float(reference.height))])[0]
        image = Image.fromarray(draw_skeleton(keypoints, reference.size, float(cfg.pose.min_confidence)))
        control.how = f"keypoints by {model.model_version}"
    control.made[size] = image.resize(size, Image.Resampling.BILINEAR)
    return control.made[size]
