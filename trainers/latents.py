"""Training images → VAE latents, cached in memory and on disk and reused across runs.

An image is resized to its bucket placement (``resized``), cropped at ``crop_top_left`` to the bucket size and
optionally flipped; its alpha channel (the character's soft mask) is kept at bucket size for masked loss. The VAE's
latent distribution (mean, std) is cached under a key of the image's bytes, the placement, the flip and the VAE's
version, so a second run on the same dataset and base model encodes nothing (``<cache>/<key>.safetensors``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file

from castlab.errors import InputError
from castlab.workspace import atomic_path

CACHE_FORMAT = "castlab-latents/1"


@dataclass(frozen=True)
class ImageJob:
    path: Path
    resized: tuple[int, int]  # (w, h) the image is resized to before the crop
    crop_top_left: tuple[int, int]  # (x, y)
    bucket: tuple[int, int]  # (w, h) of the crop: the training size
    flip: bool = False


@dataclass
class Encoded:
    mean: torch.Tensor  # (4, h/8, w/8)
    std: torch.Tensor
    alpha: torch.Tensor | None  # (1, H, W) in 0..1 at bucket size; None for an opaque image


def load_pixels(job: ImageJob) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(RGB in -1..1, alpha in 0..1 or None) of `job`, resized, cropped and flipped."""
    try:
        with Image.open(job.path) as im:
            im.load()
            rgba = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(job.path, f"training image is not readable ({exc})") from exc
    if rgba.size != job.resized:
        rgba = rgba.resize(job.resized, Image.Resampling.LANCZOS)
    x, y = job.crop_top_left
    w, h = job.bucket
    if x < 0 or y < 0 or x + w > rgba.width or y + h > rgba.height:
        raise InputError(job.path, f"crop {job.crop_top_left}+{job.bucket} outside the resized image {rgba.size}")
    rgba = rgba.crop((x, y, x + w, y + h))
    if job.flip:
        rgba = rgba.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(rgba, dtype=np.float32)
    pixels = torch.from_numpy(array[..., :3] / 127.5 - 1.0).permute(2, 0, 1).contiguous()
    alpha = None
    if array.shape[-1] == 4 and (array[..., 3] < 255).any():
        alpha = torch.from_numpy(array[..., 3] / 255.0)[None].contiguous()
    return pixels, alpha


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A digest of `module`'s weights: two VAEs share cached latents only when their weights are equal (a model's
    name alone cannot tell two checkpoints saved under the same file name apart)."""
    digest = hashlib.sha1()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(job: ImageJob, vae_version: str) -> str:
    digest = hashlib.sha256()
    digest.update(Path(job.path).read_bytes())
    digest.update(repr((CACHE_FORMAT, job.resized, job.crop_top_left, job.bucket, job.flip, vae_version)).encode())
    return digest.hexdigest()[:32]


class LatentCache:
    """Latents of training images: memory first, then ``folder`` (None: memory only), else the VAE."""

    def __init__(self, vae: Any, vae_version: str, folder: Path | None, device: str = "cpu") -> None:
        self.vae, self.vae_version, self.folder, self.device = vae, vae_version, folder, device
        self.memory: dict[str, Encoded] = {}
        self.hits = {"memory": 0, "disk": 0, "encoded": 0}

    def get(self, job: ImageJob) -> Encoded:
        key = cache_key(job, self.vae_version)
        if key in self.memory:
            self.hits["memory"] += 1
            return self.memory[key]
        path = self.folder / f"{key}.safetensors" if self.folder else None
        encoded = self._read(path) if path and path.is_file() else None
        if encoded is not None:
            self.hits["disk"] += 1
        else:
            encoded = self._encode(job)
            self.hits["encoded"] += 1
            if path is not None:
                self._write(path, encoded)
        self.memory[key] = encoded
        return encoded

    @torch.no_grad()
    def _encode(self, job: ImageJob) -> Encoded:
        pixels, alpha = load_pixels(job)
        dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(pixels[None].to(self.device, dtype)).latent_dist
        return Encoded(dist.mean[0].float().cpu(), dist.std[0].float().cpu(), alpha)

    @staticmethod
    def _read(path: Path) -> Encoded | None:
        try:
            data = load_file(str(path))
        except Exception:  # noqa: BLE001 - a damaged cache file is re-encoded, never trusted
            return None
        return Encoded(data["mean"], data["std"], data.get("alpha"))

    @staticmethod
    def _write(path: Path, encoded: Encoded) -> None:
        tensors = {"mean": encoded.mean.contiguous(), "std": encoded.std.contiguous()}
        if encoded.alpha is not None:
            tensors["alpha"] = encoded.alpha.contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": CACHE_FORMAT})
