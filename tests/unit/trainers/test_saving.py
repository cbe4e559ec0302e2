import datetime
import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from trainers.saving import (
    bucket_info,
    checkpoint_name,
    existing_checkpoints,
    file_hashes,
    model_hashes,
    modelspec_metadata,
    prune_checkpoints,
    state_dir_name,
    tag_frequency,
    training_metadata,
)

# The ss_* keys sd-scripts' train_network.py writes (kohya-ss/sd-scripts 48d368fa, the `metadata = {` block);
# ss_masked_loss is not among them in that version.
COMMON_KEYS = [
    "ss_session_id", "ss_training_started_at", "ss_output_name", "ss_learning_rate", "ss_text_encoder_lr",
    "ss_unet_lr", "ss_num_train_images", "ss_num_validation_images", "ss_num_reg_images", "ss_num_batches_per_epoch",
    "ss_num_epochs", "ss_gradient_checkpointing", "ss_gradient_accumulation_steps", "ss_max_train_steps",
    "ss_lr_warmup_steps", "ss_lr_scheduler", "ss_network_module", "ss_network_dim", "ss_network_alpha",
    "ss_network_dropout", "ss_mixed_precision", "ss_full_fp16", "ss_v2", "ss_base_model_version", "ss_clip_skip",
    "ss_max_token_length", "ss_cache_latents", "ss_seed", "ss_lowram", "ss_noise_offset",
    "ss_multires_noise_iterations", "ss_multires_noise_discount", "ss_adaptive_noise_scale", "ss_zero_terminal_snr",
    "ss_training_comment", "ss_sd_scripts_commit_hash", "ss_optimizer", "ss_max_grad_norm", "ss_caption_dropout_rate",
    "ss_caption_dropout_every_n_epochs", "ss_caption_tag_dropout_rate", "ss_face_crop_aug_range",
    "ss_prior_loss_weight", "ss_min_snr_gamma", "ss_scale_weight_norms", "ss_ip_noise_gamma",
    "ss_debiased_estimation", "ss_noise_offset_random_strength", "ss_ip_noise_gamma_random_strength", "ss_loss_type",
    "ss_huber_schedule", "ss_huber_scale", "ss_huber_c", "ss_fp8_base", "ss_fp8_base_unet", "ss_validation_seed",
    "ss_validation_split", "ss_max_validation_steps", "ss_validate_every_n_epochs", "ss_validate_every_n_steps",
    "ss_resize_interpolation",
]
# ... its `if use_user_config:` branch (a dataset_config is given), ...
CONFIG_KEYS = ["ss_datasets", "ss_tag_frequency", "ss_dataset_dirs"]
# ... its other branch (train_data_dir / reg_data_dir), ...
NO_CONFIG_KEYS = [
    "ss_batch_size_per_device", "ss_total_batch_size", "ss_resolution", "ss_color_aug", "ss_flip_aug",
    "ss_random_crop", "ss_shuffle_caption", "ss_enable_bucket", "ss_bucket_no_upscale", "ss_min_bucket_reso",
    "ss_max_bucket_reso", "ss_keep_tokens", "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency",
    "ss_bucket_info",
]
# ... the conditional ones, and what save_model() sets at each save.
NETWORK_ARGS_KEYS = ["ss_network_args"]
MODEL_KEYS = ["ss_sd_model_name", "ss_sd_model_hash", "ss_new_sd_model_hash"]
SAVE_KEYS = ["ss_training_finished_at", "ss_steps", "ss_epoch"]
JSON_KEYS = {"ss_datasets", "ss_tag_frequency", "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_bucket_info",
             "ss_network_args"}
# sai_model_spec.build_metadata for a LoRA (library/sai_model_spec.py)
MODELSPEC_KEYS = ["modelspec.architecture", "modelspec.implementation", "modelspec.title", "modelspec.resolution",
                  "modelspec.sai_model_spec", "modelspec.date", "modelspec.prediction_type",
                  "modelspec.implementation_version"]

