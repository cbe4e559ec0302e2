"""kohya checkpoint names, pruning, training metadata and model hashes, as sd-scripts writes them.

Follows sd-scripts ``library/train_util.py`` (``get_epoch_ckpt_name`` / ``get_step_ckpt_name`` /
``get_last_ckpt_name``, ``get_remove_epoch_no`` / ``get_remove_step_no``, ``save_and_remove_state_*``,
``precalculate_safetensors_hashes``, ``model_hash`` / ``calculate_sha256``, ``BaseDataset.set_tag_frequency`` and
``make_buckets``' ``bucket_info``), ``train_network.py`` (the ``metadata = {...}`` block and its dataset part) and
``library/sai_model_spec.py`` (``build_metadata``). Everything but pruning and ``file_hashes`` is pure: the
caller passes the flattened training TOML (``args``), a dataset summary and the run's numbers.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
import mimetypes
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from castlab.errors import InputError
from trainers.optim import adafactor_relative_step

Size = tuple[int, int]

# sd-scripts' argparse defaults of the keys the metadata reads (train_util.py / train_network.py add_argument)
ARG_DEFAULTS: dict[str, Any] = {
    "output_name": None, "learning_rate": 2e-6, "text_encoder_lr": None, "unet_lr": None,
    "gradient_checkpointing": False, "gradient_accumulation_steps": 1, "lr_warmup_steps": 0,
    "lr_scheduler": "constant", "network_module": None, "network_dim": None, "network_alpha": 1,
    "network_dropout": None, "network_args": None, "mixed_precision": "no", "full_fp16": False, "v2": False,
    "v_parameterization": False, "clip_skip": None, "max_token_length": None, "cache_latents": False,
    "cache_latents_to_disk": False, "seed": None, "lowram": False, "noise_offset": None,
    "multires_noise_iterations": None, "multires_noise_discount": 0.3, "adaptive_noise_scale": None,
    "zero_terminal_snr": False, "training_comment": None, "max_grad_norm": 1.0, "caption_dropout_rate": 0.0,
    "caption_dropout_every_n_epochs": 0, "caption_tag_dropout_rate": 0.0, "face_crop_aug_range": None,
    "prior_loss_weight": 1.0, "min_snr_gamma": None, "scale_weight_norms": None, "ip_noise_gamma": None,
    "debiased_estimation_loss": False, "noise_offset_random_strength": False,
    "ip_noise_gamma_random_strength": False, "loss_type": "l2", "huber_schedule": "snr", "huber_scale": 1.0,
    "huber_c": 0.1, "fp8_base": False, "fp8_base_unet": False, "validation_seed": None, "validation_split": 0.0,
    "max_validation_steps": None, "validate_every_n_epochs": None, "validate_every_n_steps": None,
    "resize_interpolation": None, "train_batch_size": 1, "resolution": None, "color_aug": False, "flip_aug": False,
    "random_crop": False, "shuffle_caption": False, "keep_tokens": 0, "keep_tokens_separator": "",
    "secondary_separator": None, "enable_wildcard": False, "caption_prefix": None, "caption_suffix": None,
    "pretrained_model_name_or_path": None, "vae": None, "no_metadata": False, "dataset_config": None,
    "metadata_title": None, "metadata_author": None, "metadata_description": None, "metadata_license": None,
    "metadata_tags": None, "min_timestep": None, "max_timestep": None,
}
# train_util.SS_METADATA_MINIMUM_KEYS: what no_metadata = true still writes
MINIMUM_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                "ss_network_args")
SDXL_MODEL_VERSION = "sdxl_base_v1-0"  # sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0
MODELSPEC_VERSION = "1.0.1"
IMPL_STABILITY_AI = "https://github.com/Stability-AI/generative-models"
IMPL_DIFFUSERS = "diffusers"


# ---------------------------------------------------------------- names and pruning

def _number(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    return value


def _stem(output_name: str, epoch: int | None, step: int | None) -> str:
    if not isinstance(output_name, str) or not output_name:
        raise ValueError(f"output_name must be a non-empty string, got {output_name!r}")
    if epoch is not None and step is not None:
        raise ValueError("give epoch or step, not both")
    if epoch is not None:
        return f"{output_name}-{_number(epoch, 'epoch'):06d}"
    if step is not None:
        return f"{output_name}-step{_number(step, 'step'):08d}"
    return output_name


def checkpoint_name(output_name: str, *, epoch: int | None = None, step: int | None = None,
                    ext: str = "safetensors") -> str:
    """``name-000003.safetensors`` (epoch), ``name-step00000100.safetensors`` (step) or ``name.safetensors``."""
    return f"{_stem(output_name, epoch, step)}.{ext.lstrip('.')}"


def state_dir_name(output_name: str, *, epoch: int | None = None, step: int | None = None) -> str:
    """``name-000003-state``, ``name-step00000100-state`` or ``name-state`` (sd-scripts' *_STATE_NAME)."""
    return f"{_stem(output_name, epoch, step)}-state"


def _count(value: Any, key: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _every(value: Any, key: str, needed_by: str) -> int:
    every = _count(value, key, 1)
    if every is None:
        raise ValueError(f"{needed_by} needs {key} (the spacing of the saves it prunes)")
    return every


def existing_checkpoints(output_dir: str | Path, output_name: str, ext: str = "safetensors") -> list[Path]:
    """The checkpoints of ``output_name`` in ``output_dir`` (per epoch, per step and final), sorted by name."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    ext = ext.lstrip(".")
    pattern = re.compile(rf"{re.escape(output_name)}(-\d{{6}}|-step\d{{8}})?\.{re.escape(ext)}")
    return sorted(p for p in out.iterdir() if p.is_file() and pattern.fullmatch(p.name))


def prune_checkpoints(output_dir: str | Path, output_name: str, args: Mapping[str, Any] | None = None, *,
                      epoch: int | None = None, step: int | None = None, save_last_n_epochs: int | None = None,
                      save_last_n_steps: int | None = None, save_every_n_epochs: int | None = None,
                      save_every_n_steps: int | None = None, save_last_n_epochs_state: int | None = None,
                      save_last_n_steps_state: int | None = None, save_state: bool | None = None,
                      ext: str = "safetensors") -> list[Path]:
    """Remove what sd-scripts removes right after saving at ``epoch`` (epoch end) or ``step``; return the paths.

    Checkpoints: at epoch ``e`` the one of epoch ``e - save_every_n_epochs * save_last_n_epochs``; at step ``s``
    the one of step ``r - r % save_every_n_steps`` with ``r = s - save_last_n_steps - 1`` (so the saves of the
    last ``save_last_n_steps`` steps stay). With ``save_state``, the state folder of the same rule, counted with
    ``save_last_n_*_state`` when set (non-zero), else ``save_last_n_*``. Missing files are skipped, as there.
    The ``save_*`` settings not given as keywords are read from ``args`` (the flattened training TOML) if given.
    """
    def pick(value: Any, key: str) -> Any:
        return args.get(key) if value is None and args is not None else value

    save_last_n_epochs = pick(save_last_n_epochs, "save_last_n_epochs")
    save_last_n_steps = pick(save_last_n_steps, "save_last_n_steps")
    save_every_n_epochs = pick(save_every_n_epochs, "save_every_n_epochs")
    save_every_n_steps = pick(save_every_n_steps, "save_every_n_steps")
    save_last_n_epochs_state = pick(save_last_n_epochs_state, "save_last_n_epochs_state")
    save_last_n_steps_state = pick(save_last_n_steps_state, "save_last_n_steps_state")
    save_state = bool(pick(save_state, "save_state"))
    if (epoch is None) == (step is None):
        raise ValueError("give exactly one of epoch or step")
    out = Path(output_dir)
    removed: list[Path] = []
    state_n: int | None
    if epoch is not None:
        _number(epoch, "epoch")
        keep_n = _count(save_last_n_epochs, "save_last_n_epochs", 1)
        state_n = _count(save_last_n_epochs_state, "save_last_n_epochs_state", 0) or keep_n
        if keep_n is not None:
            old = epoch - _every(save_every_n_epochs, "save_every_n_epochs", "save_last_n_epochs") * keep_n
            if old >= 0:
                removed += _remove(out / checkpoint_name(output_name, epoch=old, ext=ext))
        if save_state and state_n is not None:
            old = epoch - _every(save_every_n_epochs, "save_every_n_epochs", "save_last_n_epochs_state") * state_n
            if old >= 0:
                removed += _remove(out / state_dir_name(output_name, epoch=old))
        return removed
    _number(step, "step")
    keep_n = _count(save_last_n_steps, "save_last_n_steps", 0)
    state_n = _count(save_last_n_steps_state, "save_last_n_steps_state", 0) or keep_n
    if keep_n is not None:
        every = _every(save_every_n_steps, "save_every_n_steps", "save_last_n_steps")
        old = step - keep_n - 1
        old -= old % every
        if old >= 0:
            removed += _remove(out / checkpoint_name(output_name, step=old, ext=ext))
    if save_state and state_n is not None:
        every = _every(save_every_n_steps, "save_every_n_steps", "save_last_n_steps_state")
        old = step - state_n - 1
        old -= old % every
        if old > 0:  # sd-scripts' state pruning uses > 0 here, the checkpoint pruning >= 0
            removed += _remove(out / state_dir_name(output_name, step=old))
    return removed


def _remove(path: Path) -> list[Path]:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    else:
        return []
    return [path]


# ---------------------------------------------------------------- dataset summaries

def tag_frequency(captions_by_dir: Mapping[str | Path, Iterable[str]]) -> dict[str, dict[str, int]]:
    """sd-scripts' ``tag_frequency``: per image folder (its base name), how many captions hold each tag; tags are
    the caption split at ``,``, stripped and lower-cased, empty ones skipped. Folders sharing a base name merge."""
    result: dict[str, dict[str, int]] = {}
    for folder, captions in captions_by_dir.items():
        counts = result.setdefault(os.path.basename(str(folder)), {})
        for caption in captions:
            for tag in caption.split(","):
                tag = tag.strip().lower()
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1
    return result


def bucket_info(bucket_counts: Mapping[Size, int], ar_errors: Sequence[float]) -> dict[str, Any]:
    """sd-scripts' ``bucket_info``: ``{"buckets": {i: {"resolution": (w, h), "count": n}}, "mean_img_ar_error"}``.

    ``bucket_counts`` holds every bucket of the dataset (empty ones too: ``i`` is the index in the sorted list
    of all buckets) with its image count including repeats; ``ar_errors`` one aspect error per image (no repeats).
    Only for datasets with ``enable_bucket``; sd-scripts writes ``None`` otherwise.
    """
    buckets = {i: {"resolution": tuple(reso), "count": count}
               for i, (reso, count) in enumerate(sorted(bucket_counts.items())) if count > 0}
    mean_error: float = float(sum(abs(e) for e in ar_errors) / len(ar_errors)) if ar_errors else 0
    return {"buckets": buckets, "mean_img_ar_error": mean_error}


def _subset_images(subset: Mapping[str, Any]) -> tuple[int, int]:
    count, repeats = subset.get("img_count"), subset.get("num_repeats", 1)
    for key, value, minimum in (("img_count", count, 0), ("num_repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"subset {subset.get('image_dir')!r}: {key} must be an integer >= {minimum}, "
                             f"got {value!r}")
    return count, repeats


def _image_counts(dataset: Mapping[str, Any]) -> tuple[int, int]:
    train = reg = 0
    for subset in dataset["subsets"]:
        count, repeats = _subset_images(subset)
        if subset.get("is_reg", False):
            reg += count * repeats
        else:
            train += count * repeats
    return train, reg


def _dataset_tag_frequency(dataset: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    missing = [str(s.get("image_dir")) for s in dataset["subsets"] if "captions" not in s]
    if missing:
        raise ValueError(f"dataset summary: subsets {missing} lack 'captions' (needed for ss_tag_frequency)")
    result: dict[str, dict[str, int]] = {}
    for subset in dataset["subsets"]:
        for folder, counts in tag_frequency({subset["image_dir"]: subset["captions"]}).items():
            merged = result.setdefault(folder, {})
            for tag, n in counts.items():
                merged[tag] = merged.get(tag, 0) + n
    return result


def _datasets_json(datasets: Sequence[Mapping[str, Any]]) -> tuple[list, dict, dict]:
    """train_network.py's ``use_user_config`` branch: ss_datasets, ss_tag_frequency, ss_dataset_dirs values."""
    entries: list[dict[str, Any]] = []
    frequency: dict[str, dict[str, int]] = {}
    dirs: dict[str, dict[str, int]] = {}
    for dataset in datasets:
        train, reg = _image_counts(dataset)
        bucketed = bool(dataset.get("enable_bucket", False))
        freq = _dataset_tag_frequency(dataset)
        entry: dict[str, Any] = {
            "is_dreambooth": True,
            "batch_size_per_device": dataset["batch_size"],
            "num_train_images": train,
            "num_reg_images": reg,
            "resolution": tuple(dataset["resolution"]),
            "enable_bucket": bucketed,
            "min_bucket_reso": dataset.get("min_bucket_reso", 256) if bucketed else None,
            "max_bucket_reso": dataset.get("max_bucket_reso", 1024) if bucketed else None,
            "tag_frequency": freq,
            "bucket_info": dataset.get("bucket_info") if bucketed else None,
            "resize_interpolation": dataset.get("resize_interpolation"),
        }
        subsets = []
        for subset in dataset["subsets"]:
            count, repeats = _subset_images(subset)
            image_dir = os.path.basename(str(subset["image_dir"]))
            subsets.append({
                "img_count": count,
                "num_repeats": repeats,
                "color_aug": bool(subset.get("color_aug", False)),
                "flip_aug": bool(subset.get("flip_aug", False)),
                "random_crop": bool(subset.get("random_crop", False)),
                "shuffle_caption": bool(subset.get("shuffle_caption", False)),
                "keep_tokens": subset.get("keep_tokens", 0),
                "keep_tokens_separator": subset.get("keep_tokens_separator", ""),
                "secondary_separator": subset.get("secondary_separator"),
                "enable_wildcard": bool(subset.get("enable_wildcard", False)),
                "caption_prefix": subset.get("caption_prefix"),
                "caption_suffix": subset.get("caption_suffix"),
                "resize_interpolation": subset.get("resize_interpolation"),
                "image_dir": image_dir,
                "class_tokens": subset.get("class_tokens"),
                "is_reg": bool(subset.get("is_reg", False)),
            })
            if not subset.get("is_reg", False):  # the same folder twice becomes "dir (2)", "dir (3)", ...
                key, i = image_dir, 2
                while key in dirs:
                    key, i = f"{image_dir} ({i})", i + 1
                dirs[key] = {"n_repeats": repeats, "img_count": count}
        entry["subsets"] = subsets
        entries.append(entry)
        for folder, counts in freq.items():  # a folder used by several datasets counts once (the first)
            frequency.setdefault(folder, counts)
    return entries, frequency, dirs


# ---------------------------------------------------------------- metadata

def _arg(args: Mapping[str, Any], key: str) -> Any:
    return args.get(key, ARG_DEFAULTS[key])


def _resolution(value: Any) -> Size | None:
    """prepare_dataset_args: "512" / "768,512" / 512 / (w, h) → (w, h)."""
    if value is None:
        return None
    parts = [int(p) for p in value.split(",")] if isinstance(value, str) else (
        [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)])
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise ValueError(f"resolution must be 'size' or 'width,height', got {value!r}")
    return parts[0], parts[1]


def _face_crop(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    parts = [float(p) for p in value.split(",")] if isinstance(value, str) else [float(v) for v in value]
    if len(parts) != 2 or parts[0] > parts[1]:
        raise ValueError(f"face_crop_aug_range must be 'low,high', got {value!r}")
    return parts[0], parts[1]


def _list_arg(value: Any, key: str) -> list[str]:
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{key} must be a list of \"name=value\" strings, got {value!r}")
    return list(items)


def network_kwargs(args: Mapping[str, Any]) -> dict[str, Any]:
    """train_network.py's ``net_kwargs``: ``network_args`` split at the first ``=`` (values stay strings), plus
    ``dropout`` = ``network_dropout`` unless given."""
    kwargs: dict[str, Any] = {}
    for item in _list_arg(_arg(args, "network_args") or [], "network_args"):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"network_args entry {item!r} is not \"name=value\"")
        kwargs[key] = value
    kwargs.setdefault("dropout", _arg(args, "network_dropout"))
    return kwargs


