"""What kohya sd-scripts accepts in castlab's training pair, as plain tables (sd-scripts itself is not needed).

Mirrored from kohya-ss/sd-scripts ``main`` @ 48d368fa (2026-02-16).

``training.toml`` (``--config_file``): ``train_util.read_config_from_file`` merges every section into one flat dict
and hands it to ``parser.parse_args(namespace=...)``. The values land on the Namespace *as written*: argparse's
``type=``/``choices=`` never run on them and unknown keys are kept silently. So every key must be a dest of the
``train_network.py`` (or ``sdxl_train_network.py``) parser and hold the value argparse would have produced:
``type=int`` → int, ``type=float`` → float (an int works: Python promotes it), store_true → bool (the string
"false" would be truthy), ``nargs="*"`` → a list, ``choices`` → one of them, and ``resolution`` /
``face_crop_aug_range`` stay the strings ``prepare_dataset_args`` splits ("512", "768,512").

``dataset_config.toml`` (``--dataset_config``): ``config_util.ConfigSanitizer(True, True, masked_loss, True)``
(voluptuous, as ``train_network.NetworkTrainer.train`` builds it): unknown keys are errors, ``float`` keys reject
ints, ``resolution`` is an int or ``[w, h]``. One deliberate difference: a bool is not accepted for an int (voluptuous'
isinstance check lets ``True`` pass as 1).

Public API: :func:`check_training_toml` and :func:`check_dataset_config` return a list of problems (empty = OK).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# --- training.toml: argparse dests ---------------------------------------------------------------------------------
# Kinds: str, int, float, bool, path (argparse type=Path: a str in TOML), int_or_float (train_util.int_or_float: an int
# is a step count, a float below 1 a ratio of the total steps), list[str] / list[float] (nargs="*"),
# float|list[float] (text_encoder_lr: train_network also takes a scalar).
TRAIN_NETWORK_ARGS: dict[str, str] = {
    # library/utils.py add_logging_arguments
    "console_log_level": "str",
    "console_log_file": "str",
    "console_log_simple": "bool",
    # library/train_util.py add_sd_models_arguments
    "v2": "bool",
    "v_parameterization": "bool",
    "pretrained_model_name_or_path": "str",
    "tokenizer_cache_dir": "str",
    # library/sai_model_spec.py add_model_spec_arguments
    "metadata_title": "str",
    "metadata_author": "str",
    "metadata_description": "str",
    "metadata_license": "str",
    "metadata_tags": "str",
    "metadata_usage_hint": "str",
    "metadata_thumbnail": "str",
    "metadata_merged_from": "str",
    "metadata_trigger_phrase": "str",
    "metadata_preprocessor": "str",
    "metadata_is_negative_embedding": "str",
    # library/train_util.py add_dataset_arguments(parser, True, True, True)
    "train_data_dir": "str",
    "cache_info": "bool",
    "shuffle_caption": "bool",
    "caption_separator": "str",
    "caption_extension": "str",
    "caption_extention": "str",
    "keep_tokens": "int",
    "keep_tokens_separator": "str",
    "secondary_separator": "str",
    "enable_wildcard": "bool",
    "caption_prefix": "str",
    "caption_suffix": "str",
    "color_aug": "bool",
    "flip_aug": "bool",
    "face_crop_aug_range": "str",
    "random_crop": "bool",
    "debug_dataset": "bool",
    "resolution": "str",
    "cache_latents": "bool",
    "vae_batch_size": "int",
    "cache_latents_to_disk": "bool",
    "skip_cache_check": "bool",
    "enable_bucket": "bool",
    "min_bucket_reso": "int",
    "max_bucket_reso": "int",
    "bucket_reso_steps": "int",
    "bucket_no_upscale": "bool",
    "resize_interpolation": "str",
    "token_warmup_min": "int",
    "token_warmup_step": "float",
    "alpha_mask": "bool",
    "dataset_class": "str",
    "caption_dropout_rate": "float",
    "caption_dropout_every_n_epochs": "int",
    "caption_tag_dropout_rate": "float",
    "reg_data_dir": "str",
    "in_json": "str",
    "dataset_repeats": "int",
    # library/train_util.py add_training_arguments(parser, True)
    "output_dir": "str",
    "output_name": "str",
    "huggingface_repo_id": "str",
    "huggingface_repo_type": "str",
    "huggingface_path_in_repo": "str",
    "huggingface_token": "str",
    "huggingface_repo_visibility": "str",
    "save_state_to_huggingface": "bool",
    "resume_from_huggingface": "bool",
    "async_upload": "bool",
    "save_precision": "str",
    "save_every_n_epochs": "int",
    "save_every_n_steps": "int",
    "save_n_epoch_ratio": "int",
    "save_last_n_epochs": "int",
    "save_last_n_epochs_state": "int",
    "save_last_n_steps": "int",
    "save_last_n_steps_state": "int",
    "save_state": "bool",
    "save_state_on_train_end": "bool",
    "resume": "str",
    "train_batch_size": "int",
    "max_token_length": "int",
    "mem_eff_attn": "bool",
    "torch_compile": "bool",
    "dynamo_backend": "str",
    "xformers": "bool",
    "sdpa": "bool",
    "vae": "str",
    "max_train_steps": "int",
    "max_train_epochs": "int",
    "max_data_loader_n_workers": "int",
    "persistent_data_loader_workers": "bool",
    "seed": "int",
    "gradient_checkpointing": "bool",
    "gradient_accumulation_steps": "int",
    "mixed_precision": "str",
    "full_fp16": "bool",
    "full_bf16": "bool",
    "fp8_base": "bool",
    "ddp_timeout": "int",
    "ddp_gradient_as_bucket_view": "bool",
    "ddp_static_graph": "bool",
    "clip_skip": "int",
    "logging_dir": "str",
    "log_with": "str",
    "log_prefix": "str",
    "log_tracker_name": "str",
    "wandb_run_name": "str",
    "log_tracker_config": "str",
    "wandb_api_key": "str",
    "log_config": "bool",
    "noise_offset": "float",
    "noise_offset_random_strength": "bool",
    "multires_noise_iterations": "int",
    "ip_noise_gamma": "float",
    "ip_noise_gamma_random_strength": "bool",
    "multires_noise_discount": "float",
    "adaptive_noise_scale": "float",
    "zero_terminal_snr": "bool",
    "min_timestep": "int",
    "max_timestep": "int",
    "loss_type": "str",
    "huber_schedule": "str",
    "huber_c": "float",
    "huber_scale": "float",
    "lowram": "bool",
    "highvram": "bool",
    "sample_every_n_steps": "int",
    "sample_at_first": "bool",
    "sample_every_n_epochs": "int",
    "sample_prompts": "str",
    "sample_sampler": "str",
    "config_file": "str",
    "output_config": "bool",
    "prior_loss_weight": "float",
    # library/train_util.py add_masked_loss_arguments
    "conditioning_data_dir": "str",
    "masked_loss": "bool",
    # library/deepspeed_utils.py add_deepspeed_arguments
    "deepspeed": "bool",
    "zero_stage": "int",
    "offload_optimizer_device": "str",
    "offload_optimizer_nvme_path": "str",
    "offload_param_device": "str",
    "offload_param_nvme_path": "str",
    "zero3_init_flag": "bool",
    "zero3_save_16bit_model": "bool",
    "fp16_master_weights_and_gradients": "bool",
    # library/train_util.py add_optimizer_arguments
    "optimizer_type": "str",
    "use_8bit_adam": "bool",
    "use_lion_optimizer": "bool",
    "learning_rate": "float",
    "max_grad_norm": "float",
    "optimizer_args": "list[str]",
    "lr_scheduler_type": "str",
    "lr_scheduler_args": "list[str]",
    "lr_scheduler": "str",
    "lr_warmup_steps": "int_or_float",
    "lr_decay_steps": "int_or_float",
    "lr_scheduler_num_cycles": "int",
    "lr_scheduler_power": "float",
    "fused_backward_pass": "bool",
    "lr_scheduler_timescale": "int",
    "lr_scheduler_min_lr_ratio": "float",
    # library/config_util.py add_config_arguments
    "dataset_config": "path",
    # library/custom_train_functions.py add_custom_train_arguments
    "min_snr_gamma": "float",
    "scale_v_pred_loss_like_noise_pred": "bool",
    "v_pred_like_loss": "float",
    "debiased_estimation_loss": "bool",
    "weighted_captions": "bool",
    # train_network.py setup_parser (its own arguments)
    "cpu_offload_checkpointing": "bool",
    "no_metadata": "bool",
    "save_model_as": "str",
    "unet_lr": "float",
    "text_encoder_lr": "float|list[float]",
    "fp8_base_unet": "bool",
    "network_weights": "str",
    "network_module": "str",
    "network_dim": "int",
    "network_alpha": "float",
    "network_dropout": "float",
    "network_args": "list[str]",
    "network_train_unet_only": "bool",
    "network_train_text_encoder_only": "bool",
    "training_comment": "str",
    "dim_from_weights": "bool",
    "scale_weight_norms": "float",
    "base_weights": "list[str]",
    "base_weights_multiplier": "list[float]",
    "no_half_vae": "bool",
    "skip_until_initial_step": "bool",
    "initial_epoch": "int",
    "initial_step": "int",
    "validation_seed": "int",
    "validation_split": "float",
    "validate_every_n_steps": "int",
    "validate_every_n_epochs": "int",
    "max_validation_steps": "int",
}

SDXL_ARGS: dict[str, str] = {
    # library/sdxl_train_util.py add_sdxl_training_arguments (sdxl_train_network.setup_parser adds it)
    "cache_text_encoder_outputs": "bool",
    "cache_text_encoder_outputs_to_disk": "bool",
    "disable_mmap_load_safetensors": "bool",
}

CHOICES: dict[str, tuple[Any, ...]] = {  # argparse choices (None, the unset default, left out: TOML has no null)
    "console_log_level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    "resize_interpolation": ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area"),
    "save_precision": ("float", "fp16", "bf16"),
    "max_token_length": (150, 225),
    "dynamo_backend": ("eager", "aot_eager", "inductor", "aot_ts_nvfuser", "nvprims_nvfuser", "cudagraphs", "ofi",
                       "fx2trt", "onnxrt", "tensort", "ipex", "tvm"),
    "mixed_precision": ("no", "fp16", "bf16"),
    "log_with": ("tensorboard", "wandb", "all"),
    "loss_type": ("l1", "l2", "huber", "smooth_l1"),
    "huber_schedule": ("constant", "exponential", "snr"),
    "sample_sampler": ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver",
                       "dpmsolver++", "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a"),
    "zero_stage": (0, 1, 2, 3),
    "offload_optimizer_device": ("cpu", "nvme"),
    "offload_param_device": ("cpu", "nvme"),
    "save_model_as": ("ckpt", "pt", "safetensors"),  # train_network's own list (not train_util's)
}

# ConfigSanitizer.sanitize_argparse_namespace re-checks these Namespace values with voluptuous' strict ``float``.
STRICT_FLOAT_ARGS = frozenset({"validation_split"})
# With cache_text_encoder_outputs, sdxl_train_network asserts these are off (is_text_encoder_output_cacheable).
SDXL_UNCACHEABLE_CAPTION_ARGS = ("shuffle_caption", "caption_dropout_rate", "token_warmup_step",
                                 "caption_tag_dropout_rate")

# --- dataset_config.toml: config_util.ConfigSanitizer -----------------------------------------------------------
# Validators: int, float (strict: no int), num (Any(float, int)), bool, str, dict, float2 (two floats), reso (an int
# or [int, int]).
SUBSET_ASCENDABLE = {
    "color_aug": "bool", "face_crop_aug_range": "float2", "flip_aug": "bool", "num_repeats": "int",
    "random_crop": "bool", "shuffle_caption": "bool", "keep_tokens": "int", "keep_tokens_separator": "str",
    "secondary_separator": "str", "caption_separator": "str", "enable_wildcard": "bool", "token_warmup_min": "int",
    "token_warmup_step": "num", "caption_prefix": "str", "caption_suffix": "str", "custom_attributes": "dict",
    "resize_interpolation": "str",
}
DO_SUBSET_ASCENDABLE = {"caption_dropout_every_n_epochs": "int", "caption_dropout_rate": "num",
                        "caption_tag_dropout_rate": "num"}
DB_SUBSET_ASCENDABLE = {"caption_extension": "str", "class_tokens": "str", "cache_info": "bool"}
DB_SUBSET_DISTINCT = {"image_dir": "str", "is_reg": "bool", "alpha_mask": "bool"}  # image_dir is Required
FT_SUBSET_DISTINCT = {"metadata_file": "str", "image_dir": "str", "alpha_mask": "bool"}  # metadata_file Required
CN_SUBSET_ASCENDABLE = {"caption_extension": "str", "cache_info": "bool"}
CN_SUBSET_DISTINCT = {"image_dir": "str", "conditioning_data_dir": "str"}  # both Required
DATASET_ASCENDABLE = {
    "batch_size": "int", "bucket_no_upscale": "bool", "bucket_reso_steps": "int", "enable_bucket": "bool",
    "max_bucket_reso": "int", "min_bucket_reso": "int", "validation_seed": "int", "validation_split": "float",
    "resolution": "reso", "network_multiplier": "float", "resize_interpolation": "str",
}
REQUIRED = {"db": ("image_dir",), "ft": ("metadata_file",), "cn": ("image_dir", "conditioning_data_dir")}

_RESOLUTION_TEXT = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)?$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_ARG_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "path": (lambda v: isinstance(v, str), "a path string"),
    "int": (_is_int, "an int"),
    "float": (_is_num, "a number"),
    "bool": (lambda v: isinstance(v, bool), "a boolean (true/false, not a string)"),
    "int_or_float": (lambda v: _is_int(v) or (isinstance(v, float) and v < 1),
                     "an int (steps) or a float below 1 (ratio of the total steps)"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "list[float]": (lambda v: isinstance(v, list) and all(_is_num(x) for x in v), "a list of numbers"),
    "float|list[float]": (lambda v: _is_num(v) or (isinstance(v, list) and all(_is_num(x) for x in v)),
                          "a number or a list of numbers"),
}

_CONFIG_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (_is_int, "an int"),
    "float": (lambda v: isinstance(v, float), "a float (voluptuous rejects an int: write 1.0)"),
    "num": (_is_num, "a number"),
    "bool": (lambda v: isinstance(v, bool), "a boolean"),
    "dict": (lambda v: isinstance(v, dict), "a table"),
    "float2": (lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v),
               "two floats [low, high]"),
    "reso": (lambda v: _is_int(v) or (isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v)),
             "an int or [width, height] ints"),
}


def training_args(sdxl: bool = False) -> dict[str, str]:
    """Every key a training TOML may hold (dest → kind) for train_network.py, or sdxl_train_network.py."""
    return {**TRAIN_NETWORK_ARGS, **SDXL_ARGS} if sdxl else dict(TRAIN_NETWORK_ARGS)


def flatten_training_toml(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``read_config_from_file``'s merge (top-level values and each table's keys; a later duplicate wins) and the
    keys it merges twice."""
    flat: dict[str, Any] = {}
    where: dict[str, str] = {}
    problems = []
    for name, value in data.items():
        items = value.items() if isinstance(value, dict) else [(name, value)]
        for key, v in items:
            place = f"[{name}]" if isinstance(value, dict) else "the top level"
            if key in where:
                problems.append(f"{key}: set in {where[key]} and {place}; sd-scripts keeps the last one silently")
            where[key] = place
            flat[key] = v
    return flat, problems


