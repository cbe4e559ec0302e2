"""The LoRA network of castlab's trainer: sd-scripts' ``networks.lora`` module set, as PEFT adapters.

sd-scripts references: ``networks/lora.py`` (``create_network``, ``LoRANetwork.create_modules``, ``LoRAModule``,
``prepare_optimizer_params``) and ``train_network.py`` (``network_args`` parsing, ``text_encoder_lr`` handling,
``network_train_unet_only`` / ``network_train_text_encoder_only``).

Module set (``LoRANetwork.create_modules``): every ``Linear`` and every 1x1 ``Conv2d`` inside a ``Transformer2DModel``
(attn1/attn2 ``to_q/to_k/to_v/to_out.0``, ``proj_in``, ``proj_out``, ``ff.net.0.proj``, ``ff.net.2``: 192 modules on
SD1.5, 722 on SDXL); with ``conv_dim`` also everything inside ``ResnetBlock2D``/``Downsample2D``/``Upsample2D``: the
Linear/1x1 ones (``time_emb_proj``, ``conv_shortcut``) at ``network_dim``, the 3x3 convolutions at ``conv_dim``
(skipped when it is 0). Text encoders: every ``Linear`` inside ``CLIPAttention``/``CLIPMLP`` (q/k/v/out_proj,
fc1/fc2). Rank ``network_dim`` (default 4), alpha ``network_alpha`` (default 1; 0 means alpha = rank);
``conv_alpha`` defaults to 1 when ``conv_dim`` is set. PEFT's default init is sd-scripts' (``lora_A`` kaiming
uniform with a = sqrt(5), ``lora_B`` zeros); ``network_dropout``/``rank_dropout``/``module_dropout`` act on the
``lora_A`` output as in ``LoRAModule.forward``.

castlab differs where sd-scripts would silently ignore a setting: unknown ``network_args`` keys, ``conv_alpha``
without ``conv_dim``, both ``network_train_*_only`` flags, and block-wise or DoRA arguments are errors.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

NETWORK_MODULE = "networks.lora"
ADAPTER = "default"  # the PEFT adapter name
UNET_BLOCKS = ("Transformer2DModel",)
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")
DEFAULT_DIM, DEFAULT_ALPHA, DEFAULT_CONV_ALPHA, DEFAULT_LEARNING_RATE = 4, 1.0, 1.0, 2e-6  # sd-scripts' defaults
NETWORK_ARGS = ("conv_dim", "conv_alpha", "rank_dropout", "module_dropout", "loraplus_lr_ratio",
                "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
_BLOCKWISE = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
              "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold")
_DORA = ("dora_wd", "use_dora")


def _number(key: str, value: Any, *, minimum: float = 0.0, below: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if value < minimum or (below is not None and value >= below):
        bound = f"in [{minimum}, {below})" if below is not None else f">= {minimum}"
        raise ValueError(f"{key} must be {bound}, got {value!r}")
    return float(value)


def _integer(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _arg_number(args: Mapping[str, str], key: str, **bounds: Any) -> float | None:
    """A ``network_args`` value (a string) as a number, None when absent."""
    if key not in args:
        return None
    try:
        value = float(args[key])
    except ValueError:
        raise ValueError(f"network_args {key} must be a number, got {args[key]!r}") from None
    return _number(f"network_args {key}", value, **bounds)


def _flag(flat: Mapping[str, Any], key: str) -> bool:
    value = flat.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _optional(flat: Mapping[str, Any], key: str, **bounds: Any) -> float | None:
    return None if flat.get(key) is None else _number(key, flat[key], **bounds)


def parse_network_args(values: Any) -> dict[str, str]:
    """sd-scripts' ``network_args`` (a list of ``"key=value"`` strings, split at the first ``=``) → dict."""
    if values is None:
        return {}
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise ValueError(f"network_args must be a list of \"key=value\" strings, got {values!r}")
    out: dict[str, str] = {}
    for item in values:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"network_args entries must be \"key=value\" strings, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        if key in _DORA:
            raise ValueError(f"network_args {key}: DoRA is not supported — sd-scripts' networks.lora has no DoRA "
                             "and diffusers' SD/SDXL loader drops dora_scale keys, so the LoRA would not reload")
        if key in _BLOCKWISE:
            raise ValueError(f"network_args {key}: block-wise dims/alphas/learning rates are not supported by "
                             f"castlab's trainer (supported: {', '.join(NETWORK_ARGS)})")
        if key not in NETWORK_ARGS:
            raise ValueError(f"network_args {key!r} is not a networks.lora argument castlab supports "
                             f"(supported: {', '.join(NETWORK_ARGS)})")
        if key in out:
            raise ValueError(f"network_args {key!r} is given twice")
        out[key] = value
    return out