def base_model_version(args: Mapping[str, Any], sdxl: bool) -> str:
    """ss_base_model_version: ``sdxl_base_v1-0`` or model_util's ``sd_v1`` / ``sd_v2`` (+ ``_v`` for v-pred)."""
    if sdxl:
        return SDXL_MODEL_VERSION
    version = "sd_v2" if _arg(args, "v2") else "sd_v1"
    return version + ("_v" if _arg(args, "v_parameterization") else "")


def _data_url(value: str) -> str:
    if value.startswith("data:"):
        return value
    path = Path(value)
    if not path.is_file():
        raise InputError(path, "metadata_thumbnail is neither a data: URL nor an image file")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def modelspec_metadata(args: Mapping[str, Any], *, sdxl: bool, saved_at: float,
                       implementation_version: str = "castlab") -> dict[str, str]:
    """sai_model_spec.build_metadata for a LoRA as train_network.py calls it (``get_sai_model_spec``)."""
    v_pred = bool(_arg(args, "v_parameterization"))
    if sdxl:
        arch = "stable-diffusion-xl-v1-base"
    elif _arg(args, "v2"):
        arch = "stable-diffusion-v2-768-v" if v_pred else "stable-diffusion-v2-512"
    else:
        arch = "stable-diffusion-v1"
    reso = _resolution(_arg(args, "resolution"))
    if reso is None:
        reso = (1024, 1024) if sdxl else (768, 768) if _arg(args, "v2") and v_pred else (512, 512)
    title = _arg(args, "metadata_title") or _arg(args, "output_name") or f"LoRA@{saved_at}"
    fields: dict[str, Any] = {
        "architecture": f"{arch}/lora",
        "implementation": IMPL_STABILITY_AI if sdxl else IMPL_DIFFUSERS,
        "title": title,
        "resolution": f"{reso[0]}x{reso[1]}",
        "sai_model_spec": MODELSPEC_VERSION,
        "description": _arg(args, "metadata_description"),
        "author": _arg(args, "metadata_author"),
        "date": datetime.datetime.fromtimestamp(int(saved_at)).isoformat(),
        "license": _arg(args, "metadata_license"),
        "tags": _arg(args, "metadata_tags"),
        "prediction_type": "v" if v_pred else "epsilon",
        "timestep_range": None,
        "encoder_layer": None if _arg(args, "clip_skip") is None else f"{_arg(args, 'clip_skip')}",
    }
    low, high = _arg(args, "min_timestep"), _arg(args, "max_timestep")
    if low is not None or high is not None:
        fields["timestep_range"] = f"{0 if low is None else low},{1000 if high is None else high}"
    extra = {key[len("metadata_"):]: value for key, value in args.items()
             if key.startswith("metadata_") and not key.startswith("metadata___") and value is not None
             and key[len("metadata_"):] not in ("title", "author", "description", "license", "tags")}
    if "thumbnail" in extra:
        extra["thumbnail"] = _data_url(str(extra["thumbnail"]))
    extra.setdefault("implementation_version", implementation_version)
    result = {f"modelspec.{k}": str(v) for k, v in fields.items() if v is not None}
    result.update({f"modelspec.{k}": str(v) for k, v in extra.items()})
    return result


