"""kohya-format LoRA checkpoints: the key names sd-scripts' ``networks/lora.py`` writes, ``.alpha`` tensors, ``ss_*``
metadata.

sd-scripts names a LoRA module ``<prefix>_<module path with "." → "_">`` (``LoRANetwork.create_modules``), where the
path is the one in the model sd-scripts trains, which is not always diffusers' path:

- SD 1.x/2.x UNet: sd-scripts' own UNet (``library/original_unet.py``) uses diffusers' paths →
  ``lora_unet_down_blocks_0_attentions_0_proj_in``, ``lora_unet_down_blocks_0_resnets_0_conv1``.
- SDXL UNet: sd-scripts' ``SdxlUNet2DConditionModel`` uses the SGM (LDM) paths → ``lora_unet_input_blocks_4_1_proj_in``;
  a resnet's ``conv1``/``time_emb_proj``/``conv2``/``conv_shortcut`` are ``in_layers_2``/``emb_layers_1``/
  ``out_layers_3``/``skip_connection``, a downsampler is ``input_blocks_<n>_0_op``, an upsampler
  ``output_blocks_<n>_<1|2>_conv``. :func:`unet_lora_name` maps a diffusers path with the UNet's config.
- text encoders: ``lora_te_`` (one encoder) or ``lora_te1_``/``lora_te2_`` (SDXL) + the transformers-4 path
  ``text_model_encoder_layers_<i>_{self_attn_q_proj,...,mlp_fc2}``. transformers 5 dropped ``CLIPTextModel``'s
  ``text_model`` level; the name is the same either way.

diffusers' ``load_lora_weights`` (``_maybe_map_sgm_blocks_to_diffusers`` + ``_convert_non_diffusers_lora_to_diffusers``)
and ComfyUI (``comfy/lora.py`` ``model_lora_keys_unet``/``model_lora_keys_clip``) read these names for both families.

Tensors: ``lora_down.weight`` (PEFT ``lora_A``), ``lora_up.weight`` (``lora_B``) and a float32 scalar ``.alpha``
per module: ``conv_alpha`` for convolutions with a kernel other than 1x1, ``alpha`` otherwise (networks.lora's rule).
diffusers' ``convert_state_dict_to_kohya`` writes ``alpha = rank``, which reloads a LoRA trained with
``alpha != rank`` at the wrong scale, hence this codec. DoRA states are refused: neither networks.lora nor diffusers'
SD/SDXL loader reads ``dora_scale`` (diffusers drops those keys and would load the file as a plain LoRA).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from castlab.errors import InputError
from castlab.workspace import atomic_path

_DTYPES = {"float": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_PEFT_SUFFIXES = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
# diffusers ResnetBlock2D child → sd-scripts' SDXL ResnetBlock2D child (library/sdxl_original_unet.py)
_SGM_RESNET = {"conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "conv2": "out_layers.3",
               "conv_shortcut": "skip_connection"}
_BLOCK = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_DORA_ERROR = ("DoRA LoRAs cannot be saved in kohya format: sd-scripts' networks.lora has no DoRA and diffusers' "
               "SD/SDXL loader drops the dora_scale keys (the file would load as a different, plain LoRA)")


def is_sdxl_unet(unet_config: Mapping[str, Any] | None) -> bool:
    """True for an SDXL UNet config (``addition_embed_type = "text_time"``), which sd-scripts names in SGM form."""
    return unet_config is not None and unet_config.get("addition_embed_type") == "text_time"


def _sgm_path(path: str, config: Mapping[str, Any]) -> str:
    """diffusers SDXL UNet module path → sd-scripts' SGM path (``input_blocks.<n>.<k>...``)."""
    per_block = config.get("layers_per_block")
    if not isinstance(per_block, int):
        raise ValueError(f"SGM names need an int layers_per_block, the UNet config has {per_block!r}")
    per_block += 1  # SGM slots per diffusers block: the resnets (+ attentions) plus the down/upsampler

    def resnet(rest: str) -> str:
        child, _, tail = rest.partition(".")
        if child not in _SGM_RESNET or tail:
            raise ValueError(f"UNet module {path!r} has no SGM (sd-scripts SDXL) name")
        return _SGM_RESNET[child]

    if m := _BLOCK.fullmatch(path):
        side, i, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if kind in ("downsamplers", "upsamplers"):
            if rest != "conv" or j != 0:
                raise ValueError(f"UNet module {path!r} has no SGM (sd-scripts SDXL) name")
            if side == "down":
                return f"input_blocks.{(i + 1) * per_block}.0.op"
            if not str(config["up_block_types"][i]).startswith("CrossAttn"):
                # SGM would put it at index 1, which diffusers' loader reads as an attention block
                raise ValueError(f"UNet module {path!r}: an upsampler of an up block without attention has no SGM "
                                 "name that diffusers maps back")
            return f"output_blocks.{i * per_block + per_block - 1}.2.conv"
        inner = "0." + resnet(rest) if kind == "resnets" else "1." + rest
        index = 1 + i * per_block + j if side == "down" else i * per_block + j
        return f"{'input' if side == 'down' else 'output'}_blocks.{index}.{inner}"
    if m := _MID.fullmatch(path):
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"middle_block.{2 * j}.{resnet(rest)}"
        if j == 0:
            return f"middle_block.1.{rest}"
    raise ValueError(f"UNet module {path!r} has no SGM (sd-scripts SDXL) name")


def unet_lora_name(module_path: str, unet_config: Mapping[str, Any] | None = None) -> str:
    """sd-scripts' name of the LoRA on diffusers UNet module `module_path` (SGM form for an SDXL `unet_config`)."""
    path = _sgm_path(module_path, unet_config) if is_sdxl_unet(unet_config) else module_path
    return "lora_unet_" + path.replace(".", "_")


