"""Pose categories and views from known skeletons (COCO-17, pixels, y down)."""

from __future__ import annotations

import numpy as np
import pytest

from castlab.config import load_config
from castlab.pose import geometry
from castlab.pose.geometry import K

POSE = load_config().pose


def pose_category(kp: np.ndarray) -> str:
    return geometry.pose_category(kp, POSE)


def pose_view(kp: np.ndarray) -> str:
    return geometry.pose_view(kp, POSE)


def normalise(kp: np.ndarray) -> np.ndarray | None:
    return geometry.normalise(kp, POSE)


def skeleton(stride: float = 0.0, lift: float = 0.0, thigh: str = "down", face: bool = True, shoulder: float = 40,
             scale: float = 1.0, at: tuple[float, float] = (300, 200), lying: bool = False) -> np.ndarray:
    """A figure with its hip centre at `at`, torso 100 px * `scale`: `stride` spreads the ankles (torso lengths),
    `lift` raises the right ankle, `thigh` "forward" bends both hips to horizontal (sitting)."""
    pts = {"nose": (0, -130), "left_eye": (6, -136), "right_eye": (-6, -136), "left_ear": (12, -132),
           "right_ear": (-12, -132), "left_shoulder": (shoulder / 2, -100), "right_shoulder": (-shoulder / 2, -100),
           "left_elbow": (25, -55), "right_elbow": (-25, -55), "left_wrist": (28, -10), "right_wrist": (-28, -10),
           "left_hip": (15, 0), "right_hip": (-15, 0)}
    if thigh == "forward":
        pts.update(left_knee=(60, 5), right_knee=(55, 5), left_ankle=(62, 50), right_ankle=(57, 50))
    else:
        half = stride * 100 / 2
        pts.update(left_knee=(15 + half / 2, 50), right_knee=(-15 - half / 2, 50), left_ankle=(half, 100),
                   right_ankle=(-half, 100 - lift * 100))
    kp = np.zeros((17, 3))
    for name, (x, y) in pts.items():
        if lying:
            x, y = y, -x
        kp[K[name]] = (at[0] + x * scale, at[1] + y * scale, 0.9)
    if not face:
        for name in ("nose", "left_eye", "right_eye"):
            kp[K[name], 2] = 0.05
    return kp


@pytest.mark.parametrize(("kwargs", "category"), [
    ({}, "standing"),
    ({"stride": 0.5}, "walking"),
    ({"stride": 1.0}, "running"),
    ({"stride": 0.4, "lift": 0.45}, "running"),
    ({"thigh": "forward"}, "sitting"),
    ({"lying": True}, "other"),
])
def test_known_skeletons_get_their_category(kwargs, category):
    assert pose_category(skeleton(**kwargs)) == category


def test_the_category_does_not_depend_on_place_or_size():
    for kwargs in ({}, {"stride": 0.5}, {"stride": 1.0}, {"thigh": "forward"}):
        assert pose_category(skeleton(**kwargs, scale=0.3, at=(40, 900))) == pose_category(skeleton(**kwargs))
    a, b = normalise(skeleton(stride=0.5)), normalise(skeleton(stride=0.5, scale=2.5, at=(10, 10)))
    assert np.allclose(a, b, equal_nan=True)
    assert np.allclose(a[K["left_shoulder"], :2] - a[K["right_shoulder"], :2], [0.4, 0])  # torso lengths


def test_missing_joints_are_other_and_nan():
    kp = skeleton()
    kp[[K["left_hip"], K["right_hip"]], 2] = 0.0  # no hips: no torso
    assert pose_category(kp) == "other" and pose_view(kp) == "unknown" and normalise(kp) is None
    kp = skeleton()
    kp[[K["left_knee"], K["right_knee"]], 2] = 0.0
    assert pose_category(kp) == "other"
    assert np.isnan(normalise(kp)[K["left_knee"], 0])


def test_views_from_shoulders_and_face():
    assert pose_view(skeleton()) == "front"
    assert pose_view(skeleton(face=False)) == "back"
    assert pose_view(skeleton(shoulder=10)) == "side"
