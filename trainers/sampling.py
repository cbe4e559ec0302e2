"""Sample images during training, from a prompt file in sd-scripts' syntax.

A line ``a prompt --n negative --w 512 --h 512 --d 42 --s 20 --l 7.5`` gives prompt, negative prompt, width,
height, seed, steps and guidance scale (``--g`` is taken as the guidance scale too); lines starting with ``#`` and
empty lines are skipped. Images go to ``<output_dir>/sample/<name>_<step>_<index>.png`` with a grid per call.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from castlab.errors import InputError
from castlab.pictures import Grid, font, save_png, thumbnail

_OPTIONS = {"n": ("negative_prompt", str), "w": ("width", int), "h": ("height", int), "d": ("seed", int),
            "s": ("steps", int), "l": ("scale", float), "g": ("scale", float)}


def parse_prompt_line(line: str) -> dict[str, Any]:
    """One prompt line → {prompt, negative_prompt, width, height, seed, steps, scale} (only the keys given)."""
    parts = line.strip().split(" --")
    out: dict[str, Any] = {"prompt": parts[0].strip()}
    for part in parts[1:]:
        match = re.fullmatch(r"(\w+)\s+(.+)", part.strip())
        if not match or match.group(1).lower() not in _OPTIONS:
            continue  # sd-scripts ignores options it does not know
        key, kind = _OPTIONS[match.group(1).lower()]
        try:
            out[key] = kind(match.group(2).strip())
        except ValueError:
            continue
    if "steps" in out:
        out["steps"] = max(1, min(1000, out["steps"]))
    return out


def read_prompts(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "sample_prompts file does not exist")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
             and not line.lstrip().startswith("#")]
    if not lines:
        raise InputError(path, "sample_prompts holds no prompt")
    return [parse_prompt_line(line) for line in lines]


@torch.no_grad()
def render_samples(pipe: Any, prompts: list[dict[str, Any]], out_dir: Path, name: str, step: int,
                   default_size: tuple[int, int], clip_skip: int, device: str = "cpu") -> list[Path]:
    """Render every prompt with the pipeline as it is now (the LoRA active) and write a grid beside them."""
    from castlab.models.diffusion import prompt_conditioning

    folder = Path(out_dir) / "sample"
    folder.mkdir(parents=True, exist_ok=True)
    unet_mode = pipe.unet.training
    pipe.unet.eval()
    paths = []
    try:
        for index, spec in enumerate(prompts):
            width, height = spec.get("width", default_size[0]), spec.get("height", default_size[1])
            generator = torch.Generator(device=device).manual_seed(int(spec.get("seed", index)))
            kwargs: dict[str, Any] = {"num_inference_steps": int(spec.get("steps", 20)),
                                      "guidance_scale": float(spec.get("scale", 7.5)), "width": width,
                                      "height": height, "generator": generator, "output_type": "pil"}
            kwargs.update(prompt_conditioning(pipe, [spec["prompt"]], [spec.get("negative_prompt", "")], clip_skip))
            image = pipe(**kwargs).images[0]
            path = folder / f"{name}_{step:06d}_{index:02d}.png"
            image.save(path)
            paths.append(path)
    finally:
        pipe.unet.train(unet_mode)
    grid = Grid(columns=min(4, len(paths)), rows=(len(paths) + 3) // 4, tile=(160, 160), pad=6, caption_h=14, top=22)
    sheet, draw = grid.sheet()
    draw.text((6, 4), f"{name}: samples at step {step}", fill="black", font=font(12))
    for k, (path, spec) in enumerate(zip(paths, prompts, strict=True)):
        grid.put(sheet, draw, k % 4, k // 4, thumbnail(path, grid.tile), spec["prompt"][:28])
    save_png(sheet, folder / f"{name}_{step:06d}_grid.png")
    return paths