def _text_encoder_lr(value: Any) -> float | None:
    """sd-scripts with networks.lora: a number, or a list whose first value applies to every text encoder."""
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        lrs = [_number("text_encoder_lr", v) for v in value]
        if any(lr != lrs[0] for lr in lrs[1:]):
            logger.warning("text_encoder_lr %s: networks.lora uses the first value (%s) for every text encoder",
                           lrs, lrs[0])
        return lrs[0]
    return None if value is None else _number("text_encoder_lr", value)


@dataclass(frozen=True)
class NetworkSettings:
    """The network keys of a flattened kohya training TOML, with sd-scripts' defaults and meanings."""

    network_dim: int = DEFAULT_DIM
    network_alpha: float = DEFAULT_ALPHA  # as given; 0 means alpha = rank (see ``alpha``)
    conv_dim: int | None = None  # set (even 0): ResnetBlock2D/Downsample2D/Upsample2D modules join the network
    conv_alpha: float | None = None  # DEFAULT_CONV_ALPHA when conv_dim is set and conv_alpha is not
    network_dropout: float | None = None
    rank_dropout: float | None = None
    module_dropout: float | None = None
    loraplus_unet_lr_ratio: float | None = None
    loraplus_text_encoder_lr_ratio: float | None = None
    train_unet: bool = True
    train_text_encoder: bool = True
    learning_rate: float = DEFAULT_LEARNING_RATE
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    network_args: dict[str, str] = field(default_factory=dict)  # as parsed, for ss_network_args

    def __post_init__(self) -> None:
        _integer("network_dim", self.network_dim, 1)
        _number("network_alpha", self.network_alpha)
        if self.conv_dim is not None:
            _integer("conv_dim", self.conv_dim, 0)
        if self.conv_alpha is not None and self.conv_dim is None:
            raise ValueError("network_args conv_alpha needs conv_dim (networks.lora ignores it otherwise)")
        for key in ("network_dropout", "rank_dropout", "module_dropout"):
            if getattr(self, key) is not None:
                _number(key, getattr(self, key), below=1.0)
        if not (self.train_unet or self.train_text_encoder):
            raise ValueError("network_train_unet_only and network_train_text_encoder_only exclude each other")

    @classmethod
    def from_toml(cls, flat: Mapping[str, Any]) -> NetworkSettings:
        """Settings from the flattened training TOML (sd-scripts' argparse names)."""
        module = flat.get("network_module")
        if module != NETWORK_MODULE:
            raise ValueError(f"network_module must be {NETWORK_MODULE!r} (the only network castlab trains), "
                             f"got {module!r}")
        args = parse_network_args(flat.get("network_args"))
        conv_dim = None
        if "conv_dim" in args:
            if not re.fullmatch(r"\d+", args["conv_dim"]):
                raise ValueError(f"network_args conv_dim must be an integer >= 0, got {args['conv_dim']!r}")
            conv_dim = int(args["conv_dim"])
        conv_alpha = _arg_number(args, "conv_alpha")
        if conv_dim is not None and conv_alpha is None:
            conv_alpha = DEFAULT_CONV_ALPHA
        ratio = _arg_number(args, "loraplus_lr_ratio")
        unet_ratio, te_ratio = (_arg_number(args, f"loraplus_{part}_lr_ratio") for part in ("unet", "text_encoder"))
        dim = flat.get("network_dim")
        alpha = flat.get("network_alpha")
        return cls(
            network_dim=DEFAULT_DIM if dim is None else _integer("network_dim", dim, 1),
            network_alpha=DEFAULT_ALPHA if alpha is None else _number("network_alpha", alpha),
            conv_dim=conv_dim,
            conv_alpha=conv_alpha,
            network_dropout=_optional(flat, "network_dropout", below=1.0),
            rank_dropout=_arg_number(args, "rank_dropout", below=1.0),
            module_dropout=_arg_number(args, "module_dropout", below=1.0),
            loraplus_unet_lr_ratio=ratio if unet_ratio is None else unet_ratio,
            loraplus_text_encoder_lr_ratio=ratio if te_ratio is None else te_ratio,
            train_unet=not _flag(flat, "network_train_text_encoder_only"),
            train_text_encoder=not _flag(flat, "network_train_unet_only"),
            learning_rate=(DEFAULT_LEARNING_RATE if flat.get("learning_rate") is None
                           else _number("learning_rate", flat["learning_rate"])),
            unet_lr=_optional(flat, "unet_lr"),
            text_encoder_lr=_text_encoder_lr(flat.get("text_encoder_lr")),
            network_args=args,
        )

    @property
    def alpha(self) -> float:
        """The alpha written to ``.alpha`` (networks.lora: 0 → rank)."""
        return self.network_alpha or float(self.network_dim)

    @property
    def conv_alpha_value(self) -> float | None:
        """The alpha of 3x3 convolution modules (networks.lora: unset → 1, 0 → conv_dim), None without conv_dim."""
        if self.conv_dim is None:
            return None
        return DEFAULT_CONV_ALPHA if self.conv_alpha is None else (self.conv_alpha or float(self.conv_dim))

    def metadata(self) -> dict[str, Any]:
        """sd-scripts' ``ss_network_*`` metadata (train_network.py)."""
        meta: dict[str, Any] = {"ss_network_module": NETWORK_MODULE, "ss_network_dim": self.network_dim,
                                "ss_network_alpha": self.network_alpha, "ss_network_dropout": self.network_dropout}
        if self.network_args:  # sd-scripts adds "dropout" to the network kwargs (its LyCORIS workaround)
            meta["ss_network_args"] = json.dumps({**self.network_args, "dropout": self.network_dropout})
        return meta