def text_encoder_lora_name(module_path: str, index: int = 0, count: int = 1) -> str:
    """sd-scripts' name of the LoRA on module `module_path` of text encoder `index` (0-based) of `count`."""
    path = module_path.removeprefix("text_model.")
    if not path.startswith("encoder.layers."):
        raise ValueError(f"text encoder module {module_path!r} is not one networks.lora targets "
                         "(CLIPAttention/CLIPMLP inside encoder.layers)")
    prefix = "lora_te" if count == 1 else f"lora_te{index + 1}"
    return f"{prefix}_text_model_{path.replace('.', '_')}"


def _split_peft_key(key: str) -> tuple[str, str]:
    """``<module>.lora_A.weight`` → (module, kohya tensor suffix); refuses DoRA and other PEFT tensors."""
    if "lora_magnitude_vector" in key:
        raise ValueError(_DORA_ERROR)
    for suffix, kohya in _PEFT_SUFFIXES.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], kohya
    raise ValueError(f"{key!r} is not a PEFT LoRA tensor (<module>.lora_A.weight / <module>.lora_B.weight)")


def _convert(
    state: Mapping[str, torch.Tensor], name_of: Any, alpha: float, conv_alpha: float | None, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, suffix = _split_peft_key(key)
        name = name_of(module)
        if f"{name}.{suffix}" in out:
            raise ValueError(f"two PEFT modules map to the kohya name {name!r}")
        out[f"{name}.{suffix}"] = value.detach().to("cpu", dtype).contiguous()
        if suffix == "lora_down.weight":
            kxk = value.dim() == 4 and tuple(value.shape[2:]) != (1, 1)
            if kxk and conv_alpha is None:
                raise ValueError(f"{module!r} is a {tuple(value.shape[2:])} convolution LoRA: pass conv_alpha")
            module_alpha = float(conv_alpha if kxk else alpha)
            if not module_alpha > 0:
                raise ValueError(f"LoRA alpha must be > 0 (kohya reads 0 as alpha = rank), got {module_alpha}")
            out[f"{name}.alpha"] = torch.tensor(module_alpha, dtype=torch.float32)
    downs = {k[: -len(".lora_down.weight")] for k in out if k.endswith(".lora_down.weight")}
    ups = {k[: -len(".lora_up.weight")] for k in out if k.endswith(".lora_up.weight")}
    if downs != ups:
        raise ValueError(f"LoRA state lacks lora_A or lora_B tensors for {sorted(downs ^ ups)[:3]}")
    return out


def to_kohya_state_dict(
    unet_lora_state: Mapping[str, torch.Tensor] | None,
    alpha: float,
    dtype: torch.dtype = torch.float32,
    *,
    text_encoder_states: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    conv_alpha: float | None = None,
    unet_config: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """PEFT LoRA states (``<module>.lora_A.weight`` keys of the UNet and of each text encoder, in pipeline order) →
    sd-scripts' kohya state dict; `unet_config` (the UNet's ``config``) selects SGM names for SDXL."""
    out = _convert(unet_lora_state or {}, lambda m: unet_lora_name(m, unet_config), alpha, conv_alpha, dtype)
    encoders = list(text_encoder_states or [])
    for index, state in enumerate(encoders):
        out.update(_convert(state or {}, lambda m, i=index: text_encoder_lora_name(m, i, len(encoders)),
                            alpha, conv_alpha, dtype))
    if not out:
        raise ValueError("LoRA state dicts are empty: nothing to save (are they PEFT LoRA state dicts?)")
    return out


def save_kohya_lora(
    unet_lora_state: Mapping[str, torch.Tensor] | None,
    path: Path,
    alpha: float,
    metadata: Mapping[str, Any],
    precision: str = "float",
    *,
    text_encoder_states: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    conv_alpha: float | None = None,
    unet_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a kohya-format ``.safetensors`` LoRA atomically (see :func:`to_kohya_state_dict`); metadata values are
    stored as strings; ``.alpha`` stays float32 whatever `precision`."""
    if precision not in _DTYPES:
        raise ValueError(f"save_precision must be one of {sorted(_DTYPES)}, got {precision!r}")
    state = to_kohya_state_dict(unet_lora_state, alpha, _DTYPES[precision], text_encoder_states=text_encoder_states,
                                conv_alpha=conv_alpha, unet_config=unet_config)
    with atomic_path(Path(path)) as tmp:
        save_file(state, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    return Path(path)


def read_kohya_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a LoRA checkpoint (InputError when the file is not a safetensors kohya LoRA)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "LoRA checkpoint does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
            metadata = dict(fh.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise InputError(path, f"is not a readable safetensors file ({exc})") from exc
    if not any(k.startswith(_KOHYA_PREFIXES) for k in keys):
        raise InputError(path, "is not a kohya-format LoRA (no lora_unet_ or lora_te keys)")
    return metadata


def read_kohya_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a kohya LoRA checkpoint."""
    metadata = read_kohya_metadata(path)
    return load_file(str(path)), metadata


def load_lora_into_pipeline(pipe: Any, path: Path, adapter_name: str | None = None) -> str:
    """Load a kohya LoRA into a diffusers SD/SDXL pipeline (``pipe.load_lora_weights``); returns the adapter name.

    Remove it again with ``pipe.unload_lora_weights()``.
    """
    read_kohya_metadata(path)  # clear error for a missing or foreign file
    from diffusers.utils import logging as dlogging

    name = adapter_name or Path(path).stem.replace(".", "_")
    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity(logging.ERROR)  # "no LoRA keys for the text encoder" is expected: UNet-only LoRA
    try:
        pipe.load_lora_weights(str(path), adapter_name=name)
    finally:
        dlogging.set_verbosity(verbosity)
    return name
