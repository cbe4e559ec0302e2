"""Render the prompt suite for one model state (base, or a LoRA at a weight): batched, seeded, resumable.

Every image of a (prompt, seed) is the same whether it is rendered alone or in a batch: each one's starting noise
comes from its own CPU generator seeded with its seed. A folder remembers what it was rendered with
(``render.json``); an interrupted evaluation reuses the images already written under the same settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from castlab.evaluate.suite import PromptSpec
from castlab.models.diffusion import prompt_conditioning
from castlab.pictures import save_png
from castlab.workspace import write_json_atomic

STAMP = "render.json"


@dataclass(frozen=True)
class RenderSettings:
    seeds: tuple[int, ...]
    steps: int
    guidance_scale: float
    width: int
    height: int
    batch_size: int
    clip_skip: int
    negative_prompt: str = ""

    def key(self, extra: dict[str, Any]) -> str:
        """A digest of everything that decides the pixels (batch size does not)."""
        settings = {k: v for k, v in asdict(self).items() if k != "batch_size"}
        return hashlib.sha1(json.dumps([settings, extra], sort_keys=True, default=str).encode()).hexdigest()[:16]


def image_name(prompt_id: str, seed: int) -> str:
    return f"{prompt_id.replace('/', '_')}_s{seed}.png"


def _stamp_ok(folder: Path, key: str) -> bool:
    try:
        return json.loads((folder / STAMP).read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError):
        return False


@torch.no_grad()
def render_suite(pipe: Any, specs: list[PromptSpec], settings: RenderSettings, folder: Path, key_extra: dict[str, Any],
                 progress: tqdm | None = None) -> list[dict[str, Any]]:
    """Images of every (prompt, seed) under `folder` (kept from an interrupted run when rendered with the same
    settings, model and LoRA); one record per image: family, prompt_id, prompt, scoring_prompt, seed, path."""
    key = settings.key(key_extra)
    folder.mkdir(parents=True, exist_ok=True)
    reuse = _stamp_ok(folder, key)
    if not reuse:
        for old in folder.glob("*.png"):
            old.unlink()
        write_json_atomic(folder / STAMP, {"key": key, "settings": asdict(settings), **key_extra})
    records = []
    for spec in specs:
        paths = {seed: folder / image_name(spec.prompt_id, seed) for seed in settings.seeds}
        todo = [seed for seed in settings.seeds if not (reuse and paths[seed].is_file())]
        if progress is not None:
            progress.update(len(settings.seeds) - len(todo))
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start:start + settings.batch_size]
            conditioning = prompt_conditioning(pipe, [spec.prompt] * len(batch),
                                               [settings.negative_prompt] * len(batch), settings.clip_skip)
            images = pipe(**conditioning, width=settings.width, height=settings.height,
                          num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                          generator=[torch.Generator(device="cpu").manual_seed(int(s)) for s in batch]).images
            for seed, image in zip(batch, images, strict=True):
                save_png(image, paths[seed])
            if progress is not None:
                progress.update(len(batch))
        records += [{**spec.to_dict(), "seed": seed, "path": paths[seed]} for seed in settings.seeds]
    return records