STARTED, SAVED = 1718000000.5, 1718003600.25


def args(**extra) -> dict:
    return {"output_name": "mira", "learning_rate": 1e-4, "unet_lr": 1e-4, "text_encoder_lr": 5e-5,
            "network_module": "networks.lora", "network_dim": 8, "network_alpha": 4.0, "seed": 42,
            "train_batch_size": 2, "resolution": (512, 768), "max_train_steps": 100, "lr_scheduler": "cosine",
            "lr_warmup_steps": 0.1, "mixed_precision": "bf16", "gradient_accumulation_steps": 2,
            "pretrained_model_name_or_path": "/models/base.safetensors", "dataset_config": "/data/dataset.toml",
            "network_args": ["conv_dim=4", "conv_alpha=1"], **extra}


def summary() -> dict:
    subset = {"img_count": 3, "num_repeats": 4, "is_reg": False, "class_tokens": "mira woman",
              "captions": ["Mira woman, red hair, smile", "mira woman, Red Hair ,", "mira woman"]}
    return {"datasets": [
        {"batch_size": 2, "resolution": (512, 768), "enable_bucket": True, "min_bucket_reso": 256,
         "max_bucket_reso": 1024, "bucket_info": {"buckets": {0: {"resolution": (512, 768), "count": 12}},
                                                  "mean_img_ar_error": 0.0},
         "subsets": [{**subset, "image_dir": "/data/shots/mira"},
                     {**subset, "image_dir": "/other/mira", "img_count": 1, "num_repeats": 1,
                      "captions": ["mira woman, hat"]},
                     {"image_dir": "/data/reg", "img_count": 5, "num_repeats": 1, "is_reg": True,
                      "class_tokens": "woman", "captions": ["woman"] * 5}]},
        {"batch_size": 1, "resolution": (512, 512), "subsets": [
            {"image_dir": "/data/shots/mira", "img_count": 2, "num_repeats": 2, "captions": ["x", "y"]}]},
    ]}


def metadata(flat: dict, data: dict | None = None, **kw) -> dict[str, str]:
    values = dict(sdxl=False, optimizer="torch.optim.adamw.AdamW", max_train_steps=100, num_batches_per_epoch=13,
                  epoch=2, step=40, session_id=1234, training_started_at=STARTED, saved_at=SAVED)
    values.update(kw)
    return training_metadata(flat, summary() if data is None else data, **values)


# ---------------------------------------------------------------- names

@pytest.mark.parametrize(("kwargs", "name", "state"), [
    # sd-scripts EPOCH_FILE_NAME "{}-{:06d}", STEP_FILE_NAME "{}-step{:08d}", last: output_name; states add "-state"
    ({"epoch": 3}, "mira-000003.safetensors", "mira-000003-state"),
    ({"step": 100}, "mira-step00000100.safetensors", "mira-step00000100-state"),
    ({}, "mira.safetensors", "mira-state"),
])
def test_checkpoint_and_state_names(kwargs, name, state):
    assert checkpoint_name("mira", **kwargs) == name
    assert state_dir_name("mira", **kwargs) == state


def test_name_errors_and_extension():
    assert checkpoint_name("mira", epoch=1, ext="ckpt") == "mira-000001.ckpt"
    with pytest.raises(ValueError, match="not both"):
        checkpoint_name("mira", epoch=1, step=2)
    with pytest.raises(ValueError, match="step"):
        checkpoint_name("mira", step=-1)
    with pytest.raises(ValueError, match="output_name"):
        checkpoint_name("")