def training_metadata(
    args: Mapping[str, Any],
    dataset: Mapping[str, Any],
    *,
    sdxl: bool,
    optimizer: str,
    max_train_steps: int,
    num_batches_per_epoch: int,
    epoch: int,
    step: int,
    session_id: int,
    training_started_at: float,
    saved_at: float,
    base_model_hashes: tuple[str, str] | None = None,
    vae_hashes: tuple[str, str] | None = None,
    commit_hash: str = "castlab",
) -> dict[str, str]:
    """The ``ss_*`` and ``modelspec.*`` metadata sd-scripts' train_network.py writes into a LoRA checkpoint.

    ``args``: the flattened training TOML (missing keys take sd-scripts' defaults). ``dataset``:
    ``{"datasets": [{"batch_size", "resolution": (w, h), "enable_bucket", "min_bucket_reso", "max_bucket_reso",
    "bucket_no_upscale", "resize_interpolation", "bucket_info": bucket_info(...) | None, "subsets": [{"image_dir",
    "img_count", "num_repeats", "is_reg", "class_tokens", "captions": [one caption per image], and optionally
    color_aug, flip_aug, random_crop, shuffle_caption, keep_tokens, keep_tokens_separator, secondary_separator,
    enable_wildcard, caption_prefix, caption_suffix, resize_interpolation}]}], "num_validation_images": 0}``.
    ``optimizer``: ``optim.optimizer_label``. ``max_train_steps``: the steps actually run (after
    ``max_train_epochs``). ``num_batches_per_epoch``: the data loader's length. ``epoch`` / ``step``: what sd-scripts
    writes as ss_epoch / ss_steps (the 0-based running epoch for step saves, ``epoch + 1`` at an epoch end, the
    epoch count at the end). ``base_model_hashes`` / ``vae_hashes``: ``file_hashes(path)`` when that path exists
    locally (sd-scripts then writes the hashes and the base name); otherwise the name is written as given.
    """
    datasets = list(dataset.get("datasets") or [])
    if not datasets:
        raise ValueError("dataset summary has no datasets")
    grad_accum = _arg(args, "gradient_accumulation_steps")
    if num_batches_per_epoch < 1 or max_train_steps < 1:
        raise ValueError("num_batches_per_epoch and max_train_steps must be >= 1")
    num_epochs = math.ceil(max_train_steps / math.ceil(num_batches_per_epoch / grad_accum))
    counts = [_image_counts(d) for d in datasets]
    relative_step = adafactor_relative_step(args)  # sd-scripts then clears learning_rate / unet_lr
    lr = _arg(args, "learning_rate")
    meta: dict[str, Any] = {
        "ss_session_id": session_id,
        "ss_training_started_at": training_started_at,
        "ss_output_name": _arg(args, "output_name"),
        "ss_learning_rate": None if relative_step else lr,
        "ss_text_encoder_lr": _arg(args, "text_encoder_lr"),
        "ss_unet_lr": None if relative_step else _arg(args, "unet_lr"),
        "ss_num_train_images": sum(c[0] for c in counts),
        "ss_num_validation_images": dataset.get("num_validation_images", 0),
        "ss_num_reg_images": sum(c[1] for c in counts),
        "ss_num_batches_per_epoch": num_batches_per_epoch,
        "ss_num_epochs": num_epochs,
        "ss_gradient_checkpointing": _arg(args, "gradient_checkpointing"),
        "ss_gradient_accumulation_steps": grad_accum,
        "ss_max_train_steps": max_train_steps,
        "ss_lr_warmup_steps": _arg(args, "lr_warmup_steps"),
        "ss_lr_scheduler": f"adafactor:{lr}" if relative_step else _arg(args, "lr_scheduler"),
        "ss_network_module": _arg(args, "network_module"),
        "ss_network_dim": _arg(args, "network_dim"),
        "ss_network_alpha": _arg(args, "network_alpha"),
        "ss_network_dropout": _arg(args, "network_dropout"),
        "ss_mixed_precision": _arg(args, "mixed_precision"),
        "ss_full_fp16": bool(_arg(args, "full_fp16")),
        "ss_v2": bool(_arg(args, "v2")),
        "ss_base_model_version": base_model_version(args, sdxl),
        "ss_clip_skip": _arg(args, "clip_skip"),
        "ss_max_token_length": _arg(args, "max_token_length"),
        "ss_cache_latents": bool(_arg(args, "cache_latents") or _arg(args, "cache_latents_to_disk")),
        "ss_seed": _arg(args, "seed"),
        "ss_lowram": _arg(args, "lowram"),
        "ss_noise_offset": _arg(args, "noise_offset"),
        "ss_multires_noise_iterations": _arg(args, "multires_noise_iterations"),
        "ss_multires_noise_discount": _arg(args, "multires_noise_discount"),
        "ss_adaptive_noise_scale": _arg(args, "adaptive_noise_scale"),
        "ss_zero_terminal_snr": _arg(args, "zero_terminal_snr"),
        "ss_training_comment": _arg(args, "training_comment"),
        "ss_sd_scripts_commit_hash": commit_hash,
        "ss_optimizer": optimizer,
        "ss_max_grad_norm": _arg(args, "max_grad_norm"),
        "ss_caption_dropout_rate": _arg(args, "caption_dropout_rate"),
        "ss_caption_dropout_every_n_epochs": _arg(args, "caption_dropout_every_n_epochs"),
        "ss_caption_tag_dropout_rate": _arg(args, "caption_tag_dropout_rate"),
        "ss_face_crop_aug_range": _face_crop(_arg(args, "face_crop_aug_range")),
        "ss_prior_loss_weight": _arg(args, "prior_loss_weight"),
        "ss_min_snr_gamma": _arg(args, "min_snr_gamma"),
        "ss_scale_weight_norms": _arg(args, "scale_weight_norms"),
        "ss_ip_noise_gamma": _arg(args, "ip_noise_gamma"),
        "ss_debiased_estimation": bool(_arg(args, "debiased_estimation_loss")),
        "ss_noise_offset_random_strength": _arg(args, "noise_offset_random_strength"),
        "ss_ip_noise_gamma_random_strength": _arg(args, "ip_noise_gamma_random_strength"),
        "ss_loss_type": _arg(args, "loss_type"),
        "ss_huber_schedule": _arg(args, "huber_schedule"),
        "ss_huber_scale": _arg(args, "huber_scale"),
        "ss_huber_c": _arg(args, "huber_c"),
        "ss_fp8_base": bool(_arg(args, "fp8_base")),
        "ss_fp8_base_unet": bool(_arg(args, "fp8_base_unet")),
        "ss_validation_seed": _arg(args, "validation_seed"),
        "ss_validation_split": _arg(args, "validation_split"),
        "ss_max_validation_steps": _arg(args, "max_validation_steps"),
        "ss_validate_every_n_epochs": _arg(args, "validate_every_n_epochs"),
        "ss_validate_every_n_steps": _arg(args, "validate_every_n_steps"),
        "ss_resize_interpolation": _arg(args, "resize_interpolation"),
    }
    if _arg(args, "dataset_config") is not None:
        entries, frequency, dirs = _datasets_json(datasets)
        meta["ss_datasets"] = json.dumps(entries)
        meta["ss_tag_frequency"] = json.dumps(frequency)
        meta["ss_dataset_dirs"] = json.dumps(dirs)
    else:
        meta.update(_single_dataset(args, datasets))
    if _arg(args, "network_args"):
        meta["ss_network_args"] = json.dumps(network_kwargs(args))
    for key, stem, hashes in (("pretrained_model_name_or_path", "sd_model", base_model_hashes),
                              ("vae", "vae", vae_hashes)):
        name = _arg(args, key)
        if name is None:
            continue
        name = str(name)
        if hashes is not None:  # ss_sd_model_hash / ss_new_sd_model_hash, ss_vae_hash / ss_new_vae_hash
            meta[f"ss_{stem}_hash"], meta[f"ss_new_{stem}_hash"] = hashes
            name = os.path.basename(name)
        meta[f"ss_{stem}_name"] = name
    meta = {k: str(v) for k, v in meta.items()}
    if _arg(args, "no_metadata"):
        meta = {k: meta[k] for k in MINIMUM_KEYS if k in meta}
    else:
        meta["ss_training_finished_at"] = str(saved_at)
        meta["ss_steps"] = str(step)
        meta["ss_epoch"] = str(epoch)
    meta.update(modelspec_metadata(args, sdxl=sdxl, saved_at=saved_at))
    return meta