def _bucket_problems(res: Any, steps: Any, lo: Any, hi: Any, no_upscale: Any, step_unit: int, where: str
                     ) -> list[str]:
    """BaseDataset.adjust_min_max_bucket_reso_by_steps' asserts and the trainer's verify_bucket_reso_steps, on the
    values the file sets (a missing one may come from the other file of the pair)."""
    problems = []
    if _is_int(steps) and steps > 0 and steps % step_unit:
        problems.append(f"{where}bucket_reso_steps={steps}: must be divisible by {step_unit} "
                        f"({'sdxl_train_network' if step_unit == 32 else 'train_network'} asserts it)")
    step = steps if _is_int(steps) and steps > 0 else 64
    if res is not None and _is_int(lo) and min(res) < lo - lo % step:
        problems.append(f"{where}min_bucket_reso={lo} is above the resolution {res} (sd-scripts asserts)")
    if res is not None and _is_int(hi) and max(res) > hi + (step - hi % step) % step:
        problems.append(f"{where}max_bucket_reso={hi} is below the resolution {res} (sd-scripts asserts)")
    if res is not None and no_upscale is True and min(res) < 2 * step:
        # BucketManager.select_bucket: an image above the resolution's area is shrunk to it and each side rounded
        # down to the step: a short side under one step becomes 0 (ZeroDivisionError, or an empty bucket)
        problems.append(f"{where}bucket_no_upscale with resolution {res} and bucket_reso_steps={step}: any image "
                        f"larger than the resolution with an aspect ratio above {(min(res) / step) ** 2:g} gets a "
                        "zero-size bucket (ZeroDivisionError in BucketManager.select_bucket); "
                        "use bucket_no_upscale = false at this resolution")
    return problems


