from pathlib import Path

import pytest
import yaml

from castlab.config import CONFIGS_DIR, load_config
from castlab.errors import ConfigError


def test_3d_defaults_come_from_configs_dir():
    raw = yaml.safe_load((CONFIGS_DIR / "defaults.yaml").read_text())
    cfg = load_config()
    assert cfg.get("quality.blur_threshold") == raw["quality"]["blur_threshold"] == 80.0
    assert cfg.get("segmentation.alpha_threshold") == 0.15
    assert cfg.get("segmentation.min_size") == 128
    assert cfg.get("clustering.min_cluster_size") == 12
    assert cfg.get("clustering.min_samples") == 2
    assert cfg.get("training.clip_skip") == 2
    assert cfg.get("dataset.flip_aug") is False


def test_preset_and_override_file_win(tmp_path: Path):
    override = tmp_path / "title.yaml"
    override.write_text("quality:\n  blur_threshold: 42\nframes:\n  mode: interval\n")
    cfg = load_config(overrides=[override], preset="2d")
    assert cfg.get("quality.blur_threshold") == 42
    assert cfg.get("frames.mode") == "interval"
    assert cfg.get("dataset.caption_prefix") == "2d animated character"
    assert cfg.get("segmentation.min_size") == 128  # untouched default survives the merge
    assert str(override) in cfg.sources


def test_bad_config_inputs_name_the_problem(tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown preset 'oil'"):
        load_config(preset="oil")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(overrides=[tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(overrides=[bad])
    with pytest.raises(ConfigError, match="profile"):
        load_config(profile="huge")
    with pytest.raises(ConfigError, match="setting 'nope.key' is missing"):
        load_config().get("nope.key")


def test_profile_selects_model_settings(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CASTLAB_PROFILE", raising=False)
    assert load_config(profile="full").model("segmenter")["image_size"] == 1024
    assert load_config(profile="tiny").model("segmenter")["image_size"] == 256
