"""The ``background/`` layer: a frame with all its character instances removed and inpainted.

The union of a frame's instance masks is dilated by ``segmentation.background_dilate_px`` (to take the
soft edges and halo with it) and filled by ``segmentation.background_inpaint``:

- ``telea``: OpenCV's Telea fast-marching inpainting, radius ``segmentation.background_inpaint_radius``;
- ``lama``: LaMa via the ``simple_lama_inpainting`` package, only when the package imports and its
  TorchScript weights are already on disk (``LAMA_MODEL`` or torch hub's ``checkpoints/big-lama.pt``);
  otherwise a :class:`ConfigError` (castlab never downloads them, nor silently falls back to Telea);
- ``none``: no background layer.

Pixels outside the dilated union are copied from the frame unchanged.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from castlab.config import Config
from castlab.errors import ConfigError
from castlab.layers import safe_name

METHODS = ("telea", "lama", "none")
METHOD_SETTING = "segmentation.background_inpaint"
_LAMA_DEFAULT_URL = "https://github.com/enesmsahin/simple-lama-inpainting/releases/download/v0.1.0/big-lama.pt"


@dataclass(frozen=True)
class BackgroundSettings:
    method: str = "telea"
    dilate_px: int = 4
    radius: float = 5.0

    @classmethod
    def from_config(cls, cfg: Config) -> BackgroundSettings:
        """Read and check the ``segmentation.background_*`` settings (LaMa availability included)."""
        settings = cls(
            method=cfg.segmentation.background_inpaint,
            dilate_px=int(cfg.segmentation.background_dilate_px),
            radius=float(cfg.segmentation.background_inpaint_radius),
        )
        settings.check()
        return settings

    def check(self) -> None:
        check_method(self.method)
        if self.dilate_px < 0:
            raise ConfigError(f"segmentation.background_dilate_px must be >= 0, got {self.dilate_px}")
        if self.radius <= 0:
            raise ConfigError(f"segmentation.background_inpaint_radius must be > 0, got {self.radius}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"


def check_method(method: str) -> None:
    """Raise :class:`ConfigError` for an unknown method, or ``lama`` without its package or weights."""
    if method not in METHODS:
        raise ConfigError(f"{METHOD_SETTING} must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "lama":
        lama_weights()


def lama_weights() -> Path:
    """Path of the LaMa TorchScript weights that ``simple_lama_inpainting`` would load, if on disk."""
    try:
        import simple_lama_inpainting  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"{METHOD_SETTING}: lama needs the simple-lama-inpainting package, which is not importable "
            f"({exc}); install it with its weights, or set {METHOD_SETTING}: telea"
        ) from exc
    env = os.environ.get("LAMA_MODEL")
    if env:
        path = Path(env).expanduser()
    else:
        import torch.hub

        url = os.environ.get("LAMA_MODEL_URL", _LAMA_DEFAULT_URL)
        path = Path(torch.hub.get_dir(), "checkpoints", Path(url.split("?")[0]).name)
    if not path.is_file():
        raise ConfigError(
            f"{METHOD_SETTING}: lama weights not found at {path} (castlab does not download them); "
            f"put big-lama.pt there or point LAMA_MODEL to it, or set {METHOD_SETTING}: telea"
        )
    return path


@functools.lru_cache(maxsize=1)
def _lama_model() -> Any:
    import torch
    from simple_lama_inpainting import SimpleLama

    lama_weights()  # present, so SimpleLama loads it and downloads nothing
    return SimpleLama(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def union_mask(masks: list[np.ndarray], shape: tuple[int, int], dilate_px: int = 0) -> np.ndarray:
    """Boolean union of `masks` (each `shape`), dilated by a disc of radius `dilate_px`."""
    union = np.zeros(shape, dtype=bool)
    for mask in masks:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != tuple(shape):
            raise ValueError(f"mask shape {mask.shape} does not match image shape {tuple(shape)}")
        union |= mask
    if dilate_px > 0 and union.any():
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
        union = cv2.dilate(union.astype(np.uint8), kernel) > 0
    return union


def inpaint_background(
    image_rgb: np.ndarray, masks: list[np.ndarray], method: str = "telea", radius: float = 5.0, dilate_px: int = 4
) -> np.ndarray:
    """`image_rgb` (uint8 HxWx3) with the union of `masks`, dilated by `dilate_px`, inpainted by
    `method` (``telea`` or ``lama``); pixels outside the dilated union are unchanged."""
    image = np.ascontiguousarray(np.asarray(image_rgb)[..., :3], dtype=np.uint8)
    check_method(method)
    if method == "none":
        raise ValueError(f"{METHOD_SETTING} is 'none': there is no background to inpaint")
    hole = union_mask(masks, image.shape[:2], dilate_px)
    if not hole.any():
        return image.copy()
    if method == "telea":
        filled = cv2.inpaint(image, hole.astype(np.uint8) * 255, float(radius), cv2.INPAINT_TELEA)
    else:
        result = _lama_model()(Image.fromarray(image), Image.fromarray(hole.astype(np.uint8) * 255))
        filled = np.asarray(result.convert("RGB"))[: image.shape[0], : image.shape[1]]  # LaMa pads to /8
    return np.where(hole[..., None], filled, image).astype(np.uint8)


def write_background(
    image_rgb: np.ndarray,
    masks: list[np.ndarray],
    run_dir: Path,
    frame_row_id: str,
    settings: BackgroundSettings,
    subdir: str = "",
) -> Path | None:
    """Write ``background/[subdir/]<frame>.png`` for a frame with instances; None when there are no
    masks or the method is ``none``."""
    if not settings.enabled or not masks:
        return None
    background = inpaint_background(image_rgb, masks, settings.method, settings.radius, settings.dilate_px)
    out_dir = Path(run_dir, "background", subdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / (safe_name(frame_row_id) + ".png")
    Image.fromarray(background, mode="RGB").save(path, compress_level=1)
    return path