def _single_dataset(args: Mapping[str, Any], datasets: list[Mapping[str, Any]]) -> dict[str, Any]:
    """train_network.py's branch without a dataset config (train_data_dir / reg_data_dir)."""
    if len(datasets) != 1:
        raise ValueError(f"without dataset_config there is exactly one dataset, got {len(datasets)}")
    dataset = datasets[0]
    dirs: dict[str, dict[str, int]] = {}
    reg_dirs: dict[str, dict[str, int]] = {}
    for subset in dataset["subsets"]:
        count, repeats = _subset_images(subset)
        target = reg_dirs if subset.get("is_reg", False) else dirs
        target[os.path.basename(str(subset["image_dir"]))] = {"n_repeats": repeats, "img_count": count}
    bucketed = bool(dataset.get("enable_bucket", False))
    return {
        "ss_batch_size_per_device": _arg(args, "train_batch_size"),
        "ss_total_batch_size": _arg(args, "train_batch_size") * _arg(args, "gradient_accumulation_steps"),
        "ss_resolution": _resolution(_arg(args, "resolution")),
        "ss_color_aug": bool(_arg(args, "color_aug")),
        "ss_flip_aug": bool(_arg(args, "flip_aug")),
        "ss_random_crop": bool(_arg(args, "random_crop")),
        "ss_shuffle_caption": bool(_arg(args, "shuffle_caption")),
        "ss_enable_bucket": bucketed,
        "ss_bucket_no_upscale": bool(dataset.get("bucket_no_upscale", False)) if bucketed else False,
        "ss_min_bucket_reso": dataset.get("min_bucket_reso", 256) if bucketed else None,
        "ss_max_bucket_reso": dataset.get("max_bucket_reso", 1024) if bucketed else None,
        "ss_keep_tokens": _arg(args, "keep_tokens"),
        "ss_dataset_dirs": json.dumps(dirs),
        "ss_reg_dataset_dirs": json.dumps(reg_dirs),
        "ss_tag_frequency": json.dumps(_dataset_tag_frequency(dataset)),
        "ss_bucket_info": json.dumps(dataset.get("bucket_info") if bucketed else None),
    }


