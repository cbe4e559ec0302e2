"""Frame quality gates: sharpness, brightness, contrast and resolution, each with a recorded reason.

Every gate reads its threshold from ``quality.*`` in the config. A failing frame keeps its row in the
manifest: ``status="rejected"``, ``reject_reason`` (human text) and ``reject_codes`` (machine codes,
``;``-separated, used by reports to count per reason).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from castlab.config import Config

# Reason codes, in the order reports list them.
CORRUPT = "corrupt"
TOO_SMALL = "too_small"
BLUR = "blur"
TOO_DARK = "too_dark"
TOO_BRIGHT = "too_bright"
LOW_CONTRAST = "low_contrast"
NSFW = "nsfw"  # the safety gate (castlab.frames.safety), after these
UNREADABLE = "unreadable"  # a frame a later step could not read (castlab.frames.failures)
WRITE_FAILED = "write_failed"  # ... or whose outputs could not be written
DUPLICATE = "duplicate"
REASON_CODES = (CORRUPT, TOO_SMALL, BLUR, TOO_DARK, TOO_BRIGHT, LOW_CONTRAST, NSFW, DUPLICATE, UNREADABLE,
                WRITE_FAILED)


@dataclass(frozen=True)
class QualityGates:
    blur_min: float
    min_width: int
    min_height: int
    brightness_min: float
    brightness_max: float
    contrast_min: float

    @classmethod
    def from_config(cls, cfg: Config) -> QualityGates:
        return cls(
            blur_min=float(cfg.quality.blur_threshold),
            min_width=int(cfg.quality.min_width),
            min_height=int(cfg.quality.min_height),
            brightness_min=float(cfg.quality.brightness_min),
            brightness_max=float(cfg.quality.brightness_max),
            contrast_min=float(cfg.quality.contrast_min),
        )

    def assess(self, bgr: np.ndarray, corrupt: bool = False) -> tuple[dict[str, float], list[tuple[str, str]]]:
        """Metrics of one BGR frame and the failed gates as ``(code, text)`` pairs (empty = kept)."""
        height, width = bgr.shape[:2]
        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        mean, std = cv2.meanStdDev(grey)
        metrics = {
            "blur": round(sharpness(grey), 3),
            "brightness": round(float(mean[0, 0]), 3),
            "contrast": round(float(std[0, 0]), 3),
        }
        failed: list[tuple[str, str]] = []
        if corrupt:
            failed.append((CORRUPT, "corrupt frame (decode error)"))
        if width < self.min_width or height < self.min_height:
            failed.append((TOO_SMALL, f"too small: {width}x{height} < {self.min_width}x{self.min_height}"))
        if metrics["blur"] < self.blur_min:
            failed.append((BLUR, f"blur {metrics['blur']:.1f} < {self.blur_min:g}"))
        if metrics["brightness"] < self.brightness_min:
            failed.append((TOO_DARK, f"too dark: brightness {metrics['brightness']:.1f} < {self.brightness_min:g}"))
        if metrics["brightness"] > self.brightness_max:
            failed.append(
                (TOO_BRIGHT, f"too bright: brightness {metrics['brightness']:.1f} > {self.brightness_max:g}")
            )
        if metrics["contrast"] < self.contrast_min:
            failed.append((LOW_CONTRAST, f"low contrast: {metrics['contrast']:.1f} < {self.contrast_min:g}"))
        return metrics, failed


def sharpness(grey: np.ndarray) -> float:
    """Variance of the Laplacian of a grey image (low = blurry); ``quality.blur_threshold`` gates it."""
    # int16 holds a 3x3 Laplacian of 8-bit grey exactly (|value| <= 1020): same variance as float, half the time
    depth = cv2.CV_16S if grey.dtype == np.uint8 else cv2.CV_32F
    _, std = cv2.meanStdDev(cv2.Laplacian(grey, depth))
    return float(std[0, 0]) ** 2