def test_existing_checkpoints(tmp_path):
    for name in ("mira.safetensors", "mira-000002.safetensors", "mira-step00000100.safetensors", "mira-2.safetensors",
                 "mira-000002.ckpt", "miranda.safetensors", "other-000001.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "mira-000003-state").mkdir()
    assert [p.name for p in existing_checkpoints(tmp_path, "mira")] == [
        "mira-000002.safetensors", "mira-step00000100.safetensors", "mira.safetensors"]
    assert existing_checkpoints(tmp_path / "absent", "mira") == []


# ---------------------------------------------------------------- pruning

def _run(tmp_path, every: int, last_n: int, total: int, per_step: bool, state_n: int | None = None):
    """Save (a file and a state folder) every `every` epochs/steps up to `total`, pruning after each save."""
    removed = []
    for i in range(every, total + 1, every):
        key = "step" if per_step else "epoch"
        (tmp_path / checkpoint_name("c", **{key: i})).write_bytes(b"x")
        (tmp_path / state_dir_name("c", **{key: i})).mkdir()
        if per_step:
            removed += prune_checkpoints(tmp_path, "c", step=i, save_every_n_steps=every, save_last_n_steps=last_n,
                                         save_last_n_steps_state=state_n, save_state=True)
        else:
            removed += prune_checkpoints(tmp_path, "c", epoch=i, save_every_n_epochs=every, save_last_n_epochs=last_n,
                                         save_last_n_epochs_state=state_n, save_state=True)
    return sorted(p.name for p in tmp_path.iterdir()), removed


# What survives, from replaying sd-scripts' train_network.py save/remove sequence (get_remove_step_no,
# get_remove_epoch_no, save_and_remove_state_stepwise / _on_epoch_end) with the same settings:
PRUNE_CASES = [
    # save_every_n_steps=10, save_last_n_steps=30, save_last_n_steps_state=10, steps 10..50
    (10, 30, 50, True, 10, ["c-step00000020.safetensors", "c-step00000030.safetensors", "c-step00000040-state",
                            "c-step00000040.safetensors", "c-step00000050-state", "c-step00000050.safetensors"]),
    # save_every_n_steps=5, save_last_n_steps=12: at step 40, r = 40 - 12 - 1 = 27 → 25 goes
    (5, 12, 40, True, None, ["c-step00000030-state", "c-step00000030.safetensors", "c-step00000035-state",
                             "c-step00000035.safetensors", "c-step00000040-state", "c-step00000040.safetensors"]),
    # save_every_n_epochs=1, save_last_n_epochs=3, save_last_n_epochs_state=1, epochs 1..5
    (1, 3, 5, False, 1, ["c-000003.safetensors", "c-000004.safetensors", "c-000005-state", "c-000005.safetensors"]),
    # save_every_n_epochs=2, save_last_n_epochs=2, epochs 2, 4, 6, 8
    (2, 2, 9, False, None, ["c-000006-state", "c-000006.safetensors", "c-000008-state", "c-000008.safetensors"]),
]


@pytest.mark.parametrize(("every", "last_n", "total", "per_step", "state_n", "kept"), PRUNE_CASES)
def test_prune_keeps_what_sd_scripts_keeps(tmp_path, every, last_n, total, per_step, state_n, kept):
    left, removed = _run(tmp_path, every, last_n, total, per_step, state_n)
    assert left == kept
    assert all(not p.exists() and p.parent == tmp_path for p in removed)
    assert len(removed) == 2 * len(range(every, total + 1, every)) - len(kept)


def test_prune_leaves_states_alone_without_save_state_and_needs_spacing(tmp_path):
    for i in (1, 2, 3):
        (tmp_path / checkpoint_name("c", epoch=i)).write_bytes(b"x")
        (tmp_path / state_dir_name("c", epoch=i)).mkdir()
    removed = prune_checkpoints(tmp_path, "c", epoch=3, save_every_n_epochs=1, save_last_n_epochs=2)
    assert removed == [tmp_path / "c-000001.safetensors"]
    assert (tmp_path / "c-000001-state").is_dir()
    assert prune_checkpoints(tmp_path, "c", epoch=3, save_every_n_epochs=1) == []  # no save_last_n_epochs
    # the settings can come from the flattened training TOML; keywords win over it
    flat = {"save_every_n_epochs": 1, "save_last_n_epochs": 1, "save_state": True}
    assert prune_checkpoints(tmp_path, "c", flat, epoch=3, save_last_n_epochs=2) == [tmp_path / "c-000001-state"]
    assert prune_checkpoints(tmp_path, "c", flat, epoch=3) == [tmp_path / "c-000002.safetensors",
                                                               tmp_path / "c-000002-state"]
    with pytest.raises(ValueError, match="save_every_n_steps"):
        prune_checkpoints(tmp_path, "c", step=30, save_last_n_steps=10)
    with pytest.raises(ValueError, match="exactly one"):
        prune_checkpoints(tmp_path, "c", epoch=1, step=1)


# ---------------------------------------------------------------- dataset parts

def test_tag_frequency_as_sd_scripts_counts():
    # BaseDataset.set_tag_frequency: split at ",", strip, lower-case, skip empty; keyed by the folder's base name
    assert tag_frequency({"/a/mira": ["Mira, red hair, , smile", "mira,Red Hair"], "/b/mira": ["hat"],
                          "/c/x": []}) == {"mira": {"mira": 2, "red hair": 2, "smile": 1, "hat": 1}, "x": {}}


def test_bucket_info_indexes_all_buckets():
    info = bucket_info({(512, 768): 6, (384, 896): 0, (512, 512): 3, (768, 512): 0}, [0.1, -0.3])
    # sorted buckets: (384, 896) 0, (512, 512) 1, (512, 768) 2, (768, 512) 3; empty ones are skipped
    assert info == {"buckets": {1: {"resolution": (512, 512), "count": 3}, 2: {"resolution": (512, 768), "count": 6}},
                    "mean_img_ar_error": pytest.approx(0.2)}
    assert bucket_info({(512, 512): 0}, [])["mean_img_ar_error"] == 0


# ---------------------------------------------------------------- metadata

def test_metadata_has_sd_scripts_keys_all_strings():
    meta = metadata(args(), base_model_hashes=("abcd1234", "f" * 64))
    expected = COMMON_KEYS + CONFIG_KEYS + NETWORK_ARGS_KEYS + MODEL_KEYS + SAVE_KEYS + MODELSPEC_KEYS
    assert sorted(meta) == sorted(expected)
    assert all(isinstance(v, str) for v in meta.values())
    for key in JSON_KEYS & set(meta):
        json.loads(meta[key])


def test_metadata_values():
    meta = metadata(args())
    assert meta["ss_session_id"] == "1234" and meta["ss_training_started_at"] == str(STARTED)
    assert meta["ss_learning_rate"] == "0.0001" and meta["ss_text_encoder_lr"] == "5e-05"
    assert meta["ss_sd_scripts_commit_hash"] == "castlab"
    assert meta["ss_lr_warmup_steps"] == "0.1" and meta["ss_lr_scheduler"] == "cosine"
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "4.0" and meta["ss_network_dropout"] == "None"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["ss_cache_latents"] == "False" and meta["ss_mixed_precision"] == "bf16"
    assert meta["ss_max_grad_norm"] == "1.0" and meta["ss_loss_type"] == "l2"  # sd-scripts' defaults
    # train images with repeats: 3*4 + 1*1 (dataset 1) + 2*2 (dataset 2); reg 5*1
    assert meta["ss_num_train_images"] == "17" and meta["ss_num_reg_images"] == "5"
    # num_train_epochs = ceil(max_train_steps / ceil(13 batches / 2 accumulation)) = ceil(100 / 7)
    assert meta["ss_num_epochs"] == "15" and meta["ss_num_batches_per_epoch"] == "13"
    assert meta["ss_epoch"] == "2" and meta["ss_steps"] == "40" and meta["ss_training_finished_at"] == str(SAVED)
    assert meta["ss_sd_model_name"] == "/models/base.safetensors" and "ss_sd_model_hash" not in meta
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1", "dropout": None}
    assert "ss_masked_loss" not in meta


def test_metadata_datasets_json():
    meta = metadata(args())
    assert json.loads(meta["ss_dataset_dirs"]) == {  # non-reg subsets; a repeated folder name gets " (2)"
        "mira": {"n_repeats": 4, "img_count": 3}, "mira (2)": {"n_repeats": 1, "img_count": 1},
        "mira (3)": {"n_repeats": 2, "img_count": 2}}
    # the first dataset's counts per folder win; inside a dataset, folders sharing a base name add up
    assert json.loads(meta["ss_tag_frequency"]) == {
        "mira": {"mira woman": 4, "red hair": 2, "smile": 1, "hat": 1}, "reg": {"woman": 5}}
    first, second = json.loads(meta["ss_datasets"])
    assert {k: v for k, v in first.items() if k not in ("subsets", "tag_frequency")} == {
        "is_dreambooth": True, "batch_size_per_device": 2, "num_train_images": 13, "num_reg_images": 5,
        "resolution": [512, 768], "enable_bucket": True, "min_bucket_reso": 256, "max_bucket_reso": 1024,
        "bucket_info": {"buckets": {"0": {"resolution": [512, 768], "count": 12}}, "mean_img_ar_error": 0.0},
        "resize_interpolation": None}
    assert first["subsets"][2] == {
        "img_count": 5, "num_repeats": 1, "color_aug": False, "flip_aug": False, "random_crop": False,
        "shuffle_caption": False, "keep_tokens": 0, "keep_tokens_separator": "", "secondary_separator": None,
        "enable_wildcard": False, "caption_prefix": None, "caption_suffix": None, "resize_interpolation": None,
        "image_dir": "reg", "class_tokens": "woman", "is_reg": True}
    # without bucketing sd-scripts has no bucket reso limits and no bucket_info
    assert (second["enable_bucket"], second["min_bucket_reso"], second["bucket_info"]) == (False, None, None)


def test_metadata_without_dataset_config():
    flat = args(dataset_config=None, network_args=None)
    data = summary()
    data["datasets"] = data["datasets"][:1]
    meta = metadata(flat, data, base_model_hashes=("NOFILE", "NOFILE"))
    assert sorted(meta) == sorted(COMMON_KEYS + NO_CONFIG_KEYS + MODEL_KEYS + SAVE_KEYS + MODELSPEC_KEYS)
    assert meta["ss_resolution"] == "(512, 768)" and meta["ss_total_batch_size"] == "4"
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"reg": {"n_repeats": 1, "img_count": 5}}
    assert json.loads(meta["ss_dataset_dirs"]) == {"mira": {"n_repeats": 1, "img_count": 1}}  # later one overwrites
    assert json.loads(meta["ss_bucket_info"])["buckets"]["0"]["count"] == 12
    assert meta["ss_sd_model_name"] == "base.safetensors" and meta["ss_new_sd_model_hash"] == "NOFILE"
    with pytest.raises(ValueError, match="exactly one dataset"):
        metadata(flat)


