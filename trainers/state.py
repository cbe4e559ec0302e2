"""Training state for exact resume: LoRA weights, optimizer, scheduler, scaler and the data position.

Every random draw of the loop is a function of (seed, epoch, batch, step), so the state needs no RNG snapshot:
a run resumed from ``<name>-step00000004-state/`` (or an epoch state) replays exactly what the uninterrupted run
would have done. Weights go to safetensors, the rest to a ``torch.save`` file loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from castlab.errors import InputError
from castlab.workspace import write_json_atomic

STATE_FORMAT = "castlab-train-state/1"


@dataclass
class Position:
    """Where the loop is: optimizer steps done, the epoch being trained (1-based) and the next batch in it."""

    step: int = 0
    epoch: int = 1
    batch: int = 0


def trainable_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Every trainable parameter (the LoRA weights), keyed ``<module>.<parameter name>``."""
    return {f"{name}.{key}": p.detach().cpu().contiguous() for name, module in modules.items()
            for key, p in module.named_parameters() if p.requires_grad}


def save_state(folder: Path, modules: dict[str, torch.nn.Module], optimizer: Any, scheduler: Any, scaler: Any,
               position: Position, fingerprint: str) -> Path:
    """Write the state into `folder` (replaced whole: a half-written state is never left behind)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(modules), str(tmp / "lora.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict()}, tmp / "optimizer.pt")
    write_json_atomic(tmp / "state.json", {"format": STATE_FORMAT, "position": asdict(position),
                                           "fingerprint": fingerprint})
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def load_state(folder: Path, modules: dict[str, torch.nn.Module], optimizer: Any, scheduler: Any, scaler: Any,
               fingerprint: str) -> Position:
    """Restore what :func:`save_state` wrote; InputError when it is missing, foreign or from other settings."""
    folder = Path(folder)
    meta_path = folder / "state.json"
    if not meta_path.is_file():
        raise InputError(folder, "is not a castlab training state (no state.json)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != STATE_FORMAT:
        raise InputError(folder, f"state format {meta.get('format')!r} is not {STATE_FORMAT}")
    if meta.get("fingerprint") != fingerprint:
        raise InputError(folder, "was saved by a run with other training settings or data (resume needs the same "
                                 "training.toml, dataset and base model)")
    weights = load_file(str(folder / "lora.safetensors"))
    expected = trainable_state(modules)
    if weights.keys() != expected.keys():
        raise InputError(folder, "its LoRA weights do not match this network (other network settings?)")
    params = {f"{name}.{key}": p for name, module in modules.items() for key, p in module.named_parameters()
              if p.requires_grad}
    with torch.no_grad():
        for key, value in weights.items():
            params[key].copy_(value.to(params[key].device, params[key].dtype))
    rest = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(rest["optimizer"])
    scheduler.load_state_dict(rest["scheduler"])
    scaler.load_state_dict(rest["scaler"])
    return Position(**meta["position"])