def _parse_resolution(value: Any) -> tuple[int, int] | None:
    if isinstance(value, str) and _RESOLUTION_TEXT.match(value):
        sizes = [int(v) for v in value.split(",")]
        return (sizes[0], sizes[-1])
    if _is_int(value):
        return (value, value)
    if isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value):
        return (value[0], value[1])
    return None


def check_training_toml(data: dict, sdxl: bool = False) -> list[str]:
    """Problems sd-scripts would hit (or silently ignore) with this ``--config_file`` TOML (parsed to a dict);
    `sdxl`: for ``sdxl_train_network.py`` instead of ``train_network.py``."""
    if not isinstance(data, dict):
        return [f"training TOML must be a table, not {type(data).__name__}"]
    flat, problems = flatten_training_toml(data)
    kinds = training_args(sdxl)
    for key, value in flat.items():
        if key not in kinds:
            extra = " (sdxl_train_network.py only)" if key in SDXL_ARGS else ""
            problems.append(f"{key}: not an option of {'sdxl_' if sdxl else ''}train_network.py{extra}; "
                            "read_config_from_file keeps it silently and nothing reads it")
            continue
        kind = kinds[key]
        ok, expected = _ARG_KINDS[kind]
        if not ok(value):
            problems.append(f"{key}={value!r}: must be {expected} (argparse type {kind}; TOML values skip argparse)")
        elif key in CHOICES and value not in CHOICES[key]:
            problems.append(f"{key}={value!r}: must be one of {list(CHOICES[key])}")
        elif key in STRICT_FLOAT_ARGS and not isinstance(value, float):
            problems.append(f"{key}={value!r}: must be a float (ConfigSanitizer's voluptuous check rejects an int)")
        elif key == "resolution" and not _RESOLUTION_TEXT.match(value):
            problems.append(f"resolution={value!r}: must be \"N\" or \"W,H\" (prepare_dataset_args splits it)")
        elif key == "face_crop_aug_range":
            try:
                low, high = (float(v) for v in value.split(","))
                if low > high:
                    raise ValueError
            except ValueError:
                problems.append(f"face_crop_aug_range={value!r}: must be \"low,high\" floats with low <= high")
    problems += _training_rules(flat, sdxl)
    return problems


