"""Base text-to-image model (Stable Diffusion 1.x or SDXL) for LoRA training and evaluation.

Profiles (``models.<profile>.base_model``; ``arch`` ``sd15``/``sdxl``, tiny ``sd15-tiny``/``sdxl-tiny``):

- ``tiny``: the real SD1.5 architecture (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, the real CLIP
  tokenizer, a DDIM scheduler with SD1.5's noise schedule) at small widths, random weights seeded from
  ``seed``; or the real SDXL architecture the same way (two text encoders, the second with a projection for the
  pooled embedding; size/crop conditioning through ``addition_embed_type = "text_time"``). Built once and saved
  (safetensors) to ``<workspace>/models/<sd15|sdxl>-tiny-<hash>`` so training and evaluation share identical base
  weights; ``model_version`` is ``tiny-<sd15|sdxl>-<hash>``. A training TOML may name either tiny model.
- ``full``: ``path`` — a local diffusers folder, a hub id, or a single-file ``.safetensors`` checkpoint
  (``sd_xl_base_1.0.safetensors``, community checkpoints; ``arch`` says which family, ``config`` may name a local
  diffusers folder of that family for the component configs, offline). Unset → :class:`ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from castlab.config import Config
from castlab.errors import ConfigError
from castlab.workspace import folder_in_place, workspace_root

MARKER = "castlab_model.json"
TINY_VAE_LOGVAR = -12.0  # posterior std e^-6 ~ 0.0025 (_quiet_posterior)
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
            # the random encoder's latents have a std of ~0.29: scale them to ~1 as SD's 0.18215 does for its VAE,
            # so the tiny diffusion task has real SD's signal-to-noise (with 0.18215 every image is ~0 in noise)
            "scaling_factor": 3.5,
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


def _tiny_sdxl_configs(resolution: int) -> dict[str, dict[str, Any]]:
    """Component configs of the tiny SDXL: SDXL's UNet layout (text_time conditioning, linear projections,
    transformer depth growing with the level) at small widths, two CLIP text encoders (the second projects)."""
    sd15 = _tiny_configs(resolution)
    te_dim, time_dim = 32, 8
    unet = {
        **sd15["unet"],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "transformer_layers_per_block": [1, 2],
        "attention_head_dim": [2, 4],
        "use_linear_projection": True,
        "cross_attention_dim": 2 * te_dim,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": time_dim,
        "projection_class_embeddings_input_dim": 6 * time_dim + te_dim,
    }
    text_encoder_2 = {**sd15["text_encoder"], "projection_dim": te_dim}
    return {"unet": unet, "vae": sd15["vae"], "text_encoder": sd15["text_encoder"], "text_encoder_2": text_encoder_2,
            "scheduler": dict(_SCHEDULER)}


def is_sdxl_arch(arch: str | None) -> bool:
    return str(arch or "").startswith("sdxl")


def _family(arch: str | None) -> str:
    return "sdxl" if is_sdxl_arch(arch) else "sd15"


def tiny_model_id(cfg: Config, arch: str | None = None) -> tuple[str, Path]:
    """(model_version, folder) of the tiny base model of `arch` (default: the tiny profile's) for `cfg`."""
    family = _family(arch or cfg.models.tiny.base_model.arch)
    resolution = int(cfg.models.tiny.base_model.resolution)
    configs = _tiny_sdxl_configs(resolution) if family == "sdxl" else _tiny_configs(resolution)
    spec = json.dumps({"configs": configs, "seed": int(cfg.seed), "vae_logvar": TINY_VAE_LOGVAR}, sort_keys=True)
    digest = hashlib.sha1(spec.encode()).hexdigest()[:10]
    return f"tiny-{family}-{digest}", workspace_root() / "models" / f"{family}-tiny-{digest}"


def base_model_source(cfg: Config, arch: str | None = None) -> str:
    """What a training TOML names as ``pretrained_model_name_or_path`` for the active profile (tiny: the model
    of `arch`, default the profile's)."""
    if cfg.profile == "tiny":
        return str(tiny_model_id(cfg, arch)[1])
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


def _quiet_posterior(vae: Any) -> None:
    """Give the random VAE a trained VAE's near-deterministic posterior: its log-variance half of ``quant_conv``
    outputs the constant TINY_VAE_LOGVAR. With random weights the posterior std is ~1, 3.6x the spread of the
    latent means: every training sample would be mostly noise and no LoRA could learn a concept."""
    latent = int(vae.config.latent_channels)
    with torch.no_grad():
        vae.quant_conv.weight[latent:] = 0.0
        vae.quant_conv.bias[latent:] = TINY_VAE_LOGVAR


def _build_tiny(folder: Path, cfg: Config, version: str, family: str = "sd15") -> None:
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from castlab.models.tokenizers import clip_tokenizer

    resolution = int(cfg.models.tiny.base_model.resolution)
    configs = _tiny_sdxl_configs(resolution) if family == "sdxl" else _tiny_configs(resolution)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        _quiet_posterior(vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        if family == "sdxl":
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(), unet=unet, scheduler=DDIMScheduler(**configs["scheduler"]),
            force_zeros_for_empty_prompt=True,
        )
    else:
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
    with folder_in_place(folder, MARKER) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / MARKER).write_text(json.dumps({"model_version": version, "profile": "tiny"}, indent=2) + "\n")


