"""The pose model role: tiny ViTPose (real architecture, random weights) gives COCO-17 keypoints inside each box;
the full profile never falls back to random weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from castlab.config import load_config
from castlab.errors import ConfigError
from castlab.models.pose import KEYPOINTS, load_pose_estimator


def test_tiny_vitpose_keypoints_per_box():
    estimator = load_pose_estimator(load_config(profile="tiny"))
    assert estimator.model_version.startswith("tiny-vitpose-")
    assert type(estimator.model).__name__ == "VitPoseForPoseEstimation"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    boxes = [(10, 10, 40, 90), (90, 20, 50, 80)]
    found = estimator.keypoints(image, boxes)
    assert len(found) == 2 and all(k.shape == (KEYPOINTS, 3) for k in found)
    for (x, y, w, h), kp in zip(boxes, found, strict=True):  # heatmap peaks map back into their own box, which
        cx, cy = x + w / 2, y + h / 2  # ViTPose widens to 3:4 with a 25 % margin (plus a heatmap cell of slack)
        half_w, half_h = max(w, h * 0.75) * 1.25 / 2 + 8, max(h, w / 0.75) * 1.25 / 2 + 8
        assert np.all((np.abs(kp[:, 0] - cx) <= half_w) & (np.abs(kp[:, 1] - cy) <= half_h))
    assert found[0][:, 0].mean() < boxes[1][0] < found[1][:, 0].mean()  # each box's keypoints are its own
    again = load_pose_estimator(load_config(profile="tiny")).keypoints(image, boxes)
    assert np.allclose(found[0], again[0])  # seeded: the same model every time
    assert estimator.keypoints(image, []) == []


def test_full_pose_model_missing_is_a_config_error(tmp_path):
    override = tmp_path / "pose.yaml"
    override.write_text("models:\n  full:\n    pose: { model: nobody/no-such-vitpose, local_files_only: true }\n")
    with pytest.raises(ConfigError, match=r"models.full.pose.model: .*never falls back to random weights"):
        load_pose_estimator(load_config([override], profile="full"))
    override.write_text("models:\n  full:\n    pose: { model: null }\n")
    with pytest.raises(ConfigError, match="models.full.pose.model is not set"):
        load_pose_estimator(load_config([override], profile="full"))
