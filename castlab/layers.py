"""Per-instance layer files: binary mask PNG and RGBA character crop (the segmentation contract)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from castlab.errors import InputError
from castlab.manifest import row_text
from castlab.workspace import resolve_in_workspace

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(row_id: str) -> str:
    """File-system-safe name for a manifest row id (``inst:ab12:000042:0`` → ``inst_ab12_000042_0``)."""
    return _UNSAFE.sub("_", row_id)


def media_path(value: Any, base_dir: Path | None = None) -> Path | None:
    """A manifest path value as a file path: absolute as it is, relative to `base_dir` when given, else
    relative to the workspace (the media root; InputError outside it); None when the value is empty."""
    text = row_text(value)
    if not text:
        return None
    path = Path(text).expanduser()
    if path.is_absolute():
        return path
    if base_dir is not None:
        return Path(base_dir) / path
    return resolve_in_workspace(text)


def open_rgba(path: Path | None, what: str) -> Image.Image:
    """The image at `path` as RGBA; InputError naming `what` when there is no path, no file or no image."""
    if path is None:
        raise InputError("-", f"no {what} path")
    if not path.is_file():
        raise InputError(path, f"{what} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGBA")
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"{what} is not a readable image ({exc})") from exc


def read_mask(path: Path | str) -> np.ndarray:
    """A binary mask PNG (castlab writes 0/255) as a boolean array."""
    return np.asarray(Image.open(path).convert("L")) > 127


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A boolean mask as a 0/255 grey PNG (fast compression: masks are many and small)."""
    Image.fromarray(np.asarray(mask).astype(np.uint8) * 255, mode="L").save(path, compress_level=1)


def instance_mask(row: dict[str, Any], where: Path | str) -> np.ndarray:
    """An instance row's mask, the reviewed one when there is one; InputError when its file is missing."""
    path = row_text(row.get("reviewed_mask_path")) or row_text(row.get("mask_path"))
    if not path or not Path(path).is_file():
        raise InputError(path or where, f"instance {row['row_id']}: its mask file is missing")
    return read_mask(path)


def mask_bbox(mask: np.ndarray) -> list[int]:
    """Tight ``[x, y, w, h]`` box of a boolean mask (zeros for an empty mask)."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return [0, 0, 0, 0]
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    return [int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)]


def soft_alpha(alpha: np.ndarray, mask: np.ndarray, row_id: str = "") -> np.ndarray:
    """uint8 alpha channel: ``round(255 * alpha)`` inside `mask`, 0 outside (a pixel inside the mask is
    never fully transparent)."""
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.shape != mask.shape:
        raise ValueError(f"alpha shape {alpha.shape} does not match mask shape {mask.shape} for {row_id}")
    soft = np.rint(np.clip(alpha, 0.0, 1.0) * 255).astype(np.uint8)
    return np.where(mask, np.maximum(soft, 1), 0).astype(np.uint8)


def write_instance_layers(
    image: np.ndarray, mask: np.ndarray, run_dir: Path, row_id: str, subdir: str = "", alpha: np.ndarray | None = None
) -> dict[str, Any]:
    """Write ``masks/[subdir/]<id>.png`` (0/255) and ``character/[subdir/]<id>.png`` (RGBA bbox crop).

    `alpha` (float 0..1, same size as the image, e.g. SAM2's probability) gives soft anti-aliased edges:
    the crop's alpha is that probability inside the mask and 0 outside it. By default the crop's alpha
    is the binary mask (0/255).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]} for {row_id}")
    name = safe_name(row_id) + ".png"
    mask_dir = Path(run_dir, "masks", subdir)
    crop_dir = Path(run_dir, "character", subdir)
    mask_dir.mkdir(parents=True, exist_ok=True)
    crop_dir.mkdir(parents=True, exist_ok=True)
    write_mask(mask_dir / name, mask)
    x, y, w, h = bbox = mask_bbox(mask)
    alpha_u8 = mask.astype(np.uint8) * 255 if alpha is None else soft_alpha(alpha, mask, row_id)
    rgba = np.dstack([image[..., :3], alpha_u8])
    crop = rgba[y : y + max(h, 1), x : x + max(w, 1)]
    Image.fromarray(crop, mode="RGBA").save(crop_dir / name, compress_level=1)
    return {"mask_path": str(mask_dir / name), "crop_path": str(crop_dir / name), "bbox": bbox, "area": int(mask.sum())}