def _pipeline_class(sdxl: bool) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline


def _quiet_load(load: Any, *args: Any, **kwargs: Any) -> Any:
    from diffusers.utils import logging as dlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity(logging.ERROR)
    try:
        return load(*args, **kwargs)
    finally:
        dlogging.set_verbosity(verbosity)


def _from_pretrained(source: str, device: str, sdxl: bool = False, **kwargs: Any) -> Any:
    extra = {} if sdxl else {"safety_checker": None, "requires_safety_checker": False}
    pipe = _quiet_load(_pipeline_class(sdxl).from_pretrained, source, use_safetensors=True, **extra, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _folder_is_sdxl(folder: Path) -> bool:
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return "XL" in str(index.get("_class_name", "")) or "text_encoder_2" in index


def _from_single_file(path: Path, cfg: Config, device: str) -> Any:
    """A single-file checkpoint (``.safetensors``) of the family ``models.full.base_model.arch`` says."""
    settings = cfg.models.full.base_model
    sdxl = is_sdxl_arch(settings.arch)
    kwargs: dict[str, Any] = {"local_files_only": bool(settings.local_files_only)}
    if settings.config:
        kwargs["config"] = str(Path(str(settings.config)).expanduser())
    extra = {} if sdxl else {"safety_checker": None, "requires_safety_checker": False}
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    try:
        pipe = _quiet_load(_pipeline_class(sdxl).from_single_file, str(path), **extra, **kwargs)
    except (OSError, ValueError, SingleFileComponentError) as exc:
        hint = ("" if settings.config else " Offline, set models.full.base_model.config to a local diffusers folder "
                "of the same family (its component configs are used).")
        raise ConfigError(f"models.full.base_model.path: cannot load single-file checkpoint {path} as "
                          f"{'SDXL' if sdxl else 'SD1.x'} ({exc}).{hint}") from exc
    empty = [name for name, part in pipe.components.items()
             if isinstance(part, torch.nn.Module) and any(p.is_meta for p in part.parameters())]
    if empty:  # diffusers leaves a component it found no weights for on the meta device
        raise ConfigError(f"models.full.base_model.path: {path} has no weights for {', '.join(empty)} "
                          f"(is models.full.base_model.arch = {settings.arch!r} right for this checkpoint?)")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_base_pipeline(cfg: Config, device: str = "cpu", source: str | None = None) -> tuple[Any, str]:
    """The base StableDiffusionPipeline of the active profile and its ``model_version``.

    `source` (a training TOML's ``pretrained_model_name_or_path``) replaces ``models.full.base_model.path``
    in the full profile; in the tiny profile it must name this config's tiny model folder.
    """
    if cfg.profile == "tiny":
        arch = "sdxl-tiny" if source and Path(source).name.startswith("sdxl-tiny-") else None
        version, folder = tiny_model_id(cfg, arch)
        if source and Path(source).name != folder.name:
            raise ConfigError(
                f"the training TOML names base model {source!r}, but the tiny profile's base model is "
                f"{folder.name} (rebuild the dataset under this config, or use the config it was built with)"
            )
        family = _family(arch or cfg.models.tiny.base_model.arch)
        if not (folder / MARKER).is_file():
            _build_tiny(folder, cfg, version, family)
        return _from_pretrained(str(folder), device, family == "sdxl", local_files_only=True), version
    source = source or _full_path(cfg)
    path = Path(source).expanduser()
    if path.suffix in (".safetensors", ".ckpt") and path.is_file():
        pipe = _from_single_file(path, cfg, device)
        return pipe, f"{_family(cfg.models.full.base_model.arch)}-{path.stem}"
    local = path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1  # hub ids: org/name
    if local and not (path / "model_index.json").is_file():
        raise ConfigError(
            f"models.full.base_model.path: {path} is not a diffusers folder (no model_index.json) nor a "
            "single-file .safetensors checkpoint"
        )
    sdxl = _folder_is_sdxl(path) if local else is_sdxl_arch(cfg.models.full.base_model.arch)
    try:
        pipe = _from_pretrained(str(path) if local else source, device, sdxl)
    except OSError as exc:
        raise ConfigError(f"models.full.base_model.path: cannot load {source!r} ({exc})") from exc
    return pipe, f"{'sdxl' if sdxl else 'sd15'}-{path.name if local else source.replace('/', '--')}"


def is_sdxl(pipe: Any) -> bool:
    """Whether `pipe` is an SDXL pipeline (two text encoders, size/crop conditioning)."""
    return getattr(pipe, "text_encoder_2", None) is not None


def pipeline_family(pipe: Any) -> str:
    """``sdxl`` or ``sd15``: the base family of a loaded pipeline (as LoRA registry entries name it)."""
    return "sdxl" if is_sdxl(pipe) else "sd15"


def encode_prompts(pipe: Any, prompts: list[str], clip_skip: int) -> torch.Tensor:
    """CLIP text-encoder hidden states for `prompts` with kohya's ``clip_skip`` (1 = last layer,
    2 = penultimate, ...; the final layer norm is applied as in kohya and diffusers).

    Done here rather than through the pipeline's ``clip_skip`` because diffusers reaches for
    ``text_encoder.text_model``, which transformers v5's CLIPTextModel no longer has.
    """
    if is_sdxl(pipe):
        raise ConfigError("encode_prompts is for SD1.x pipelines; SDXL conditions on encode_prompts_sdxl")
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


def encode_prompts_sdxl(pipe: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL text conditioning as SDXL (and sd-scripts) builds it: the penultimate hidden states of both text
    encoders (no final layer norm), concatenated, and the second encoder's projected pooled output."""
    hidden = []
    pooled = None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        tokens = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                           truncation=True, return_tensors="pt")
        out = encoder(tokens.input_ids.to(encoder.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        if encoder is pipe.text_encoder_2:
            pooled = out.text_embeds
    return torch.cat(hidden, dim=-1), pooled


def prompt_conditioning(pipe: Any, prompts: list[str], negatives: list[str], clip_skip: int) -> dict[str, Any]:
    """The pipeline-call keyword arguments that condition one image per prompt (SD1.x: ``clip_skip`` text
    states; SDXL: both encoders' states and the pooled embedding), negatives the same way."""
    if is_sdxl(pipe):
        hidden, pooled = encode_prompts_sdxl(pipe, [*prompts, *negatives])
        n = len(prompts)
        return {"prompt_embeds": hidden[:n], "negative_prompt_embeds": hidden[n:],
                "pooled_prompt_embeds": pooled[:n], "negative_pooled_prompt_embeds": pooled[n:]}
    hidden = encode_prompts(pipe, [*prompts, *negatives], clip_skip)
    return {"prompt_embeds": hidden[: len(prompts)], "negative_prompt_embeds": hidden[len(prompts):]}


def sdxl_time_ids(original: tuple[int, int], crop_top_left: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """SDXL's micro-conditioning of one image: (original h, w, crop top, left, target h, w); sizes as (w, h)."""
    (ow, oh), (cx, cy), (tw, th) = original, crop_top_left, target
    return torch.tensor([oh, ow, cy, cx, th, tw], dtype=torch.float32)


def training_resolution(cfg: Config) -> int:
    """Side length the base model trains and renders at: ``models.<profile>.base_model.resolution`` when set
    (the tiny model's small size), else ``dataset.resolution``."""
    return int(cfg.model("base_model").resolution or cfg.dataset.resolution)
