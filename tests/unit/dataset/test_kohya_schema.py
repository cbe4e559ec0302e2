"""The kohya sd-scripts schema (tests/helpers/kohya_schema.py) and castlab's training templates against it."""

import copy
from typing import Any

import pytest
from kohya_schema import check_dataset_config, check_training_toml, flatten_training_toml, training_args

from castlab.config import PROJECT_ROOT, load_config
from castlab.dataset.kohya import fill_template, tomllib

TEMPLATES = PROJECT_ROOT / "configs" / "training"
CASTLAB_VALUES = {  # what `castlab dataset` puts in (typed as sd-scripts needs them)
    "base_model": "/models/base",
    "dataset_config": "/data/zorvik/dataset_config.toml",
    "output_dir": "/data/zorvik/checkpoints",
    "output_name": "castlab_zorvik",
}
TEMPLATE_RESOLUTION = {"sd15_lora.toml": "512", "sdxl_lora.toml": "1024"}


def filled(name: str, **values: Any) -> dict[str, Any]:
    template = tomllib.loads((TEMPLATES / name).read_text(encoding="utf-8"))
    return fill_template(template, load_config(profile="tiny"),
                         {**CASTLAB_VALUES, "resolution": TEMPLATE_RESOLUTION[name], **values})


def set_key(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of a sectioned training TOML with `key` set where it lives (or under [training_arguments])."""
    data = copy.deepcopy(data)
    section = next((s for s in data.values() if isinstance(s, dict) and key in s), data["training_arguments"])
    section[key] = value
    return data


def dataset_config(**subset: Any) -> dict[str, Any]:
    """A dataset_config.toml shaped like the one `castlab dataset` writes."""
    return {
        "general": {"caption_extension": ".txt", "shuffle_caption": False, "keep_tokens": 1, "flip_aug": False,
                    "color_aug": False},
        "datasets": [{
            "resolution": 512, "batch_size": 1, "enable_bucket": True, "min_bucket_reso": 64,
            "max_bucket_reso": 1024, "bucket_reso_steps": 64, "bucket_no_upscale": True,
            "subsets": [{"image_dir": "/data/zorvik/kohya/3_zorvik rabbit", "class_tokens": "zorvik rabbit",
                         "num_repeats": 3, "keep_tokens": 1, "alpha_mask": True, "caption_extension": ".txt",
                         **subset}],
        }],
    }


def any_mentions(problems: list[str], *words: str) -> bool:
    return any(all(w in p for w in words) for p in problems)


@pytest.fixture
def sd15() -> dict[str, Any]:
    return filled("sd15_lora.toml")


@pytest.fixture
def sdxl() -> dict[str, Any]:
    return filled("sdxl_lora.toml")


def test_templates_fill_every_placeholder(sd15, sdxl):
    for data in (sd15, sdxl):
        leftovers = [k for k, v in flatten_training_toml(data)[0].items() if isinstance(v, str) and "${" in v]
        assert leftovers == []


def test_sd15_template_is_valid_for_train_network(sd15):
    assert check_training_toml(sd15) == []
    flat = flatten_training_toml(sd15)[0]
    assert set(flat) <= set(training_args())
    assert flat["enable_bucket"] is True and flat["bucket_no_upscale"] is True
    assert flat["bucket_reso_steps"] == 64 and flat["min_bucket_reso"] <= 64 <= flat["max_bucket_reso"]


def test_sdxl_template_is_valid_for_sdxl_train_network(sdxl):
    assert check_training_toml(sdxl, sdxl=True) == []
    flat = flatten_training_toml(sdxl)[0]
    assert flat["resolution"] == "1024" and flat["bucket_reso_steps"] == 32
    assert flat["cache_text_encoder_outputs"] is True and flat["network_train_unet_only"] is True
    assert flat["mixed_precision"] in ("fp16", "bf16")
    assert "clip_skip" not in flat and not flat.get("v2", False)
    # train_network.py has no text-encoder cache, and SD1.x buckets step by 64
    problems = check_training_toml(sdxl)
    assert any_mentions(problems, "cache_text_encoder_outputs", "sdxl_train_network.py only")
    assert any_mentions(problems, "bucket_reso_steps=32", "divisible by 64")


def test_tiny_profile_needs_upscaling_buckets(sd15):
    """At the tiny profile's 64 px, bucket_no_upscale + 64-px steps crash BucketManager on non-square images."""
    assert check_training_toml(set_key(sd15, "min_bucket_reso", 256)) == []
    tiny = filled("sd15_lora.toml", resolution="64")
    assert any_mentions(check_training_toml(tiny), "bucket_no_upscale", "zero-size bucket")
    tiny = set_key(tiny, "bucket_no_upscale", False)
    assert check_training_toml(tiny) == []  # min_bucket_reso 64 <= 64: the template fits the tiny profile
    assert any_mentions(check_training_toml(set_key(tiny, "min_bucket_reso", 256)), "min_bucket_reso=256", "above")
    data = dataset_config()
    data["datasets"][0]["resolution"] = 64
    assert any_mentions(check_dataset_config(data), "datasets[0]: bucket_no_upscale", "zero-size bucket")


def test_int_resolution_is_caught(sd15):
    problems = check_training_toml(filled("sd15_lora.toml", resolution=512))
    assert any_mentions(problems, "resolution=512", "must be a string")
    assert any_mentions(check_training_toml(set_key(sd15, "resolution", "512x512")), "resolution=", '"W,H"')
    assert check_training_toml(set_key(sd15, "resolution", "768,512")) == []


def test_unknown_and_misplaced_keys_are_caught(sd15):
    assert any_mentions(check_training_toml(set_key(sd15, "network_rank", 16)), "network_rank", "not an option")
    assert any_mentions(check_training_toml(set_key(sd15, "num_repeats", 3)), "num_repeats", "not an option")
    twice = copy.deepcopy(sd15)
    twice["optimizer_arguments"]["seed"] = 1
    assert any_mentions(check_training_toml(twice), "seed", "keeps the last one")


@pytest.mark.parametrize(("key", "value", "words"), [
    ("flip_aug", "false", ("flip_aug='false'", "boolean")),
    ("gradient_checkpointing", 1, ("gradient_checkpointing=1", "boolean")),
    ("network_dim", 16.0, ("network_dim=16.0", "an int")),
    ("seed", "1234", ("seed='1234'", "an int")),
    ("learning_rate", "1e-4", ("learning_rate='1e-4'", "a number")),
    ("network_args", "conv_dim=4", ("network_args=", "a list of strings")),
    ("mixed_precision", "fp32", ("mixed_precision='fp32'", "one of")),
    ("save_model_as", "diffusers", ("save_model_as='diffusers'", "one of")),
    ("lr_warmup_steps", 100.0, ("lr_warmup_steps=100.0", "below 1")),
    ("validation_split", 0, ("validation_split=0", "float")),
    ("max_token_length", 77, ("max_token_length=77", "one of")),
])
def test_training_type_mistakes_are_caught(sd15, key, value, words):
    assert any_mentions(check_training_toml(set_key(sd15, key, value)), *words)


def test_training_values_argparse_accepts_pass(sd15):
    ok = {"network_alpha": 8, "learning_rate": 1, "lr_warmup_steps": 0.1, "text_encoder_lr": 5e-5,
          "network_args": ["conv_dim=4"], "validation_split": 0.1, "max_token_length": 225, "clip_skip": 1}
    for key, value in ok.items():
        assert check_training_toml(set_key(sd15, key, value)) == [], key


def test_training_cross_key_rules(sd15, sdxl):
    assert check_training_toml(set_key(sd15, "full_fp16", True)) == []  # the template trains in fp16
    assert any_mentions(check_training_toml(set_key(sd15, "full_bf16", True)), "full_bf16", "bf16")
    cached = set_key(set_key(sd15, "cache_latents", True), "color_aug", True)
    assert any_mentions(check_training_toml(cached), "cache_latents", "color_aug")
    assert any_mentions(check_training_toml(set_key(sdxl, "network_train_unet_only", False), sdxl=True),
                        "network_train_unet_only")
    assert any_mentions(check_training_toml(set_key(sdxl, "shuffle_caption", True), sdxl=True), "shuffle_caption")
    assert any_mentions(check_training_toml(set_key(sdxl, "clip_skip", 2), sdxl=True), "clip_skip")
    assert any_mentions(check_training_toml(set_key(sdxl, "bucket_reso_steps", 48), sdxl=True), "divisible by 32")
    assert check_training_toml(set_key(sdxl, "bucket_reso_steps", 64), sdxl=True) == []


def test_castlab_dataset_config_is_valid():
    assert check_dataset_config(dataset_config()) == []
    assert check_dataset_config(dataset_config(), sdxl=True) == []
    two_dim = dataset_config()
    two_dim["datasets"][0]["resolution"] = [768, 512]
    assert check_dataset_config(two_dim) == []


@pytest.mark.parametrize(("subset", "words"), [
    ({"num_repeats": "3"}, ("num_repeats='3'", "an int")),
    ({"num_repeats": 3.0}, ("num_repeats=3.0", "an int")),
    ({"alpha_mask": "true"}, ("alpha_mask='true'", "a boolean")),
    ({"class_tokens": ["zorvik", "rabbit"]}, ("class_tokens=", "a string")),
    ({"repeats": 3}, ("repeats", "not allowed")),
    ({"resolution": 512}, ("subsets[0].resolution", "[[datasets]]")),
    ({"num_repeats": 0}, ("num_repeats=0", "skips the subset")),
])
def test_dataset_subset_mistakes_are_caught(subset, words):
    assert any_mentions(check_dataset_config(dataset_config(**subset)), *words)


def test_dataset_structure_mistakes_are_caught():
    no_dir = dataset_config()
    del no_dir["datasets"][0]["subsets"][0]["image_dir"]
    assert any_mentions(check_dataset_config(no_dir), "image_dir is required")
    misplaced = dataset_config()
    misplaced["general"]["alpha_mask"] = True
    assert any_mentions(check_dataset_config(misplaced), "general.alpha_mask", "only in [[datasets.subsets]]")
    prior = dataset_config()
    prior["general"]["prior_loss_weight"] = 1.0
    assert any_mentions(check_dataset_config(prior), "prior_loss_weight", "training-TOML")
    as_table = dataset_config()
    as_table["datasets"] = as_table["datasets"][0]
    assert any_mentions(check_dataset_config(as_table), "array of tables")
    assert any_mentions(check_dataset_config({**dataset_config(), "dataset": []}), "unknown top-level key")


def test_dataset_value_mistakes_are_caught():
    data = dataset_config()
    dataset = data["datasets"][0]
    dataset.update(resolution="512", network_multiplier=1, validation_split=0)
    problems = check_dataset_config(data)
    assert any_mentions(problems, "resolution='512'", "[width, height]")
    assert any_mentions(problems, "network_multiplier=1", "float")
    assert any_mentions(problems, "validation_split=0", "float")
    buckets = dataset_config()
    buckets["datasets"][0].update(min_bucket_reso=768, bucket_reso_steps=32)
    problems = check_dataset_config(buckets)
    assert any_mentions(problems, "min_bucket_reso=768", "above the resolution")
    assert any_mentions(problems, "bucket_reso_steps=32", "divisible by 64")
    assert not any_mentions(check_dataset_config(buckets, sdxl=True), "divisible")


def test_top_level_keys_count_too(sd15):
    """read_config_from_file merges top-level keys and every table: a key outside a section counts too."""
    data = {**sd15, "max_train_steps": "many"}
    assert any_mentions(check_training_toml(data), "max_train_steps='many'", "an int")