# ---------------------------------------------------------------- hashes

_LEGACY_OFFSET, _LEGACY_LENGTH = 0x100000, 0x10000


def model_hashes(state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """``(sshs_model_hash, sshs_legacy_hash)`` as sd-scripts' ``precalculate_safetensors_hashes``: serialize the
    tensors with only the ``ss_*`` metadata; the model hash is the sha256 of everything after the header, the
    legacy hash the first 8 hex digits of the sha256 of the 64 KiB at offset 1 MiB of that file. Pass the tensors
    exactly as they will be saved (after the ``save_precision`` cast) and the metadata that goes with them."""
    kept = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    data = safetensors.torch.save(state_dict, kept)
    header = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header:]).hexdigest()
    legacy_hash = hashlib.sha256(data[_LEGACY_OFFSET:_LEGACY_OFFSET + _LEGACY_LENGTH]).hexdigest()[:8]
    return model_hash, legacy_hash


def file_hashes(path: str | Path) -> tuple[str, str]:
    """sd-scripts' ``(model_hash, calculate_sha256)`` of a base model file (ss_sd_model_hash /
    ss_new_sd_model_hash); like there, ``"NOFILE"`` / ``"IsADirectory"`` for a missing file or a folder."""
    path = Path(path)
    if not path.exists():
        return "NOFILE", "NOFILE"
    if path.is_dir():
        return "IsADirectory", "IsADirectory"
    full = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(_LEGACY_OFFSET)
        legacy = hashlib.sha256(f.read(_LEGACY_LENGTH)).hexdigest()[:8]
        f.seek(0)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            full.update(chunk)
    return legacy, full.hexdigest()


SAVE_DTYPES = {"float": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def write_checkpoint(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a kohya LoRA atomically with its ``sshs_model_hash`` / ``sshs_legacy_hash`` added to `metadata`."""
    from safetensors.torch import save_file

    from castlab.workspace import atomic_path

    meta = {k: str(v) for k, v in metadata.items()}
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = model_hashes(state, meta)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(path)) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)
