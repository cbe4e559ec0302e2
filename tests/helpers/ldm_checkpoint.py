"""Write a diffusers Stable Diffusion pipeline as one single-file checkpoint in the original key layout.

The layout is CompVis LDM's (SD1.x: ``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``) and Stability's SGM one for SDXL (same UNet/VAE names,
``conditioner.embedders.0.transformer.*`` for CLIP-L and ``conditioner.embedders.1.model.*`` for the open_clip
bigG encoder): what ``v1-5-pruned-emaonly.safetensors`` / ``sd_xl_base_1.0.safetensors`` hold and what diffusers'
``loaders/single_file_utils.py`` converts from. The tables below are written for castlab's tests from that layout;
block indices are derived from the UNet config, so any ``layers_per_block`` / block count / attention placement
works.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIXES = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")

# diffusers UNet top-level module → LDM module
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# diffusers ResnetBlock2D child → LDM ResBlock child (UNet)
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# diffusers VAE top-level module → LDM module (per encoder/decoder side, plus the two quant convs)
_VAE_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
# diffusers VAE mid attention child → LDM AttnBlock child (q/k/v/proj_out are 1x1 convs there)
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_CONV_ATTENTION = {"q", "k", "v", "proj_out"}
# transformers CLIP encoder layer child → open_clip resblock child (q/k/v are fused into in_proj)
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}
_OPEN_CLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                  "embeddings.position_embedding.weight": "positional_embedding",
                  "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}

_PARAM = re.compile(r"(.+)\.(weight|bias)")
_BLOCK = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_VAE_BLOCK = re.compile(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)")
_VAE_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_CLIP_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")


def _split(key: str) -> tuple[str, str]:
    if not (m := _PARAM.fullmatch(key)):
        raise ValueError(f"{key!r} is not a <module>.weight / <module>.bias tensor")
    return m[1], m[2]


def _unet_resnet(child: str, key: str) -> str:
    if child not in _UNET_RESNET:
        raise ValueError(f"UNet tensor {key!r}: no LDM name for resnet module {child!r}")
    return _UNET_RESNET[child]


def unet_ldm_key(key: str, config: Mapping[str, Any]) -> str:
    """The LDM name (without ``model.diffusion_model.``) of diffusers UNet tensor `key` for UNet `config`."""
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ValueError(f"LDM block indices need an int layers_per_block, the UNet config has {per_block!r}")
    module, param = _split(key)
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{param}"
    if m := _BLOCK.fullmatch(module):
        side, i, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if side == "down":
            slots = per_block + 1  # the resnets (each with its attention) then the downsampler
            if kind == "downsamplers":
                if j or rest != "conv":
                    raise ValueError(f"UNet tensor {key!r}: unexpected downsampler module")
                return f"input_blocks.{(i + 1) * slots}.0.op.{param}"
            index = 1 + i * slots + j
        else:
            slots = per_block + 1  # up blocks have one resnet more; the upsampler shares the last slot
            if kind == "upsamplers":
                if j or rest != "conv":
                    raise ValueError(f"UNet tensor {key!r}: unexpected upsampler module")
                after = 2 if str(config["up_block_types"][i]).startswith("CrossAttn") else 1
                return f"output_blocks.{i * slots + per_block}.{after}.conv.{param}"
            index = i * slots + j
        blocks = "input_blocks" if side == "down" else "output_blocks"
        inner = f"0.{_unet_resnet(rest, key)}" if kind == "resnets" else f"1.{rest}"
        return f"{blocks}.{index}.{inner}.{param}"
    if m := _MID.fullmatch(module):
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_unet_resnet(rest, key)}.{param}"
        if j == 0:
            return f"middle_block.1.{rest}.{param}"
    raise ValueError(f"UNet tensor {key!r} has no LDM name")


def vae_ldm_key(key: str, num_blocks: int) -> str:
    """The LDM name (without ``first_stage_model.``) of diffusers AutoencoderKL tensor `key`."""
    module, param = _split(key)
    if module in ("quant_conv", "post_quant_conv"):
        return key
    side, _, rest = module.partition(".")
    if side in ("encoder", "decoder") and rest in _VAE_TOP:
        return f"{side}.{_VAE_TOP[rest]}.{param}"
    if m := _VAE_BLOCK.fullmatch(module):
        side, i, kind, j, rest = m[1], int(m[3]), m[4], int(m[5]), m[6]
        level = i if side == "encoder" else num_blocks - 1 - i  # LDM numbers decoder levels from the bottom
        stage = "down" if side == "encoder" else "up"
        if kind == "resnets":
            return f"{side}.{stage}.{level}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}.{param}"
        if j or rest != "conv":
            raise ValueError(f"VAE tensor {key!r}: unexpected resampler module")
        return f"{side}.{stage}.{level}.{'downsample' if side == 'encoder' else 'upsample'}.conv.{param}"
    if m := _VAE_MID.fullmatch(module):
        side, kind, j, rest = m[1], m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"{side}.mid.block_{j + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}.{param}"
        if j == 0 and rest in _VAE_ATTENTION:
            return f"{side}.mid.attn_1.{_VAE_ATTENTION[rest]}.{param}"
    raise ValueError(f"VAE tensor {key!r} has no LDM name")


def _vae_tensor(ldm_key: str, value: torch.Tensor) -> torch.Tensor:
    """LDM's AttnBlock projections are 1x1 convolutions: [out, in] → [out, in, 1, 1]."""
    module, param = _split(ldm_key)
    if param == "weight" and ".mid.attn_1." in module and module.rsplit(".", 1)[1] in _VAE_CONV_ATTENTION:
        return value.reshape(*value.shape, 1, 1)
    return value


