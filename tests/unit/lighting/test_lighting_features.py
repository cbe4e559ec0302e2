"""Lighting measures on synthetic frames whose light is known."""

from __future__ import annotations

import numpy as np
import pytest

from castlab.config import load_config
from castlab.lighting.features import cct_mccamy, encode, lighting_features, linear

SETTINGS = load_config().lighting


def features(image: np.ndarray):
    return lighting_features(image, SETTINGS)


def flat(rgb: tuple[int, int, int], size: tuple[int, int] = (90, 160)) -> np.ndarray:
    return np.full((*size, 3), rgb, np.uint8)


def lit_from(side: str, size: tuple[int, int] = (90, 160)) -> np.ndarray:
    """A grey set lit from `side`: brightness falls off away from it."""
    h, w = size
    ramp = {"left": np.tile(np.linspace(1, 0.1, w), (h, 1)), "right": np.tile(np.linspace(0.1, 1, w), (h, 1)),
            "top": np.tile(np.linspace(1, 0.1, h)[:, None], (1, w))}[side]
    return np.repeat((ramp * 230)[..., None], 3, axis=2).astype(np.uint8)


def test_srgb_round_trip_and_d65_white():
    values = np.linspace(0, 1, 11)
    assert np.allclose(encode(linear(values)), values, atol=1e-6)
    assert cct_mccamy(np.ones(3)) == pytest.approx(6504, abs=60)  # sRGB white is D65
    assert cct_mccamy(np.zeros(3)) is None


def test_colour_temperature_orders_warm_neutral_cool():
    tungsten, daylight, sky = (features(flat(c)) for c in ((255, 180, 110), (250, 250, 250), (190, 215, 255)))
    assert tungsten.cct_kelvin < 4000 < daylight.cct_kelvin < 7500 < sky.cct_kelvin
    assert (tungsten.warmth, daylight.warmth, sky.warmth) == ("warm", "neutral", "cool")
    assert features(flat((0, 0, 0))).warmth == "unknown"


def test_key_and_contrast():
    night, noon = features(flat((30, 30, 40))), features(flat((235, 235, 230)))
    assert (night.key, noon.key) == ("low-key", "high-key")
    assert night.rms_contrast == pytest.approx(0, abs=1e-4) and night.spread == pytest.approx(0, abs=1e-4)
    checker = np.kron(np.indices((9, 16)).sum(axis=0) % 2, np.ones((10, 10)))[..., None].repeat(3, 2) * 255
    hard = features(checker.astype(np.uint8))
    assert hard.rms_contrast > 0.45 and hard.spread > 0.95 and hard.key == "mid-key"
    assert sum(hard.histogram) == pytest.approx(1) and hard.histogram[0] == hard.histogram[-1] == pytest.approx(0.5)


@pytest.mark.parametrize("side", ["left", "right", "top"])
def test_key_direction_follows_the_light(side):
    assert features(lit_from(side)).direction == side


def test_even_light_is_frontal():
    rng = np.random.default_rng(0)
    noisy = np.clip(flat((128, 128, 128)).astype(int) + rng.integers(-20, 20, (90, 160, 3)), 0, 255).astype(np.uint8)
    assert features(noisy).direction == "frontal"
