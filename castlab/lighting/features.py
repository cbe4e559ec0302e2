"""Lighting measures of one frame, from its pixels alone: luminance histogram and key (low / mid / high), contrast,
a correlated colour temperature estimate and, where the light has a side, the key light's direction.

- Luminance: Rec. 709 luma of the linearised sRGB pixels, reported on the sRGB (perceptual) scale 0-1.
- Contrast: RMS contrast (standard deviation of that luma) and the 5-95 % spread.
- Colour temperature: McCamy's CCT formula on the chromaticity (CIE 1931 xy) of the mean linear colour of the
  brightest quarter of the pixels (the light, not the set's paint); a neutral white reads about 6500 K.
- Key direction: the luminance centroid relative to the frame centre on a heavily smoothed copy; a light from the
  left pulls it left. Below ``lighting.min_direction`` (in half-frame units) the light reads as ``frontal`` (flat).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from castlab.settings import LightingSettings

SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
HISTOGRAM_BINS = 16


@dataclass(frozen=True)
class LightingFeatures:
    mean_luma: float
    median_luma: float
    key: str  # low-key | mid-key | high-key
    rms_contrast: float
    spread: float  # 95th - 5th percentile of luma
    cct_kelvin: float | None  # None for a (near) black frame
    warmth: str  # warm | neutral | cool | unknown
    direction: str  # left | right | top | bottom | frontal
    direction_xy: tuple[float, float]  # the luminance centroid offset, x right / y down, in half-frame units
    histogram: list[float]  # HISTOGRAM_BINS shares of the pixels over luma 0-1

    def as_dict(self) -> dict:
        return asdict(self)


def linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB values 0-1 → linear light."""
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def encode(lin: np.ndarray) -> np.ndarray:
    """Linear light → sRGB values 0-1."""
    lin = np.clip(lin, 0, 1)
    return np.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)


def cct_mccamy(rgb_linear: np.ndarray) -> float | None:
    """Correlated colour temperature (K) of one linear sRGB colour (McCamy 1992; good from about 2000 to 12500 K)."""
    x_, y_, z_ = SRGB_TO_XYZ @ np.asarray(rgb_linear, float)
    total = x_ + y_ + z_
    if total <= 1e-6:
        return None
    x, y = x_ / total, y_ / total
    n = (x - 0.3320) / (0.1858 - y)
    return float(449 * n**3 + 3525 * n**2 + 6823.3 * n + 5520.33)


def lighting_features(image_rgb: np.ndarray, settings: LightingSettings) -> LightingFeatures:
    """The measures of an RGB uint8 frame (module docstring), labelled with the ``lighting:`` settings."""
    rgb = linear(np.asarray(image_rgb, np.float32)[..., :3] / 255.0)
    luma_lin = rgb @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    luma = encode(luma_lin)
    mean = float(luma.mean())
    p5, p95 = np.percentile(luma, [5, 95])
    bright = luma_lin >= np.quantile(luma_lin, 0.75)
    cct = cct_mccamy(rgb[bright].mean(axis=0)) if bright.any() and mean > 0.02 else None
    warmth = ("unknown" if cct is None else "warm" if cct < settings.warm_below_k
              else "cool" if cct > settings.cool_above_k else "neutral")
    h, w = luma.shape
    small = cv2.resize(luma.astype(np.float32), (64, max(1, round(64 * h / w))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 4)
    weights = small - small.min()
    dx = dy = 0.0
    if weights.sum() > 1e-6:
        ys, xs = np.mgrid[: small.shape[0], : small.shape[1]]
        dx = float(((xs + 0.5) / small.shape[1] * 2 - 1).ravel() @ weights.ravel() / weights.sum())
        dy = float(((ys + 0.5) / small.shape[0] * 2 - 1).ravel() @ weights.ravel() / weights.sum())
    if max(abs(dx), abs(dy)) < settings.min_direction:
        direction = "frontal"
    elif abs(dx) >= abs(dy):
        direction = "left" if dx < 0 else "right"
    else:
        direction = "top" if dy < 0 else "bottom"
    hist = np.histogram(luma, bins=HISTOGRAM_BINS, range=(0, 1))[0] / luma.size
    return LightingFeatures(
        mean_luma=round(mean, 4), median_luma=round(float(np.median(luma)), 4),
        key=("low-key" if mean < settings.low_key_below else "high-key" if mean > settings.high_key_above
             else "mid-key"),
        rms_contrast=round(float(luma.std()), 4), spread=round(float(p95 - p5), 4),
        cct_kelvin=None if cct is None else round(cct, 1), warmth=warmth,
        direction=direction, direction_xy=(round(dx, 4), round(dy, 4)),
        histogram=[round(float(v), 5) for v in hist])
