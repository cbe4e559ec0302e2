"""Registered LoRAs composed on one base model: resolved by name from the registry (``<workspace>/loras.yaml``),
checked (file present, made for this base model's family, no two sharing a trigger), loaded as diffusers adapters
with their weights, and their triggers put into every prompt that lacks them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from castlab.errors import InputError


@dataclass(frozen=True)
class LoraUse:
    """One registered LoRA at a weight."""

    name: str
    weight: float
    entry: dict[str, Any]

    @property
    def adapter(self) -> str:
        return re.sub(r"[^A-Za-z0-9_]", "_", self.name)

    @property
    def class_tokens(self) -> str:
        return f"{self.entry['trigger']} {self.entry['class_word']}".strip()


def parse_lora_args(values: list[str]) -> list[tuple[str, float]]:
    """``NAME`` or ``NAME:WEIGHT`` (default 1.0) → (name, weight); InputError naming a bad weight."""
    out = []
    for value in values:
        name, _, weight = value.partition(":")
        try:
            out.append((name.strip(), float(weight) if weight else 1.0))
        except ValueError:
            raise InputError(value, f"LoRA weight {weight!r} is not a number (use NAME:WEIGHT, e.g. bo:0.8)") from None
    return out


def resolve_loras(wanted: list[tuple[str, float]], registry: dict[str, dict[str, Any]], arch: str
                  ) -> list[LoraUse]:
    """The registry entries of `wanted` (name, weight); InputError for an unknown name (listing the known), a
    missing file, a LoRA made for another family (SD1.x / SDXL) than `arch`, or two LoRAs with one trigger."""
    check_names(wanted, registry)
    uses: list[LoraUse] = []
    for name, weight in wanted:
        entry = registry[name]
        if not Path(entry["file"]).is_file():
            raise InputError(entry["file"], f"LoRA file of registry entry {name!r} is missing")
        if entry["arch"] != arch:
            raise InputError(entry["file"], f"LoRA {name!r} was trained for {entry['arch']}, the base model is {arch}")
        uses.append(LoraUse(name, weight, entry))
    triggers: dict[str, str] = {}
    for use in uses:
        other = triggers.setdefault(use.entry["trigger"].lower(), use.name)
        if other != use.name:
            raise InputError(use.name, f"has the trigger {use.entry['trigger']!r} of {other!r}: one prompt cannot "
                                       "address both")
    return uses


def check_names(wanted: list[tuple[str, float]], registry: dict[str, dict[str, Any]]) -> None:
    """InputError for the first name of `wanted` the registry does not hold, listing the names it does."""
    for name, _ in wanted:
        if name not in registry:
            raise InputError(name, f"is not a registered LoRA; known: {', '.join(sorted(registry)) or 'none'} "
                                   "(`castlab loras list`)")


def other_bases(uses: list[LoraUse], base_version: str) -> list[str]:
    """Notes for the LoRAs trained on another checkpoint of the same family than the loaded one (they usually
    carry over between fine-tunes of one family; the report says so)."""
    return [f"{u.name} was trained on {u.entry['base_model']}, generating on {base_version}"
            for u in uses if u.entry["base_model"] != base_version]


def with_triggers(prompt: str, uses: list[LoraUse]) -> str:
    """`prompt` with ``<trigger> <class word>`` of every LoRA (weight ≠ 0) whose trigger it lacks put in front,
    in the order given."""
    missing = [u.class_tokens for u in uses if u.weight != 0 and not re.search(
        rf"\b{re.escape(u.entry['trigger'])}\b", prompt, re.IGNORECASE)]
    return ", ".join([*missing, prompt]) if missing else prompt


def apply_loras(pipe: Any, uses: list[LoraUse]) -> list[str]:
    """Load every LoRA as an adapter of `pipe` (unloading earlier ones) and set their weights; the adapter names."""
    from castlab.models.kohya import load_lora_into_pipeline

    pipe.unload_lora_weights()
    names = [load_lora_into_pipeline(pipe, Path(u.entry["file"]), u.adapter) for u in uses]
    if names:
        pipe.set_adapters(names, adapter_weights=[u.weight for u in uses])
    return names
