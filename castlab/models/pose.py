"""Body keypoints per character instance (``models.<profile>.pose``): ViTPose, top-down on the instance box, COCO-17
keypoints with a confidence each (what :mod:`castlab.pose.geometry` reads).

- ``tiny``: ``arch: tiny-vitpose`` — a ``VitPoseForPoseEstimation`` (the architecture of
  usyd-community/vitpose-base-simple) with a small backbone (:data:`TINY_BACKBONE`) and random weights seeded from
  ``seed``, built in memory (offline); its keypoints are noise. ``model_version`` is
  ``tiny-vitpose-<hash of the recipe>-s<seed>``.
- ``full``: ``model`` (hub id or local folder) at ``revision``, loaded with ``VitPoseForPoseEstimation`` +
  ``VitPoseImageProcessor``; with ``local_files_only`` (the default) castlab never downloads, and a model that is
  not there is a :class:`ConfigError` naming the setting (never random weights instead).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch

from castlab.config import Config
from castlab.errors import ConfigError
from castlab.models.pretrained import ProcessorModel, role_device

TINY_ARCH = "tiny-vitpose"
TINY_SIZE = (64, 48)  # height, width: ViTPose's 4:3 person box
TINY_BACKBONE = {"image_size": list(TINY_SIZE), "patch_size": [16, 16], "hidden_size": 32, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "mlp_ratio": 2, "out_indices": [2]}
KEYPOINTS = 17


class PoseEstimator(ProcessorModel):
    """ViTPose with its image processor; :meth:`keypoints` per box of an image."""

    @torch.no_grad()
    def keypoints(self, image: Any, boxes: list[tuple[float, float, float, float]]) -> list[np.ndarray]:
        """A PIL image and instance boxes (x, y, width, height in pixels) → per box an array (17, 3): x, y in image
        pixels and the keypoint's confidence."""
        if not boxes:
            return []
        boxes_list = [[list(map(float, b)) for b in boxes]]
        inputs = self.processor(images=[image.convert("RGB")], boxes=boxes_list, return_tensors="pt")
        outputs = self.model(pixel_values=inputs["pixel_values"].to(self.device, torch.float32))
        outputs.heatmaps = outputs.heatmaps.float().cpu()
        results = self.processor.post_process_pose_estimation(outputs, boxes=boxes_list)[0]
        return [np.concatenate([r["keypoints"].numpy(), r["scores"].numpy()[:, None]], axis=1).astype(np.float32)
                for r in results]


def _tiny(cfg: Config) -> PoseEstimator:
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    arch = str(cfg.model("pose").arch or "")
    if arch != TINY_ARCH:
        raise ConfigError(f"models.tiny.pose.arch: unknown tiny pose model {arch!r} (known: {TINY_ARCH})")
    seed = int(cfg.seed)
    config = VitPoseConfig(backbone_config=VitPoseBackboneConfig(**TINY_BACKBONE), num_labels=KEYPOINTS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VitPoseForPoseEstimation(config)
    processor = VitPoseImageProcessor(size={"height": TINY_SIZE[0], "width": TINY_SIZE[1]})
    digest = hashlib.sha1(json.dumps(TINY_BACKBONE, sort_keys=True).encode()).hexdigest()[:8]
    return PoseEstimator(model, processor, f"{TINY_ARCH}-{digest}-s{seed}", "cpu")


def _full(cfg: Config) -> PoseEstimator:
    from transformers import VitPoseForPoseEstimation, VitPoseImageProcessor

    from castlab.models.pretrained import pretrained

    pre = pretrained(cfg, "pose", "a ViTPose hub id (e.g. usyd-community/vitpose-base-simple) or local folder")

    def load() -> tuple[Any, Any]:
        model = VitPoseForPoseEstimation.from_pretrained(pre.source, dtype=torch.float32, **pre.model_kwargs)
        if int(getattr(model.config, "num_labels", KEYPOINTS)) != KEYPOINTS:
            raise ConfigError(f"{pre.prefix}.model: {pre.source!r} predicts {model.config.num_labels} keypoints, "
                              f"not COCO's {KEYPOINTS}")
        return model, VitPoseImageProcessor.from_pretrained(pre.source, **pre.kwargs)

    model, processor = pre.load("ViTPose", load)
    device = role_device(cfg, "pose")
    return PoseEstimator(model.to(device), processor, pre.version(model.config, "vitpose-"), device)


def load_pose_estimator(cfg: Config) -> PoseEstimator:
    """The pose model of the active profile (module docstring)."""
    return _tiny(cfg) if cfg.profile == "tiny" else _full(cfg)
