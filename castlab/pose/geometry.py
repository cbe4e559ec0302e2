"""Pose geometry on COCO-17 body keypoints (what ViTPose predicts): normalisation for position and scale, the view
(front / back / side) and the action category (standing / walking / running / sitting / other) read from the
skeleton alone, so a known skeleton always gets the same answer.

Keypoints are an array (17, 3): x, y in pixels (y down) and a confidence; a joint below ``pose.min_confidence`` is
treated as missing. The limits are the ``pose:`` settings (torso lengths and degrees).
"""

from __future__ import annotations

import numpy as np

from castlab.settings import PoseSettings

COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")
K = {name: i for i, name in enumerate(COCO_KEYPOINTS)}
SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
            (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))  # COCO's limbs (0-based)
CATEGORIES = ("standing", "walking", "running", "sitting", "other")
VIEWS = ("front", "back", "side", "unknown")


def _point(kp: np.ndarray, name: str, t: PoseSettings) -> np.ndarray | None:
    x, y, c = kp[K[name]]
    return np.array([x, y], float) if c >= t.min_confidence else None


def _mid(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return a if b is None else b
    return (a + b) / 2


def torso(kp: np.ndarray, t: PoseSettings) -> tuple[np.ndarray, np.ndarray] | None:
    """(shoulder centre, hip centre), None when either is missing."""
    shoulders = _mid(_point(kp, "left_shoulder", t), _point(kp, "right_shoulder", t))
    hips = _mid(_point(kp, "left_hip", t), _point(kp, "right_hip", t))
    if shoulders is None or hips is None or np.linalg.norm(shoulders - hips) < 1e-6:
        return None
    return shoulders, hips


def normalise(keypoints: np.ndarray, t: PoseSettings) -> np.ndarray | None:
    """Keypoints (17, 3) with x, y moved to the hip centre and divided by the torso length (confidence kept; missing
    joints become NaN); None without a torso. Two poses of any size or place compare directly."""
    kp = np.asarray(keypoints, float)
    found = torso(kp, t)
    if found is None:
        return None
    shoulders, hips = found
    out = kp.copy()
    out[:, :2] = (kp[:, :2] - hips) / np.linalg.norm(shoulders - hips)
    out[kp[:, 2] < t.min_confidence, :2] = np.nan
    return out


def _angle_from_vertical(top: np.ndarray, bottom: np.ndarray) -> float:
    dx, dy = bottom - top
    return float(np.degrees(np.arctan2(abs(dx), abs(dy)))) if dy > 0 else 90.0 + float(np.degrees(np.arctan2(
        abs(dy), abs(dx))))


def pose_category(keypoints: np.ndarray, t: PoseSettings) -> str:
    """standing | walking | running | sitting | other (no torso, no legs, lying or bent over)."""
    kp = normalise(keypoints, t)
    if kp is None:
        return "other"
    shoulders = _mid(_point(kp, "left_shoulder", t), _point(kp, "right_shoulder", t))
    if _angle_from_vertical(shoulders, np.zeros(2)) > t.lying_torso_deg:
        return "other"
    legs = []
    for side in ("left", "right"):
        hip, knee, ankle = (_point(kp, f"{side}_{j}", t) for j in ("hip", "knee", "ankle"))
        if hip is not None and knee is not None:
            legs.append((hip, knee, ankle))
    if not legs:
        return "other"
    if len(legs) == 2 and all(_angle_from_vertical(hip, knee) > t.sitting_thigh_deg for hip, knee, _ in legs):
        return "sitting"
    ankles = [a for _, _, a in legs if a is not None]
    if len(ankles) < 2:
        return "standing" if all(_angle_from_vertical(h, k) <= t.sitting_thigh_deg for h, k, _ in legs) else "other"
    stride = abs(ankles[0][0] - ankles[1][0])
    lifted = abs(ankles[0][1] - ankles[1][1])
    if stride >= t.running_stride or lifted >= t.lifted_foot:
        return "running"
    return "walking" if stride >= t.walking_stride else "standing"


def pose_view(keypoints: np.ndarray, t: PoseSettings) -> str:
    """front | back | side | unknown: narrow shoulders are a side view; otherwise a visible face (nose or both
    eyes) is the front, none the back."""
    kp = normalise(keypoints, t)
    if kp is None:
        return "unknown"
    left, right = _point(kp, "left_shoulder", t), _point(kp, "right_shoulder", t)
    if left is None or right is None or abs(left[0] - right[0]) < t.side_shoulders:
        return "side"
    face = _point(kp, "nose", t) is not None or (_point(kp, "left_eye", t) is not None
                                                and _point(kp, "right_eye", t) is not None)
    return "front" if face else "back"
