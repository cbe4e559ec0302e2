import pickle
from pathlib import Path

import pytest
import yaml

from castlab.config import CONFIGS_DIR, load_config
from castlab.errors import ConfigError
from castlab.settings import Settings


def test_3d_defaults_come_from_configs_dir():
    raw = yaml.safe_load((CONFIGS_DIR / "defaults.yaml").read_text())
    cfg = load_config()
    assert cfg.quality.blur_threshold == raw["quality"]["blur_threshold"] == 80.0
    assert cfg.segmentation.alpha_threshold == 0.15
    assert cfg.segmentation.min_size == 128
    assert cfg.clustering.min_cluster_size == 12
    assert cfg.clustering.min_samples == 2
    assert cfg.training.clip_skip == 2
    assert cfg.dataset.flip_aug is False


def test_every_default_is_declared_once_in_yaml_and_typed_in_settings():
    """The models carry no defaults of their own for sections: every section key comes from defaults.yaml."""
    raw = yaml.safe_load((CONFIGS_DIR / "defaults.yaml").read_text())
    for name, field in Settings.model_fields.items():
        assert name in raw, f"section {name} is typed but has no defaults in configs/defaults.yaml"
        model = field.annotation
        if name == "models" or not hasattr(model, "model_fields"):
            continue
        for key, sub in model.model_fields.items():
            assert sub.is_required(), f"{name}.{key} has a default in code; it belongs in configs/defaults.yaml"
            assert key in raw[name], f"{name}.{key} is missing from configs/defaults.yaml"


def test_preset_and_override_file_win_and_each_value_knows_its_file(tmp_path: Path):
    override = tmp_path / "title.yaml"
    override.write_text("quality:\n  blur_threshold: 42\nframes:\n  mode: interval\n")
    cfg = load_config(overrides=[override], preset="2d")
    assert cfg.quality.blur_threshold == 42
    assert cfg.frames.mode == "interval"
    assert cfg.dataset.caption_prefix == "2d animated character"
    assert cfg.segmentation.min_size == 128  # untouched default survives the merge
    assert str(override) in cfg.sources
    assert cfg.origin("quality.blur_threshold") == str(override)
    assert cfg.origin("dataset.caption_prefix").endswith("presets/2d.yaml")
    assert cfg.origin("segmentation.min_size").endswith("defaults.yaml")


def test_a_misspelt_key_fails_at_load_naming_key_and_file(tmp_path: Path):
    bad = tmp_path / "my_title.yaml"
    bad.write_text("clustering:\n  min_cluster_sise: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[bad])
    message = str(err.value)
    assert str(bad) in message and "clustering.min_cluster_sise" in message
    assert "did you mean 'min_cluster_size'" in message


def test_a_wrong_type_or_range_fails_at_load_naming_key_and_file(tmp_path: Path):
    bad = tmp_path / "types.yaml"
    bad.write_text("dedup:\n  ssim_size: big\nquality:\n  min_width: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[bad])
    message = str(err.value)
    assert f"{bad}: setting 'dedup.ssim_size'" in message and '"big"' in message
    assert f"{bad}: setting 'quality.min_width'" in message and "greater than or equal to 1" in message
    with pytest.raises(ConfigError, match="arguments: setting 'frames.mode'"):
        load_config(extra={"frames": {"mode": "sometimes"}})
    with pytest.raises(ConfigError, match="clustering.min_samples"):
        load_config(extra={"clustering": {"min_samples": True}})  # a bool is not an integer here


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
    with pytest.raises(ConfigError, match="setting 'nope.key' does not exist"):
        load_config().value("nope.key")
    assert load_config().value("dataset.resolution") == 512


def test_resolved_yaml_loads_back_and_names_sources(tmp_path: Path):
    override = tmp_path / "title.yaml"
    override.write_text("dataset:\n  trigger_token: zyx\n")
    cfg = load_config(overrides=[override], extra={"seed": 7})
    text = cfg.to_yaml()
    assert yaml.safe_load(text) == cfg.to_dict()
    assert f'trigger_token: "zyx"  # {override}' in text
    assert "seed: 7  # arguments" in text
    assert 'mode: "scene"  # configs/defaults.yaml' in text  # inside the project: a relative path


def test_config_survives_pickling_with_its_provenance(tmp_path: Path):
    override = tmp_path / "title.yaml"
    override.write_text("quality:\n  blur_threshold: 55\n")
    cfg = pickle.loads(pickle.dumps(load_config(overrides=[override])))  # what a task or Dask worker receives
    assert cfg.quality.blur_threshold == 55 and cfg.origin("quality.blur_threshold") == str(override)


def test_profile_selects_model_settings(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CASTLAB_PROFILE", raising=False)
    assert load_config(profile="full").model("segmenter").image_size == 1024
    assert load_config(profile="tiny").model("segmenter").image_size == 256


def test_the_2d_preset_names_no_3d_medium_anywhere():
    from castlab.evaluate.suite import suite_prompts

    def texts(cfg) -> list[str]:
        prompts = [spec.prompt for spec in suite_prompts(cfg, "zkx", "rabbit")]
        return [cfg.segmentation.character_prompt, cfg.captions.prompt, cfg.dataset.caption_prefix, *prompts]

    assert any("3d animated character" in t for t in texts(load_config()))
    two_d = texts(load_config(preset="2d"))
    assert not [t for t in two_d if "3d" in t.lower()]
    assert sum("2d animated character" in t for t in two_d) > 10  # the suite's prompts follow the preset's medium
