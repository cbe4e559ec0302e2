"""The depth model role (``models.<profile>.depth``): monocular depth for ControlNet depth conditioning.

- ``tiny``: transformers' ``DPTForDepthEstimation`` with a small configuration (``tiny-dpt``: 4 layers of 32,
  64 px input) and seeded random weights: the real architecture, offline, a depth map of noise.
- ``full``: any transformers depth-estimation model by hub id or local folder (default Depth Anything small,
  ``LiheYoung/depth-anything-small-hf``), loaded with ``AutoModelForDepthEstimation``; never downloaded unless
  ``local_files_only: false``, never random weights instead.

:meth:`DepthEstimator.depth_map` gives the RGB depth image ControlNets take (near = bright, normalised 0-255).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from PIL import Image

from castlab.config import Config
from castlab.errors import ConfigError
from castlab.models.pretrained import ProcessorModel

TINY_ARCH = "tiny-dpt"
TINY_CONFIG = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
               "image_size": 64, "patch_size": 16, "backbone_out_indices": [0, 1, 2, 3],
               "neck_hidden_sizes": [8, 16, 32, 32], "fusion_hidden_size": 16, "reassemble_factors": [4, 2, 1, 0.5]}


class DepthEstimator(ProcessorModel):
    """A depth model with its image processor."""

    @torch.no_grad()
    def depth_map(self, image: Image.Image) -> Image.Image:
        """The depth of `image` as an RGB image of the same size, normalised to 0-255 (larger = nearer, as
        DPT / Depth Anything predict inverse depth)."""
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        predicted = self.model(pixel_values=inputs["pixel_values"].to(self.device, torch.float32)).predicted_depth
        depth = torch.nn.functional.interpolate(predicted[:, None].float().cpu(), size=(image.height, image.width),
                                                mode="bicubic", align_corners=False)[0, 0].numpy()
        low, high = float(depth.min()), float(depth.max())
        scaled = np.zeros_like(depth) if high - low < 1e-8 else (depth - low) / (high - low)
        return Image.fromarray((scaled * 255).round().astype(np.uint8)).convert("RGB")


def _tiny(cfg: Config) -> DepthEstimator:
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    arch = str(cfg.model("depth").arch or "")
    if arch != TINY_ARCH:
        raise ConfigError(f"models.tiny.depth.arch: unknown tiny depth model {arch!r} (known: {TINY_ARCH})")
    seed = int(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DPTForDepthEstimation(DPTConfig(**TINY_CONFIG))
    side = TINY_CONFIG["image_size"]
    processor = DPTImageProcessor(size={"height": side, "width": side}, keep_aspect_ratio=False)
    digest = hashlib.sha1(json.dumps(TINY_CONFIG, sort_keys=True).encode()).hexdigest()[:8]
    return DepthEstimator(model, processor, f"{TINY_ARCH}-{digest}-s{seed}", "cpu")


def _full(cfg: Config) -> DepthEstimator:
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    from castlab.models.pretrained import pretrained, role_device

    pre = pretrained(cfg, "depth", "a depth-estimation hub id (e.g. LiheYoung/depth-anything-small-hf) or folder")
    model, processor = pre.load("depth-estimation", lambda: (
        AutoModelForDepthEstimation.from_pretrained(pre.source, **pre.model_kwargs),
        AutoImageProcessor.from_pretrained(pre.source, **pre.kwargs)))
    device = role_device(cfg, "depth")
    return DepthEstimator(model.to(device), processor, pre.version(model.config, "depth-"), device)


def load_depth_estimator(cfg: Config) -> DepthEstimator:
    """The depth model of the active profile (module docstring)."""
    return _tiny(cfg) if cfg.profile == "tiny" else _full(cfg)
