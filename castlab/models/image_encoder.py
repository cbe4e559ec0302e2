"""General image encoder (DINOv2): identity, diversity, drift and memorisation features for evaluation.

Profiles (``models.<profile>.image_encoder``):

- ``tiny``: ``arch: tiny-dinov2`` — a transformers ``Dinov2Model`` (the real architecture) with a small config
  (:data:`TINY_CONFIG`) and random weights seeded from ``seed``, built in memory (no files), with a
  ``BitImageProcessor`` set up as DINOv2's but at :data:`TINY_SIZE` pixels. ``model_version`` is
  ``tiny-dinov2-<hash of the recipe>-s<seed>``.
- ``full``: ``model`` (hub id or local folder of a DINOv2 checkpoint, e.g. ``facebook/dinov2-base``) loaded with
  ``Dinov2Model.from_pretrained`` and ``AutoImageProcessor`` at ``revision``; with ``local_files_only`` (the
  default) castlab never downloads. A model that is not there is a :class:`ConfigError`; there is no fallback to
  random weights. ``model_version`` is ``dinov2-<name>@<revision or commit>``.

Embedding: the CLS token and the mean of the patch tokens of the last layer, each L2-normalised, concatenated
and scaled by 1/√2, so the cosine of two embeddings is the mean of their CLS cosine and their mean-patch cosine.
That is DINOv2's own linear-probe feature (CLS ⊕ average-pooled patches): CLS carries the global "what",
the patch mean keeps the local appearance (colours, materials, shapes) that tells characters of one film apart.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch

from castlab.config import Config
from castlab.errors import ConfigError

TINY_ARCH = "tiny-dinov2"
TINY_SIZE = 64
TINY_CONFIG = {
    "hidden_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 3,
    "intermediate_size": 96,
    "image_size": TINY_SIZE,
    "patch_size": 8,
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
_EMBEDDING = "cls+meanpatch/v1"  # bump when the feature recipe changes (it is part of the tiny version hash)
_BATCH = 32


class ImageEncoder:
    """A DINOv2 model and its image processor; :meth:`encode` gives L2-normalised float32 rows."""

    def __init__(self, model: Any, processor: Any, model_version: str, device: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.model_version = model_version
        self.device = device

    @property
    def dim(self) -> int:
        """Embedding width: 2 × the model's hidden size (CLS ⊕ mean patch)."""
        return 2 * int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, images: list[Any]) -> np.ndarray:
        """PIL images (any mode, any size) → (N, :attr:`dim`) unit vectors, in batches of 32."""
        out = []
        for start in range(0, len(images), _BATCH):
            batch = [im.convert("RGB") for im in images[start : start + _BATCH]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            hidden = self.model(pixel_values=pixels.to(self.device, torch.float32)).last_hidden_state.float()
            cls = torch.nn.functional.normalize(hidden[:, 0], dim=-1)
            patches = torch.nn.functional.normalize(hidden[:, 1:].mean(dim=1), dim=-1)
            out.append((torch.cat([cls, patches], dim=-1) / np.sqrt(2.0)).cpu().numpy().astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def _tiny_processor() -> Any:
    from transformers import BitImageProcessor

    # facebook/dinov2-*'s preprocessing (bicubic resize of the short side, centre crop, ImageNet statistics),
    # at the tiny model's resolution
    return BitImageProcessor(
        size={"shortest_edge": TINY_SIZE}, crop_size={"height": TINY_SIZE, "width": TINY_SIZE}, resample=3,
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True,
    )


def _load_tiny(cfg: Config, device: str) -> ImageEncoder:
    from transformers import Dinov2Config, Dinov2Model

    arch = str(cfg.model("image_encoder").arch or "")
    if arch != TINY_ARCH:
        raise ConfigError(f"models.tiny.image_encoder.arch: unknown tiny image encoder {arch!r} (known: {TINY_ARCH})")
    seed = int(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Dinov2Model(Dinov2Config(**TINY_CONFIG))
    recipe = {"config": TINY_CONFIG, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "embedding": _EMBEDDING}
    digest = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    return ImageEncoder(model.to(device), _tiny_processor(), f"{TINY_ARCH}-{digest}-s{seed}", device)


def _load_full(cfg: Config, device: str) -> ImageEncoder:
    from transformers import AutoConfig, AutoImageProcessor, Dinov2Model

    from castlab.models.pretrained import pretrained

    pre = pretrained(cfg, "image_encoder", "a DINOv2 hub id (e.g. facebook/dinov2-base) or local folder")

    def load() -> tuple[Any, Any, Any]:
        config = AutoConfig.from_pretrained(pre.source, **pre.kwargs)
        if config.model_type != "dinov2":
            raise ConfigError(f"{pre.prefix}.model: {pre.source!r} is a {config.model_type!r} model, not DINOv2 "
                              "(dinov2)")
        return (config, AutoImageProcessor.from_pretrained(pre.source, **pre.kwargs),
                Dinov2Model.from_pretrained(pre.source, dtype=torch.float32, **pre.model_kwargs))

    config, processor, model = pre.load("DINOv2", load)
    return ImageEncoder(model.to(device), processor, pre.version(config, "dinov2-"), device)


def load_image_encoder(cfg: Config, device: str = "cpu") -> ImageEncoder:
    """The DINOv2 image encoder of the active profile (see module docstring)."""
    return _load_tiny(cfg, device) if cfg.profile == "tiny" else _load_full(cfg, device)
