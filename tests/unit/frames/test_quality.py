import numpy as np
import pytest

from castlab.config import load_config
from castlab.frames.quality import BLUR, LOW_CONTRAST, TOO_BRIGHT, TOO_DARK, TOO_SMALL, QualityGates


def _texture(mean: float, spread: float, size=(300, 320), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = np.clip(rng.normal(mean, spread, size), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


@pytest.fixture
def gates() -> QualityGates:
    return QualityGates.from_config(load_config())


def test_a_well_exposed_sharp_frame_passes(gates):
    metrics, failed = gates.assess(_texture(128, 50))
    assert failed == []
    assert metrics["brightness"] == pytest.approx(128, abs=3) and metrics["contrast"] > 40 and metrics["blur"] > 1000


@pytest.mark.parametrize(("mean", "spread", "code"), [(8, 6, TOO_DARK), (247, 6, TOO_BRIGHT), (128, 2, LOW_CONTRAST)])
def test_each_gate_records_its_code_and_reason(gates, mean, spread, code):
    metrics, failed = gates.assess(_texture(mean, spread))
    codes = [c for c, _ in failed]
    assert code in codes
    text = dict(failed)[code]
    metric = "contrast" if code == LOW_CONTRAST else "brightness"
    assert f"{metrics[metric]:.1f}" in text


def test_blur_and_size_gates(gates):
    flat = np.full((100, 120, 3), 128, np.uint8)
    codes = [c for c, _ in gates.assess(flat)[1]]
    assert TOO_SMALL in codes and BLUR in codes and LOW_CONTRAST in codes
    assert [c for c, _ in gates.assess(_texture(128, 50), corrupt=True)[1]] == ["corrupt"]


def test_thresholds_come_from_the_config():
    dark = _texture(30, 20)
    assert TOO_DARK not in [c for c, _ in QualityGates.from_config(load_config()).assess(dark)[1]]
    strict = QualityGates.from_config(load_config(extra={"quality": {"brightness_min": 60}}))
    assert TOO_DARK in [c for c, _ in strict.assess(dark)[1]]
    assert QualityGates.from_config(load_config(preset="2d")).blur_min == 100.0