def clip_ldm_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel's tensors under `prefix` in the HF layout the LDM files keep
    (``<prefix>text_model.encoder.layers...``), whether or not this transformers version flattens ``text_model``."""
    out = {}
    for key, value in state.items():
        if key == "text_projection.weight":
            raise ValueError("a projecting CLIP text encoder belongs in the open_clip layout (open_clip_ldm_state)")
        name = key if key.startswith("text_model.") else f"text_model.{key}"
        out[prefix + name] = value
    return out


def open_clip_ldm_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModelWithProjection's tensors in open_clip's layout under `prefix`: fused q/k/v
    ``attn.in_proj_*``, ``positional_embedding`` and a ``text_projection`` applied as ``x @ P`` (the transpose)."""
    flat = {k.removeprefix("text_model."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key in _OPEN_CLIP_TOP:
            out[prefix + _OPEN_CLIP_TOP[key]] = value
        elif (m := _CLIP_LAYER.fullmatch(key)) and m[2] in ("self_attn.q_proj", "self_attn.k_proj",
                                                            "self_attn.v_proj"):
            qkv.setdefault((m[1], m[3]), {})[m[2].removeprefix("self_attn.")[0]] = value
        elif m and m[2] in _OPEN_CLIP_LAYER:
            out[f"{prefix}transformer.resblocks.{m[1]}.{_OPEN_CLIP_LAYER[m[2]]}.{m[3]}"] = value
        else:
            raise ValueError(f"text encoder tensor {key!r} has no open_clip name")
    for (layer, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"text encoder layer {layer}: q/k/v {param}s incomplete ({sorted(parts)})")
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]])
    return out


def unet_ldm_state(unet: Any) -> dict[str, torch.Tensor]:
    """A diffusers UNet's tensors under their single-file names (``model.diffusion_model.*``)."""
    return {UNET_PREFIX + unet_ldm_key(k, unet.config): v for k, v in unet.state_dict().items()}


def vae_ldm_state(vae: Any) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL's tensors under their single-file names (``first_stage_model.*``)."""
    blocks = len(vae.config.down_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        ldm = vae_ldm_key(key, blocks)
        out[VAE_PREFIX + ldm] = _vae_tensor(ldm, value)
    return out


def ldm_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """Every UNet, VAE and text-encoder tensor of SD1.x/SDXL pipeline `pipe`, under its single-file name."""
    if getattr(pipe, "text_encoder_2", None) is None:
        texts = [clip_ldm_state(pipe.text_encoder.state_dict(), CLIP_PREFIX)]
    else:
        texts = [clip_ldm_state(pipe.text_encoder.state_dict(), SDXL_CLIP_PREFIXES[0]),
                 open_clip_ldm_state(pipe.text_encoder_2.state_dict(), SDXL_CLIP_PREFIXES[1])]
    out: dict[str, torch.Tensor] = {}
    for part in (unet_ldm_state(pipe.unet), vae_ldm_state(pipe.vae), *texts):
        for name, value in part.items():
            if name in out:
                raise ValueError(f"two tensors map to the single-file name {name!r}")
            out[name] = value.detach().to("cpu").contiguous()
    return out


def write_ldm_checkpoint(pipe: Any, path: Path) -> Path:
    """Save `pipe` (UNet, VAE, text encoder(s)) as the single ``.safetensors`` file at `path`."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a single-file checkpoint is written as .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(ldm_state_dict(pipe), str(path))
    return path
