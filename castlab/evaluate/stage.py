"""Checkpoint evaluation: the same prompts and seeds for every LoRA checkpoint → images, CLIP-T, ranking.

Output contract (``out_dir``)::

    base/<prompt#>_<seed>.png            the base model without a LoRA (reference row)
    <checkpoint stem>/<prompt#>_<seed>.png
    quality_evaluation.json              per checkpoint: per-image and mean CLIP-T, model versions, ranking
    comparison_grid.png                  rows = base + checkpoints, columns = prompt × seed

Prompts are ``evaluation.prompts`` formatted with ``{trigger}``/``{class_word}`` (``dataset.*``); seeds,
steps and guidance come from ``evaluation.*``. Rendering is deterministic: a CPU generator seeded per image.
Under the tiny profile CLIP-T comes from a random-weight embedder: it exercises the path, it means nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from castlab.config import Config
from castlab.errors import ConfigError, InputError
from castlab.pictures import Grid, save_png
from castlab.pictures import font as pil_font
from castlab.workspace import write_json_atomic

REPORT_NAME = "quality_evaluation.json"
GRID_NAME = "comparison_grid.png"
BASE_ROW = "base"


def evaluation_prompts(cfg: Config) -> list[str]:
    """``evaluation.prompts`` with the dataset's trigger token and class word filled in."""
    values = {"trigger": cfg.dataset.trigger_token, "class_word": cfg.dataset.class_word}
    prompts = []
    for template in cfg.evaluation.prompts:
        try:
            prompts.append(str(template).format(**values))
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"evaluation.prompts: {template!r} uses an unknown placeholder ({exc}); "
                "known: {trigger}, {class_word}"
            ) from exc
    if not prompts:
        raise ConfigError("evaluation.prompts is empty")
    return prompts


def with_trained_trigger(cfg: Config, metas: list[dict[str, str]]) -> Config:
    """`cfg` whose ``{trigger}``/``{class_word}`` are the ones the checkpoints were trained with (their
    ``castlab_class_tokens``, "<trigger> <class word>") when they all agree; else `cfg` unchanged."""
    tokens = {m.get("castlab_class_tokens") for m in metas}
    if len(tokens) != 1 or not (only := tokens.pop()) or " | " in only or " " not in only.strip():
        return cfg
    trigger, _, class_word = only.strip().partition(" ")
    return cfg.with_overrides({"dataset": {"trigger_token": trigger, "class_word": class_word}},
                              source="checkpoint metadata (castlab_class_tokens)")


def _check_checkpoints(checkpoints: list[Path], cfg: Config, out_dir: Path) -> list[dict[str, str]]:
    from castlab.models.kohya import read_kohya_metadata

    if not checkpoints:
        raise InputError(out_dir, "no checkpoints to evaluate")
    stems = [Path(c).stem for c in checkpoints]
    if len(set(stems)) != len(stems) or BASE_ROW in stems:
        raise InputError(out_dir, f"checkpoint names must be unique and not {BASE_ROW!r}: {stems}")
    metas = []
    for path in checkpoints:
        meta = read_kohya_metadata(Path(path))
        stamped = meta.get("castlab_profile")
        if stamped and stamped != cfg.profile:
            raise InputError(path, f"was trained under the {stamped} profile; evaluate it under that profile")
        metas.append(meta)
    return metas


def _render(
    pipe: Any, prompts: list[str], seeds: list[int], cfg: Config, clip_skip: int
) -> list[Image.Image]:
    from castlab.models.diffusion import encode_prompts, training_resolution

    size = training_resolution(cfg)
    steps, guidance = int(cfg.evaluation.steps), float(cfg.evaluation.guidance_scale)
    images = []
    with torch.no_grad():
        negative = encode_prompts(pipe, [""], clip_skip)
        for prompt in prompts:
            positive = encode_prompts(pipe, [prompt], clip_skip)
            for seed in seeds:
                out = pipe(
                    prompt_embeds=positive, negative_prompt_embeds=negative, height=size, width=size,
                    num_inference_steps=steps, guidance_scale=guidance,
                    generator=torch.Generator(device="cpu").manual_seed(int(seed)),
                )
                images.append(out.images[0])
    return images


@dataclass
class EvalModels:
    """The base pipeline (LoRAs are loaded into it one at a time), its version, and open_clip for CLIP-T."""

    pipe: Any
    base_version: str
    embedder: Any


def evaluation_columns(cfg: Config) -> list[dict[str, Any]]:
    """One column per (prompt, seed): the same for every checkpoint."""
    seeds = [int(s) for s in cfg.evaluation.seeds]
    return [{"prompt_index": i, "prompt": p, "seed": s} for i, p in enumerate(evaluation_prompts(cfg)) for s in seeds]


