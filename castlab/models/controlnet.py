"""The ControlNet role (``models.<profile>.controlnet``): one diffusers ``ControlNetModel`` per kind (pose, depth,
canny) and base family (SD1.5, SDXL).

- ``tiny``: shaped after the loaded tiny base model's UNet (``ControlNetModel.from_unet``: the real ControlNet
  architecture at the tiny size), seeded random weights, its zero-initialised output convolutions too, so a
  condition changes the image measurably; stamped ``tiny-controlnet-<kind>-<family>-s<seed>``.
- ``full``: ``models.full.controlnet.<sd15|sdxl>.<kind>``, a hub id or local folder; never downloaded unless
  ``local_files_only: false``; a ControlNet whose cross-attention width is not the base UNet's (made for the
  other family) is an error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from castlab.config import Config
from castlab.errors import ConfigError, InputError
from castlab.models.diffusion import pipeline_family

KINDS = ("pose", "depth", "canny")
TINY_ARCH = "tiny-controlnet"
_ZERO_CONVS = ("controlnet_down_blocks", "controlnet_mid_block")


def _tiny(cfg: Config, kind: str, pipe: Any) -> tuple[Any, str]:
    from diffusers import ControlNetModel

    settings = cfg.model("controlnet")
    if settings.arch != TINY_ARCH:
        raise ConfigError(f"models.tiny.controlnet.arch: unknown tiny ControlNet {settings.arch!r} "
                          f"(known: {TINY_ARCH})")
    seed = int(cfg.seed) + KINDS.index(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # the condition encoder downsamples as much as the tiny VAE does (ControlNet's own: 8x in 3 steps)
        steps = max(0, int(pipe.vae_scale_factor).bit_length() - 1)
        channels = tuple(16 * 2 ** i for i in range(steps + 1))
        model = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=channels,
                                          load_weights_from_unet=False)  # the UNet may carry LoRA layers
        for name, module in model.named_modules():
            if name.startswith(_ZERO_CONVS) and isinstance(module, torch.nn.Conv2d):
                torch.nn.init.normal_(module.weight, std=0.05)
    check_controlnet(model, pipe, TINY_ARCH)
    return model.to(pipe.unet.device, pipe.unet.dtype), f"{TINY_ARCH}-{kind}-{pipeline_family(pipe)}-s{seed}"


def _full(cfg: Config, kind: str, pipe: Any) -> tuple[Any, str]:
    from diffusers import ControlNetModel

    from castlab.models import hub_or_folder

    family = pipeline_family(pipe)
    settings = cfg.model("controlnet")
    key = f"models.full.controlnet.{family}.{kind}"
    value = getattr(getattr(settings, family), kind)
    if not value:
        raise ConfigError(f"{key} is not set: a diffusers ControlNet hub id or folder for {kind} on {family}")
    source, name = hub_or_folder(str(value), key)
    try:
        model = ControlNetModel.from_pretrained(source, local_files_only=bool(settings.local_files_only),
                                                torch_dtype=pipe.unet.dtype)
    except OSError as exc:
        raise ConfigError(f"{key}: {source!r} is not available ({str(exc).splitlines()[0]}); set it to a local "
                          "folder, or models.full.controlnet.local_files_only: false to allow downloading it; "
                          "castlab never falls back to random weights") from exc
    check_controlnet(model, pipe, source)
    return model.to(pipe.unet.device), f"controlnet-{name.replace('/', '--')}"


def check_controlnet(model: Any, pipe: Any, name: str) -> None:
    """InputError naming `name` when the ControlNet was made for another base family than `pipe`'s (its
    cross-attention width or its added conditioning differ from the UNet's)."""
    unet = pipe.unet.config
    same = (model.config.cross_attention_dim == unet.cross_attention_dim
            and model.config.addition_embed_type == unet.addition_embed_type)
    if not same:
        family = pipeline_family(pipe)
        raise InputError(Path(name), f"is a ControlNet for another base family (cross-attention width "
                                     f"{model.config.cross_attention_dim}); the base model is {family} "
                                     f"({unet.cross_attention_dim})")


def load_controlnet(cfg: Config, kind: str, pipe: Any) -> tuple[Any, str]:
    """(ControlNetModel, model version) of `kind` for the base pipeline `pipe`."""
    if kind not in KINDS:
        raise InputError(kind, f"is not a ControlNet kind; known: {', '.join(KINDS)}")
    return _tiny(cfg, kind, pipe) if cfg.profile == "tiny" else _full(cfg, kind, pipe)
