"""Base text-to-image model (Stable Diffusion 1.x) for LoRA training and evaluation.

Profiles (``models.<profile>.base_model``):

- ``tiny``: the real SD1.5 architecture (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, the real CLIP
  tokenizer, a DDIM scheduler with SD1.5's noise schedule) at small widths, random weights seeded from
  ``seed``. Built once and saved (safetensors) to ``<workspace>/models/sd15-tiny-<hash>`` so training and
  evaluation share identical base weights; ``model_version`` is ``tiny-sd15-<hash>``.
- ``full``: ``path`` — a local diffusers folder or a hub id. Unset → :class:`ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from castlab.config import Config
from castlab.errors import ConfigError
from castlab.workspace import workspace_root

MARKER = "castlab_model.json"
TINY_TEXT_LAYERS = 4  # enough hidden layers for kohya clip_skip up to 4

_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def _tiny_configs(resolution: int) -> dict[str, dict[str, Any]]:
    """Component configs of the tiny SD1.5 (VAE downsamples by 2 → latents of resolution/2)."""
    if resolution % 8:
        raise ConfigError(f"models.tiny.base_model.resolution must be a multiple of 8, got {resolution}")
    return {
        "unet": {
            "sample_size": resolution // 2,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        },
        "vae": {
            "sample_size": resolution,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": [32, 64],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
            "latent_channels": 4,
            "layers_per_block": 1,
            "norm_num_groups": 32,
        },
        "text_encoder": {
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": TINY_TEXT_LAYERS,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "projection_dim": 32,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
            "hidden_act": "quick_gelu",
        },
        "scheduler": dict(_SCHEDULER),
    }


def tiny_model_id(cfg: Config) -> tuple[str, Path]:
    """(model_version, folder) of the tiny base model for `cfg` (no building)."""
    resolution = int(cfg.models.tiny.base_model.resolution)
    seed = int(cfg.seed)
    spec = json.dumps({"configs": _tiny_configs(resolution), "seed": seed}, sort_keys=True)
    digest = hashlib.sha1(spec.encode()).hexdigest()[:10]
    return f"tiny-sd15-{digest}", workspace_root() / "models" / f"sd15-tiny-{digest}"


def base_model_source(cfg: Config) -> str:
    """What a training TOML names as ``pretrained_model_name_or_path`` for the active profile."""
    if cfg.profile == "tiny":
        return str(tiny_model_id(cfg)[1])
    return _full_path(cfg)


def _full_path(cfg: Config) -> str:
    path = cfg.models.full.base_model.path
    if not path:
        raise ConfigError(
            "models.full.base_model.path is not set: point it to a diffusers Stable Diffusion 1.5 folder "
            "or hub id; "
            "castlab never falls back to random weights in the full profile"
        )
    return str(path)


def _build_tiny(folder: Path, cfg: Config, version: str) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from castlab.models.tokenizers import clip_tokenizer

    configs = _tiny_configs(int(cfg.models.tiny.base_model.resolution))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(**configs["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / MARKER).write_text(json.dumps({"model_version": version, "profile": "tiny"}, indent=2) + "\n")
        tmp.chmod(0o755)
        os.replace(tmp, folder)
    except OSError:
        if not (folder / MARKER).is_file():  # not a lost race with another process: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_pretrained(source: str, device: str, **kwargs: Any) -> Any:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity(logging.ERROR)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, safety_checker=None, requires_safety_checker=False, use_safetensors=True, **kwargs
        )
    finally:
        dlogging.set_verbosity(verbosity)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_base_pipeline(cfg: Config, device: str = "cpu", source: str | None = None) -> tuple[Any, str]:
    """The base StableDiffusionPipeline of the active profile and its ``model_version``.

    `source` (a training TOML's ``pretrained_model_name_or_path``) replaces ``models.full.base_model.path``
    in the full profile; in the tiny profile it must name this config's tiny model folder.
    """
    if cfg.profile == "tiny":
        version, folder = tiny_model_id(cfg)
        if source and Path(source).name != folder.name:
            raise ConfigError(
                f"the training TOML names base model {source!r}, but the tiny profile's base model is "
                f"{folder.name} (rebuild the dataset under this config, or use the config it was built with)"
            )
        if not (folder / MARKER).is_file():
            _build_tiny(folder, cfg, version)
        return _from_pretrained(str(folder), device, local_files_only=True), version
    source = source or _full_path(cfg)
    path = Path(source).expanduser()
    local = path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1  # hub ids: org/name
    if local and not (path / "model_index.json").is_file():
        raise ConfigError(
            f"models.full.base_model.path: {path} is not a diffusers folder (no model_index.json)"
        )
    try:
        pipe = _from_pretrained(str(path) if local else source, device)
    except OSError as exc:
        raise ConfigError(f"models.full.base_model.path: cannot load {source!r} ({exc})") from exc
    return pipe, f"sd15-{path.name if local else source.replace('/', '--')}"


def encode_prompts(pipe: Any, prompts: list[str], clip_skip: int) -> torch.Tensor:
    """CLIP text-encoder hidden states for `prompts` with kohya's ``clip_skip`` (1 = last layer,
    2 = penultimate, ...; the final layer norm is applied as in kohya and diffusers).

    Done here rather than through the pipeline's ``clip_skip`` because diffusers reaches for
    ``text_encoder.text_model``, which transformers v5's CLIPTextModel no longer has.
    """
    encoder = pipe.text_encoder
    layers = int(encoder.config.num_hidden_layers)
    if not 1 <= clip_skip <= layers:
        raise ConfigError(
            f"training.clip_skip must be between 1 and {layers} for this text encoder, got {clip_skip}"
        )
    tokens = pipe.tokenizer(
        list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    )
    out = encoder(tokens.input_ids.to(encoder.device), output_hidden_states=True)
    if clip_skip == 1:
        return out.last_hidden_state
    final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
    return final_norm(out.hidden_states[-clip_skip])


def training_resolution(cfg: Config) -> int:
    """Side length the base model trains and renders at: ``models.<profile>.base_model.resolution`` when set
    (the tiny model's small size), else ``dataset.resolution``."""
    return int(cfg.model("base_model").resolution or cfg.dataset.resolution)
