"""OpenPose-style skeleton images from known keypoints."""

from __future__ import annotations

import numpy as np
from test_pose_geometry import skeleton

from castlab.pose.geometry import K
from castlab.pose.skeleton import COLOURS, draw_skeleton, openpose_points


def test_openpose_points_add_the_neck_and_drop_missing_joints():
    kp = skeleton(at=(100, 150))
    kp[K["left_ear"], 2] = 0.0
    points = openpose_points(kp, 0.3)
    assert len(points) == 18
    assert points[1] == ((kp[K["left_shoulder"], 0] + kp[K["right_shoulder"], 0]) / 2, kp[K["left_shoulder"], 1])
    assert points[0] == tuple(kp[K["nose"], :2]) and points[17] is None  # OpenPose's last point: the left ear


def test_joints_are_drawn_in_openpose_colours_where_the_keypoints_are():
    kp = skeleton(at=(100, 150))
    image = draw_skeleton(kp, (200, 300), 0.3)
    assert image.shape == (300, 200, 3) and image.dtype == np.uint8
    for coco, openpose in ((K["nose"], 0), (K["right_wrist"], 4), (K["left_ankle"], 13)):
        x, y = kp[coco, :2].astype(int)
        assert tuple(image[y, x]) == COLOURS[openpose]
    assert (image.sum(axis=2) == 0).mean() > 0.8  # black around the figure
    shifted = draw_skeleton(kp, (100, 150), 0.3, offset=(50, 10), scale=0.5)  # the dataset image's crop + resize
    x, y = ((kp[K["nose"], :2] - (50, 10)) * 0.5).astype(int)
    assert tuple(shifted[y, x]) == COLOURS[0]


def test_missing_joints_are_not_drawn():
    kp = skeleton(at=(100, 150))
    kp[:, 2] = 0.0
    assert draw_skeleton(kp, (200, 300), 0.3).sum() == 0