def _training_rules(flat: dict[str, Any], sdxl: bool) -> list[str]:
    """The cross-key checks sd-scripts runs before training (verify_training_args, train(), assert_extra_args)."""
    problems = []
    on = lambda key: flat.get(key) is True  # noqa: E731
    if "adaptive_noise_scale" in flat and "noise_offset" not in flat:
        problems.append("adaptive_noise_scale requires noise_offset (verify_training_args raises)")
    if on("scale_v_pred_loss_like_noise_pred") and not on("v_parameterization"):
        problems.append("scale_v_pred_loss_like_noise_pred requires v_parameterization (verify_training_args raises)")
    if "v_pred_like_loss" in flat and on("v_parameterization"):
        problems.append("v_pred_like_loss cannot be used with v_parameterization (verify_training_args raises)")
    for full, precision in (("full_fp16", "fp16"), ("full_bf16", "bf16")):
        if on(full) and flat.get("mixed_precision") != precision:
            problems.append(f"{full} requires mixed_precision = \"{precision}\" (train_network asserts)")
    if (on("cache_latents") or on("cache_latents_to_disk")) and (on("color_aug") or on("random_crop")):
        problems.append("cache_latents cannot be used with color_aug or random_crop (train_network asserts)")
    if on("enable_bucket"):
        problems += _bucket_problems(_parse_resolution(flat.get("resolution")), flat.get("bucket_reso_steps"),
                                     flat.get("min_bucket_reso"), flat.get("max_bucket_reso"),
                                     flat.get("bucket_no_upscale"), 32 if sdxl else 64, "")
    if sdxl:
        if on("v2"):
            problems.append("v2 = true: verify_sdxl_training_args asserts v2 is off for SDXL")
        if "clip_skip" in flat:
            problems.append("clip_skip: SDXL does not use it (verify_sdxl_training_args warns it 'will be unexpected')")
        if on("cache_text_encoder_outputs") or on("cache_text_encoder_outputs_to_disk"):
            if not on("network_train_unet_only"):
                problems.append("cache_text_encoder_outputs requires network_train_unet_only = true "
                                "(sdxl_train_network asserts)")
            for key in SDXL_UNCACHEABLE_CAPTION_ARGS:
                value = flat.get(key)
                if value is True or (_is_num(value) and value > 0):
                    problems.append(f"{key}={value!r} cannot be used with cache_text_encoder_outputs "
                                    "(sdxl_train_network asserts)")
    return problems


