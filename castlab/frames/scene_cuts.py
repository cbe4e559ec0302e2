"""Shot cuts exactly as PySceneDetect's ContentDetector finds them, fed frame by frame or replayed."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detector import FlashFilter

from castlab.config import Config

DETECTOR_WIDTH = 256  # PySceneDetect's own auto-downscale target width


def scene_detector_threshold(cfg: Config) -> float:
    """``frames.scene_threshold`` (normalised) → ContentDetector threshold.

    PySceneDetect 0.6/0.7's ContentDetector scores each frame by the mean absolute difference of
    its H, S and V channels (8-bit, weights 1/1/1/0) from the previous frame: 0 for a still shot,
    typically 30–80 for a hard cut, at most ~255. Its default threshold is 27. castlab's setting is
    that value / 100, so ``0.3`` → ``30.0`` and ``0.27`` reproduces the detector's default.
    """
    value = float(cfg.frames.scene_threshold)  # validated: (0, 2.55]
    return value * 100.0


def content_score(previous_hsv: np.ndarray, hsv: np.ndarray) -> float:
    """ContentDetector's frame score (default weights 1/1/1/0) between two HSV pictures, bit for bit.

    Same arithmetic as ``ContentDetector._calculate_frame_score``: per channel, the sum of absolute
    differences divided by the pixel count, then the weighted mean; the unit tests check equality.
    """
    sums = cv2.sumElems(cv2.absdiff(hsv, previous_hsv))
    pixels = float(hsv.shape[0] * hsv.shape[1])
    return (sums[0] / pixels * 1.0 + sums[1] / pixels * 1.0 + sums[2] / pixels * 1.0 + 0.0 * 0.0) / 3.0


class CutFilter:
    """PySceneDetect's ``FlashFilter`` in MERGE mode (how ContentDetector applies ``min_scene_len``).

    It is only called where it can act: the first frame, frames above the threshold, and the frame
    `length` after the last one above (before that it can neither emit nor change, after it nothing
    changes until the next frame above); the unit tests check this against feeding every frame.
    `primed` starts it as in the middle of a video, the last cut long past.
    """

    def __init__(self, length: int, fps: Fraction, primed: bool = False) -> None:
        self._flash = FlashFilter(mode=FlashFilter.Mode.MERGE, length=length)
        self._length, self._fps = length, fps
        self._last: int | None = None
        self._shift = 0
        if primed and length > 0:
            self._call(0, False)
            self._call(length, True)
            self._last, self._shift = length, 2 * length + 2

    def _call(self, number: int, above: bool) -> list[int]:
        found = self._flash.filter(timecode=FrameTimecode(number, fps=self._fps), above_threshold=above)
        return [int(timecode.frame_num) - self._shift for timecode in found]

    def feed(self, index: int, above: bool) -> list[int]:
        """Frame `index` (consecutive from 0) is / is not above the threshold: the cuts now reported."""
        number = index + self._shift
        if not (above or self._last is None or number == self._last + self._length):
            return []
        if above or self._last is None:
            self._last = number
        return self._call(number, above)


def replay_cuts(frames: int, above: set[int], min_scene_len: int, fps: Fraction) -> list[int]:
    """Cut frames ContentDetector reports for a video whose frames in `above` score >= the threshold."""
    flash = CutFilter(min_scene_len, fps)
    cuts: set[int] = set()
    for index in range(frames):
        cuts.update(flash.feed(index, index in above))
    return sorted(c for c in cuts if 0 < c < frames)
