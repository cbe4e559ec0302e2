"""kohya-format LoRA checkpoints (``lora_unet_*`` keys + ``.alpha`` tensors + ``ss_*`` metadata).

diffusers' ``convert_state_dict_to_kohya`` writes ``alpha = rank``; a LoRA trained with
``lora_alpha != r`` would reload with the wrong scale, so the real alpha tensors are written here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from castlab.errors import InputError
from castlab.workspace import atomic_path

_DTYPES = {"float": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def to_kohya_state_dict(
    unet_lora_state: dict[str, torch.Tensor], alpha: float, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """PEFT UNet LoRA state (``...to_q.lora_A.weight`` keys) → kohya keys with ``.alpha`` = `alpha`."""
    from diffusers.utils import convert_state_dict_to_kohya

    state = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in unet_lora_state.items()})
    out = {}
    for key, value in state.items():
        if key.endswith(".alpha"):
            out[key] = torch.tensor(float(alpha), dtype=torch.float32)
        else:
            out[key] = value.detach().to("cpu", dtype).contiguous()
    if not any(k.startswith("lora_unet_") for k in out):
        raise ValueError("LoRA state dict produced no lora_unet_ keys (is it a PEFT UNet LoRA state dict?)")
    return out


def save_kohya_lora(
    unet_lora_state: dict[str, torch.Tensor],
    path: Path,
    alpha: float,
    metadata: dict[str, Any],
    precision: str = "float",
) -> Path:
    """Write a kohya-format ``.safetensors`` LoRA atomically; metadata values are stored as strings."""
    if precision not in _DTYPES:
        raise ValueError(f"save_precision must be one of {sorted(_DTYPES)}, got {precision!r}")
    state = to_kohya_state_dict(unet_lora_state, alpha, _DTYPES[precision])
    with atomic_path(Path(path)) as tmp:
        save_file(state, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    return Path(path)


def read_kohya_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a LoRA checkpoint (InputError when the file is not a safetensors LoRA)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "LoRA checkpoint does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
            metadata = dict(fh.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise InputError(path, f"is not a readable safetensors file ({exc})") from exc
    if not any(k.startswith("lora_unet_") for k in keys):
        raise InputError(path, "is not a kohya-format UNet LoRA (no lora_unet_ keys)")
    return metadata


def read_kohya_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a kohya LoRA checkpoint."""
    metadata = read_kohya_metadata(path)
    return load_file(str(path)), metadata


def load_lora_into_pipeline(pipe: Any, path: Path, adapter_name: str | None = None) -> str:
    """Load a kohya LoRA into a diffusers SD pipeline (``pipe.load_lora_weights``); returns the adapter name.

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