def _check_keys(table: Any, schema: dict[str, str], where: str, hints: dict[str, str]) -> list[str]:
    if not isinstance(table, dict):
        return [f"{where}: must be a table, not {type(table).__name__}"]
    problems = []
    for key, value in table.items():
        if key not in schema:
            problems.append(f"{where}.{key}: not allowed here (voluptuous: extra keys not allowed){hints.get(key, '')}")
            continue
        ok, expected = _CONFIG_KINDS[schema[key]]
        if not ok(value):
            problems.append(f"{where}.{key}={value!r}: must be {expected}")
    return problems


_SUBSET_ONLY = " — only in [[datasets.subsets]]"
_DATASET_ONLY = " — only in [[datasets]] or [general]"
_HINTS_GENERAL = {k: _SUBSET_ONLY for k in ("image_dir", "is_reg", "alpha_mask", "metadata_file",
                                              "conditioning_data_dir")}
_HINTS_GENERAL |= {k: " — a training-TOML (argparse) option only" for k in ("prior_loss_weight", "debug_dataset",
                                                                            "max_token_length")}
_HINTS_SUBSET = {k: _DATASET_ONLY for k in DATASET_ASCENDABLE} | {"subsets": " — subsets do not nest"}


def check_dataset_config(data: dict, sdxl: bool = False, masked_loss: bool = False) -> list[str]:
    """Problems ConfigSanitizer (and the dataset classes' asserts) would raise for this ``--dataset_config`` TOML
    (parsed to a dict). `sdxl`: bucket steps must divide by 32 instead of 64; `masked_loss`: the training TOML's
    masked_loss (train_network passes it as ConfigSanitizer's support_controlnet)."""
    if not isinstance(data, dict):
        return [f"dataset config must be a table, not {type(data).__name__}"]
    db_subset = {**SUBSET_ASCENDABLE, **DB_SUBSET_DISTINCT, **DB_SUBSET_ASCENDABLE, **DO_SUBSET_ASCENDABLE}
    ft_subset = {**SUBSET_ASCENDABLE, **FT_SUBSET_DISTINCT, **DO_SUBSET_ASCENDABLE}
    cn_subset = {**SUBSET_ASCENDABLE, **CN_SUBSET_DISTINCT, **CN_SUBSET_ASCENDABLE, **DO_SUBSET_ASCENDABLE}
    dataset_base = {**DATASET_ASCENDABLE, **SUBSET_ASCENDABLE, **DO_SUBSET_ASCENDABLE}
    schemas = {
        "db": ({**dataset_base, **DB_SUBSET_ASCENDABLE}, db_subset),
        "ft": (dataset_base, ft_subset),
        "cn": ({**dataset_base, **CN_SUBSET_ASCENDABLE}, cn_subset),
    }
    general_schema = {**DATASET_ASCENDABLE, **SUBSET_ASCENDABLE, **DB_SUBSET_ASCENDABLE, **DO_SUBSET_ASCENDABLE}
    problems = [f"{key}: unknown top-level key (only [general] and [[datasets]])" for key in data
                if key not in ("general", "datasets")]
    general = data.get("general", {})
    problems += _check_keys(general, general_schema, "general", _HINTS_GENERAL)
    datasets = data.get("datasets", [])
    if not isinstance(datasets, list):
        return [*problems, "datasets: must be an array of tables ([[datasets]], not [datasets])"]
    if not datasets:
        problems.append("datasets: none (nothing to train on)")
    for i, dataset in enumerate(datasets):
        where = f"datasets[{i}]"
        if not isinstance(dataset, dict):
            problems.append(f"{where}: must be a table")
            continue
        subsets = dataset.get("subsets", [])
        if not isinstance(subsets, list) or not all(isinstance(s, dict) for s in subsets):
            problems.append(f"{where}.subsets: must be an array of tables ([[datasets.subsets]])")
            continue
        # config_util.ConfigSanitizer.validate_flex_dataset
        if masked_loss and all("conditioning_data_dir" in s for s in subsets):
            style = "cn"
        elif all("metadata_file" in s for s in subsets):
            style = "ft"
        elif all("metadata_file" not in s for s in subsets):
            style = "db"
        else:
            problems.append(f"{where}: DreamBooth and fine-tuning subsets cannot be mixed in one dataset")
            continue
        dataset_schema, subset_schema = schemas[style]
        problems += _check_keys({k: v for k, v in dataset.items() if k != "subsets"}, dataset_schema, where,
                                _HINTS_GENERAL)
        if not subsets:
            problems.append(f"{where}.subsets: none (the dataset has no images)")
        for j, subset in enumerate(subsets):
            sub_where = f"{where}.subsets[{j}]"
            problems += _check_keys(subset, subset_schema, sub_where, _HINTS_SUBSET)
            problems += [f"{sub_where}: {key} is required" for key in REQUIRED[style] if key not in subset]
            repeats = subset.get("num_repeats", dataset.get("num_repeats", general.get("num_repeats", 1)))
            if _is_int(repeats) and repeats < 1:
                problems.append(f"{sub_where}: num_repeats={repeats} < 1 (DreamBoothDataset skips the subset)")
        problems += _dataset_rules(dataset, general if isinstance(general, dict) else {}, sdxl, where)
    return problems


def _dataset_rules(dataset: dict[str, Any], general: dict[str, Any], sdxl: bool, where: str) -> list[str]:
    """Asserts of DreamBoothDataset.__init__ / the trainer on a dataset's effective values (dataset, then general)."""
    value = lambda key: dataset.get(key, general.get(key))  # noqa: E731
    problems = []
    split = value("validation_split")
    if isinstance(split, float) and not 0.0 <= split <= 1.0:
        problems.append(f"{where}: validation_split={split} is outside [0, 1] (sd-scripts skips the split)")
    if value("enable_bucket") is True:
        problems += _bucket_problems(_parse_resolution(value("resolution")), value("bucket_reso_steps"),
                                     value("min_bucket_reso"), value("max_bucket_reso"), value("bucket_no_upscale"),
                                     32 if sdxl else 64, f"{where}: ")
    return problems
