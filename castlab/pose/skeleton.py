"""OpenPose-style skeleton images (the conditioning image ControlNet's OpenPose models were trained on): COCO-17
keypoints → the 18 OpenPose body points (the neck is the shoulders' midpoint), limbs as coloured ellipses and
joints as coloured dots on black, at the training image's size."""

from __future__ import annotations

import math

import cv2
import numpy as np

from castlab.pose.geometry import K

# OpenPose body order (18): nose, neck, right arm, left arm, right leg, left leg, eyes and ears.
OPENPOSE_FROM_COCO = (K["nose"], None, K["right_shoulder"], K["right_elbow"], K["right_wrist"], K["left_shoulder"],
                      K["left_elbow"], K["left_wrist"], K["right_hip"], K["right_knee"], K["right_ankle"],
                      K["left_hip"], K["left_knee"], K["left_ankle"], K["right_eye"], K["left_eye"], K["right_ear"],
                      K["left_ear"])
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))  # OpenPose's body limbs, 0-based
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))  # RGB, one per point and per limb


def openpose_points(keypoints: np.ndarray, min_confidence: float) -> list[tuple[float, float] | None]:
    """The 18 OpenPose points (x, y) of COCO-17 `keypoints` (17, 3); None where a joint is missing."""
    kp = np.asarray(keypoints, float)

    def point(i: int) -> tuple[float, float] | None:
        return (float(kp[i, 0]), float(kp[i, 1])) if kp[i, 2] >= min_confidence else None

    out: list[tuple[float, float] | None] = []
    for coco in OPENPOSE_FROM_COCO:
        if coco is None:
            left, right = point(K["left_shoulder"]), point(K["right_shoulder"])
            out.append(((left[0] + right[0]) / 2, (left[1] + right[1]) / 2) if left and right else None)
        else:
            out.append(point(coco))
    return out


def draw_skeleton(keypoints: np.ndarray, size: tuple[int, int], min_confidence: float,
                  offset: tuple[float, float] = (0.0, 0.0), scale: float = 1.0) -> np.ndarray:
    """An RGB uint8 image `size` (width, height): the skeleton of `keypoints` moved by `offset` and multiplied by
    `scale` (the transform the dataset image went through), on black."""
    width, height = size
    canvas = np.zeros((height, width, 3), np.uint8)
    points = [None if p is None else ((p[0] - offset[0]) * scale, (p[1] - offset[1]) * scale)
              for p in openpose_points(keypoints, min_confidence)]
    stick = max(2, round(min(width, height) / 128))
    for n, (a, b) in enumerate(LIMBS):
        pa, pb = points[a], points[b]
        if pa is None or pb is None:
            continue
        (xa, ya), (xb, yb) = pa, pb
        length = math.hypot(xb - xa, yb - ya)
        angle = math.degrees(math.atan2(yb - ya, xb - xa))
        polygon = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), stick),
                                   int(angle), 0, 360, 1)
        limb = canvas.copy()
        cv2.fillConvexPoly(limb, polygon, COLOURS[n])
        canvas = cv2.addWeighted(canvas, 0.4, limb, 0.6, 0)
    for n, p in enumerate(points):
        if p is not None:
            cv2.circle(canvas, (int(p[0]), int(p[1])), stick + 2, COLOURS[n], thickness=-1)
    return canvas