def process(rows: list[dict[str, Any]], cfg: Config, models: EvalModels, *, out_dir: Path) -> list[dict[str, Any]]:
    """Render and score one chunk of checkpoint rows (``name``, ``checkpoint`` path or None for the base model,
    ``meta``: its kohya metadata): every (prompt, seed) image under ``out_dir/<name>/``; one result row each."""
    from castlab.models.kohya import load_lora_into_pipeline

    columns = evaluation_columns(cfg)
    prompts, seeds = evaluation_prompts(cfg), [int(s) for s in cfg.evaluation.seeds]
    texts = [c["prompt"] for c in columns]
    pipe, out = models.pipe, []
    for job in tqdm(rows, desc="evaluate", unit="ckpt"):
        name, path, meta = job["name"], job["checkpoint"], job["meta"]
        started = time.perf_counter()
        clip_skip = int(meta.get("ss_clip_skip") or cfg.training.clip_skip)
        if path is not None:
            load_lora_into_pipeline(pipe, path, adapter_name="castlab_eval")
        try:
            images = _render(pipe, prompts, seeds, cfg, clip_skip)
        finally:
            if path is not None:
                pipe.unload_lora_weights()
        scores = models.embedder.clip_t(images, texts)
        files = []
        for image, col in zip(images, columns, strict=True):
            target = out_dir / name / f"{col['prompt_index']}_{col['seed']}.png"
            save_png(image, target)
            files.append(target.relative_to(out_dir).as_posix())
        out.append({
            "name": name,
            "checkpoint": str(path) if path else None,
            "model_version": meta.get("castlab_model_version") or (models.base_version if path is None else None),
            "base_model_version": meta.get("castlab_base_model_version", models.base_version),
            "step": int(meta["ss_steps"]) if meta.get("ss_steps") else None,
            "clip_skip": clip_skip,
            "clip_t_mean": float(np.mean(scores)),
            "images": [{**col, "file": f, "clip_t": s} for col, f, s in zip(columns, files, scores, strict=True)],
            "seconds": round(time.perf_counter() - started, 3),
        })
    return out


def evaluate_checkpoints(
    checkpoints: list[Path], out_dir: Path, cfg: Config, device: str = "cpu", force: bool = False
) -> dict[str, Any]:
    """Render, score and rank `checkpoints` (see module docstring); returns the report written to JSON."""
    from castlab.models.diffusion import load_base_pipeline
    from castlab.models.embedder import load_embedder

    out_dir = Path(out_dir).resolve()
    checkpoints = [Path(c).resolve() for c in checkpoints]
    metas = _check_checkpoints(checkpoints, cfg, out_dir)
    cfg = with_trained_trigger(cfg, metas)
    if (out_dir / REPORT_NAME).exists() and not force:
        raise InputError(out_dir, f"already holds {REPORT_NAME} (pass --force to evaluate again)")
    prompts = evaluation_prompts(cfg)
    seeds = [int(s) for s in cfg.evaluation.seeds]
    models = EvalModels(*load_base_pipeline(cfg, device), load_embedder(cfg, device))
    base_version, embedder = models.base_version, models.embedder
    columns = evaluation_columns(cfg)
    jobs = [{"name": BASE_ROW, "checkpoint": None, "meta": {}}]
    jobs += [{"name": c.stem, "checkpoint": c, "meta": m} for c, m in zip(checkpoints, metas, strict=True)]
    rows = process(jobs, cfg, models, out_dir=out_dir)

    ranked = sorted(rows[1:], key=lambda r: (-r["clip_t_mean"], r["name"]))
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    grid_path = out_dir / GRID_NAME
    note = "tiny profile: random-weight models, scores mean nothing" if cfg.profile == "tiny" else None
    save_png(comparison_grid(out_dir, rows, columns, note), grid_path)
    report = {
        "profile": cfg.profile,
        "note": note,
        "model_versions": {"base_model": base_version, "embedder": embedder.model_version},
        "metric": "clip_t",
        "prompts": prompts,
        "seeds": seeds,
        "steps": int(cfg.evaluation.steps),
        "guidance_scale": float(cfg.evaluation.guidance_scale),
        "baseline": rows[0],
        "checkpoints": rows[1:],
        "ranking": [r["name"] for r in ranked],
        "best": ranked[0]["checkpoint"],
        "grid": GRID_NAME,
    }
    write_json_atomic(out_dir / REPORT_NAME, report)
    paths = {"out_dir": str(out_dir), "report": str(out_dir / REPORT_NAME), "grid_path": str(grid_path)}
    return {**report, **paths}


def comparison_grid(
    out_dir: Path, rows: list[dict[str, Any]], columns: list[dict[str, Any]], note: str | None = None
) -> Image.Image:
    """Rows = base + checkpoints (label: name, mean CLIP-T), columns = prompt × seed (label: p#/seed).

    `note` (e.g. the tiny-profile stamp) is printed in red under the grid.
    """
    tile, label_w = 128, 220
    footer_h = 24 if note else 0
    layout = Grid(len(columns), len(rows), (tile, tile), pad=4, left=label_w, top=28, bottom=footer_h)
    grid, draw = layout.sheet()
    font = pil_font(12)
    if note:
        draw.text((6, grid.height - footer_h + 4), note.upper(), fill=(200, 0, 0), font=font)
    for j, col in enumerate(columns):
        x = layout.origin(j, 0)[0]
        draw.text((x + 2, 8), f"prompt {col['prompt_index']} / seed {col['seed']}", fill=(0, 0, 0), font=font)
    for i, row in enumerate(rows):
        y = layout.origin(0, i)[1]
        rank = f"#{row['rank']} " if "rank" in row else ""
        draw.text((6, y + tile // 2 - 14), f"{rank}{row['name']}"[:34], fill=(0, 0, 0), font=font)
        draw.text((6, y + tile // 2 + 2), f"CLIP-T {row['clip_t_mean']:.4f}", fill=(60, 60, 60), font=font)
        for j, image in enumerate(row["images"]):
            with Image.open(out_dir / image["file"]) as im:
                thumb = im.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST)
            layout.put(grid, draw, j, i, thumb)
    return grid