def test_metadata_adafactor_relative_step_and_no_metadata():
    meta = metadata(args(optimizer_type="Adafactor", learning_rate=0.001))
    # sd-scripts' get_optimizer clears learning_rate / unet_lr and rewrites lr_scheduler for relative_step
    assert (meta["ss_learning_rate"], meta["ss_unet_lr"], meta["ss_lr_scheduler"]) == ("None", "None",
                                                                                       "adafactor:0.001")
    assert meta["ss_text_encoder_lr"] == "5e-05"
    minimal = metadata(args(no_metadata=True))
    assert sorted(k for k in minimal if k.startswith("ss_")) == sorted(
        ["ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
         "ss_network_args"])


def test_modelspec():
    sd1 = modelspec_metadata(args(clip_skip=2, min_timestep=100, metadata_trigger_phrase="mira woman",
                                  metadata_author="me"), sdxl=False, saved_at=SAVED)
    assert sd1 == {
        "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.implementation": "diffusers",
        "modelspec.title": "mira", "modelspec.resolution": "512x768", "modelspec.sai_model_spec": "1.0.1",
        "modelspec.author": "me", "modelspec.date": datetime.datetime.fromtimestamp(int(SAVED)).isoformat(),
        "modelspec.prediction_type": "epsilon", "modelspec.timestep_range": "100,1000",
        "modelspec.encoder_layer": "2", "modelspec.trigger_phrase": "mira woman",
        "modelspec.implementation_version": "castlab"}
    xl = modelspec_metadata({"output_name": "m", "metadata_title": "Mira XL"}, sdxl=True, saved_at=SAVED)
    assert xl["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert xl["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert (xl["modelspec.resolution"], xl["modelspec.title"]) == ("1024x1024", "Mira XL")
    assert metadata(args(), sdxl=True)["ss_base_model_version"] == "sdxl_base_v1-0"


# ---------------------------------------------------------------- hashes

def fixed_tensors() -> dict[str, torch.Tensor]:
    """Over 1 MiB once serialized, so the legacy hash reads real tensor bytes."""
    return {"lora_unet_a.lora_down.weight": torch.arange(300_000, dtype=torch.float32).reshape(600, 500) / 1000,
            "lora_unet_a.lora_up.weight": torch.linspace(-1, 1, 64, dtype=torch.float32).reshape(8, 8).half(),
            "lora_unet_a.alpha": torch.tensor(4.0)}


FIXED_META = {"ss_output_name": "mychar", "ss_network_dim": "8", "ss_epoch": "3", "modelspec.title": "ignored",
              "sshs_model_hash": "x"}


def test_model_hashes_match_sd_scripts():
    # computed once with sd-scripts' train_util.precalculate_safetensors_hashes (48d368fa) on these tensors/metadata
    assert model_hashes(fixed_tensors(), FIXED_META) == (
        "a626764ae3c453ff1189a841f6df52d2b80f70e6c5bdc370b6502ff0c33b138c", "d28caf30")
    # a file under 1 MiB: the legacy hash is that of no bytes (sha256("")[:8])
    assert model_hashes({"w": torch.ones(3, 2)}, {}) == (
        "f46913286d895f62d646314f400fc3d7a543cf34eb4ae56df87f43dc4582a36b", "e3b0c442")


def test_model_hashes_by_hand(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file(fixed_tensors(), str(path), {k: v for k, v in FIXED_META.items() if k.startswith("ss_")})
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert model_hashes(fixed_tensors(), FIXED_META) == (
        hashlib.sha256(data[8 + header:]).hexdigest(), hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8])
    # only ss_* metadata counts; it moves the 1 MiB window (legacy hash) but not the tensor bytes (model hash)
    other = model_hashes(fixed_tensors(), {**FIXED_META, "ss_extra": "y" * 40})
    assert model_hashes(fixed_tensors(), {**FIXED_META, "modelspec.x": "1"}) == model_hashes(fixed_tensors(),
                                                                                             FIXED_META)
    assert other[0] == model_hashes(fixed_tensors(), FIXED_META)[0] and other[1] != "d28caf30"


def test_file_hashes(tmp_path):
    path = tmp_path / "base.bin"
    data = bytes(range(256)) * 5000  # 1.28 MB
    path.write_bytes(data)
    assert file_hashes(path) == (hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8],
                                 hashlib.sha256(data).hexdigest())
    assert file_hashes(tmp_path) == ("IsADirectory", "IsADirectory")
    assert file_hashes(tmp_path / "missing") == ("NOFILE", "NOFILE")