# ------------------------------------------------------------------------------------------------- module sets


def _refuse_adapters(model: nn.Module) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} already has LoRA adapters: pass the base model")


def _modules_in(root: nn.Module, blocks: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """(path, module) of every Linear/Conv2d inside a module whose class name is in `blocks`, sd-scripts' order."""
    blocks = set(blocks)
    found: dict[str, nn.Module] = {}
    for name, block in root.named_modules():
        if type(block).__name__ in blocks:
            for child_name, child in block.named_modules():
                if isinstance(child, (nn.Linear, nn.Conv2d)):
                    found.setdefault(f"{name}.{child_name}" if name else child_name, child)
    return list(found.items())


def _is_kxk(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) != (1, 1)


def _unet_modules(unet: nn.Module, conv_dim: int | None) -> tuple[list[str], list[str]]:
    """(network_dim modules, conv_dim modules) of networks.lora on a diffusers UNet."""
    _refuse_adapters(unet)
    plain = [n for n, m in _modules_in(unet, UNET_BLOCKS) if not _is_kxk(m)]  # a kxk conv needs conv_dim
    if not plain:
        raise ValueError(f"{type(unet).__name__} has no Transformer2DModel blocks: not an SD/SDXL UNet")
    conv: list[str] = []
    if conv_dim is not None:
        kxk = [n for n, m in _modules_in(unet, UNET_BLOCKS + UNET_CONV_BLOCKS) if _is_kxk(m)]
        plain += [n for n, m in _modules_in(unet, UNET_CONV_BLOCKS) if not _is_kxk(m) and n not in plain]
        conv = kxk if conv_dim > 0 else []
    return plain, conv


def unet_target_modules(unet: nn.Module, conv_dim: int | None = None) -> list[str]:
    """Paths of the UNet modules networks.lora puts a LoRA on (diffusers UNet2DConditionModel, SD1.x/2.x/SDXL)."""
    plain, conv = _unet_modules(unet, conv_dim)
    return plain + conv


def unet_conv_modules(unet: nn.Module, conv_dim: int | None) -> list[str]:
    """The subset of :func:`unet_target_modules` that gets ``conv_dim``/``conv_alpha`` (3x3 convolutions)."""
    return _unet_modules(unet, conv_dim)[1]


def text_encoder_target_modules(text_encoder: nn.Module) -> list[str]:
    """Paths of the CLIP text-encoder Linear modules networks.lora targets (self_attn q/k/v/out_proj, mlp fc1/fc2)."""
    _refuse_adapters(text_encoder)
    names = [n for n, m in _modules_in(text_encoder, TEXT_ENCODER_BLOCKS) if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(text_encoder).__name__} has no CLIPAttention/CLIPMLP blocks: not a CLIP text encoder")
    return names


# ------------------------------------------------------------------------------------------------ attach + groups


def _dropout_hook(neuron: float | None, rank: float | None, module: float | None) -> Callable[..., torch.Tensor]:
    """LoRAModule.forward's dropouts, applied to the ``lora_A`` output (its ``lx``) while training."""

    def hook(layer: nn.Module, _inputs: Any, lx: torch.Tensor) -> torch.Tensor:
        if not layer.training:
            return lx
        if module and torch.rand(1) < module:  # skip the whole LoRA: lora_B(0) = 0
            return torch.zeros_like(lx)
        if neuron:
            lx = F.dropout(lx, p=neuron)
        if rank:
            mask = (torch.rand(lx.shape[0], lx.shape[1] if lx.dim() == 4 else lx.shape[-1], device=lx.device)
                    > rank).to(lx.dtype)
            if lx.dim() == 3:
                mask = mask.unsqueeze(1)
            elif lx.dim() == 4:
                mask = mask[..., None, None]
            lx = lx * mask / (1.0 - rank)  # sd-scripts scales the LoRA by 1 / (1 - rank_dropout)
        return lx

    return hook


def _attach(model: nn.Module, targets: list[str], conv: list[str], settings: NetworkSettings, is_unet: bool) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    conv_alpha = settings.conv_alpha_value
    config = LoraConfig(
        r=settings.network_dim, lora_alpha=settings.alpha, target_modules=targets, lora_dropout=0.0,
        init_lora_weights=True, rank_pattern={re.escape(n): settings.conv_dim for n in conv},
        alpha_pattern={re.escape(n): conv_alpha for n in conv},
    )
    if is_unet:
        model.add_adapter(config)  # diffusers' PEFT integration: unet.disable_adapters() etc. keep working
    else:  # transformers' add_adapter wants a newer PEFT than diffusers; the layers are the same
        inject_adapter_in_model(config, model, ADAPTER)
    if settings.network_dropout or settings.rank_dropout or settings.module_dropout:
        hook = _dropout_hook(settings.network_dropout, settings.rank_dropout, settings.module_dropout)
        for name, module in model.named_modules():
            if name.endswith(f".lora_A.{ADAPTER}"):
                module.register_forward_hook(hook)


def _groups(models: list[nn.Module], lr: float, ratio: float | None, label: str) -> list[tuple[dict, str]]:
    """sd-scripts' ``assemble_params``: one group, or two with LoRA+ (``lora_B`` at lr * ratio)."""
    lora = [(n, p) for m in models for n, p in m.named_parameters() if ".lora_A." in n or ".lora_B." in n]
    parts = {"": [p for n, p in lora if ratio is None or ".lora_B." not in n],
             "plus": [p for n, p in lora if ratio is not None and ".lora_B." in n]}
    out = []
    for part, params in parts.items():
        if not params:
            continue
        group_lr = lr * ratio if part == "plus" else lr
        if group_lr == 0:  # sd-scripts leaves a group with lr 0 out of the optimizer
            for p in params:
                p.requires_grad_(False)
            continue
        out.append(({"params": params, "lr": group_lr}, f"{label} {part}".strip()))
    return out


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of `model` in PEFT's saved form (``<module>.lora_A.weight``), what ``save_kohya_lora`` takes."""
    tag = f".{ADAPTER}."
    return {k.replace(tag, "."): v for k, v in model.state_dict().items()
            if (".lora_A" + tag in k or ".lora_B" + tag in k)}


def set_lora_enabled(models: Iterable[nn.Module], enabled: bool) -> None:
    """Switch the LoRA layers of `models` on or off (off: the base models' outputs, e.g. for a prior prediction)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for model in models:
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(enabled)


def add_lora(unet: nn.Module, text_encoders: list[nn.Module], settings: NetworkSettings, seed: int) -> dict[str, Any]:
    """Freeze the models and attach networks.lora's LoRA (PEFT adapter ``default``) to the UNet and text encoders
    (as the settings say). The LoRA init draws from torch's CPU RNG seeded with `seed` (the UNet) and `seed + 1 + i`
    (text encoder i), so each model's init does not depend on the others; the global RNG state is left as it was.

    Returns ``param_groups`` (optimizer groups with ``lr``: text encoders first, then the UNet, as sd-scripts),
    ``lr_descriptions`` (sd-scripts' "textencoder"/"unet"[" plus"]), ``unet_modules`` and ``text_encoder_modules``
    (one list per encoder; empty when not trained).
    """
    te_lr = settings.learning_rate if settings.text_encoder_lr is None else settings.text_encoder_lr
    unet_lr = settings.learning_rate if settings.unet_lr is None else settings.unet_lr
    if not ((settings.train_text_encoder and text_encoders and te_lr) or (settings.train_unet and unet_lr)):
        raise ValueError("every LoRA parameter group has learning rate 0: nothing to train "
                         "(learning_rate / unet_lr / text_encoder_lr)")
    for model in (unet, *text_encoders):
        model.requires_grad_(False)
    unet_modules: list[str] = []
    te_modules: list[list[str]] = [[] for _ in text_encoders]
    if settings.train_text_encoder:
        for i, encoder in enumerate(text_encoders):
            te_modules[i] = text_encoder_target_modules(encoder)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1 + i)
                _attach(encoder, te_modules[i], [], settings, is_unet=False)
    if settings.train_unet:
        plain, conv = _unet_modules(unet, settings.conv_dim)
        unet_modules = plain + conv
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _attach(unet, unet_modules, conv, settings, is_unet=True)
    groups: list[tuple[dict, str]] = []
    if settings.train_text_encoder and text_encoders:
        groups += _groups(text_encoders, te_lr, settings.loraplus_text_encoder_lr_ratio, "textencoder")
    if settings.train_unet:
        groups += _groups([unet], unet_lr, settings.loraplus_unet_lr_ratio, "unet")
    return {"param_groups": [g for g, _ in groups], "lr_descriptions": [d for _, d in groups],
            "unet_modules": unet_modules, "text_encoder_modules": te_modules}
