"""One dataset: candidates → quality → selection → images, captions, kohya pair, metadata, report.

A :class:`Recipe` says how rows become images and captions: a character's (:func:`character_recipe`: reviewed
instance crops, view quotas) or a dataset type's (background, style, lighting, pose, expression:
:mod:`castlab.typed.recipes`). Every dataset has the same output contract (``out_dir``)::

    images/<name>.png        RGBA: for a character the crop region of the frame (context kept), alpha = the soft
                             mask (images.py); for a type its image (opaque alpha where there is no mask)
    captions/<name>.txt      reviewed caption, else predicted, else template; "<trigger> <class word>" first
    kohya/<repeats>_<trigger> <class word>/   the train split: image + .txt (hard links), kohya's folder layout
    dataset_config.toml      kohya dataset config, training.toml (``training.template`` filled in; kohya.py)
    metadata.json            character or type, trigger, counts, every chosen image, every candidate not taken +
                             reason
    dataset_report.md, contact_sheet.png, histograms.png   (report.py)

The train/val split is by shot (the curate run's split when every row has one), so a shot never straddles it.
Below ``dataset.target_size_min`` images, ``num_repeats`` fills the epoch and the report says the set is small.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

import castlab.dataset.kohya as kohya
from castlab.config import Config
from castlab.dataset.candidates import run_label
from castlab.dataset.images import DatasetImage, Quality, dataset_image, measure_quality
from castlab.dataset.report import write_dataset_report
from castlab.dataset.selection import rejection, select, view_counts
from castlab.dataset.triggers import Trigger, character_trigger
from castlab.errors import InputError
from castlab.frames.splits import row_splits, shot_key, split_by_shot
from castlab.layers import safe_name
from castlab.manifest import row_text
from castlab.models.tokenizers import count_clip_tokens
from castlab.rows import chunked
from castlab.workspace import atomic_path, prepare_output_dir, write_json_atomic, write_text_atomic

FORMAT = "castlab-dataset/1"
OUTPUTS = ("images", "captions", "conditioning", "kohya", "metadata.json", "dataset_config.toml", "training.toml",
           "dataset_report.md", "contact_sheet.png", "histograms.png")
DATASET_CHUNK = 64  # rows per process() call: the progress bar's step
_CAPTION_FIELDS = ("view", "shot_size", "lighting")  # structured review choices, used when present


def caption_source(row: dict[str, Any]) -> str:
    """Where the row's dataset caption comes from: ``reviewed`` (Label Studio), ``predicted`` (the caption
    stage, not reviewed yet) or ``template``."""
    if row_text(row.get("caption")):
        return "reviewed"
    return "predicted" if row_text(row.get("caption_pred")) else "template"


def _strip_lead(caption: str, lead: str) -> str:
    if lead and caption.lower().startswith(lead.lower()):
        return caption[len(lead):].lstrip(" ,;:")
    return caption


def build_caption(row: dict[str, Any], cfg: Config, trigger: Trigger | None = None) -> str:
    """The row's reviewed caption, else its predicted caption, else ``<caption_prefix>`` plus the structured
    fields (view, shot size, lighting) the row carries; led by the character's ``<trigger> <class word>``.
    The caption stage's placeholder lead (``dataset.trigger_token`` + ``class_word``) is replaced by it."""
    generic = f"{cfg.dataset.trigger_token} {cfg.dataset.class_word}"
    lead = trigger.class_tokens if trigger else generic
    caption = row_text(row.get("caption")) or row_text(row.get("caption_pred"))
    if caption:
        if caption.lower().startswith(lead.lower()):
            return caption
        rest = _strip_lead(caption, generic)
        return f"{lead}, {rest}" if rest else lead
    parts = [lead, str(cfg.dataset.caption_prefix)] + [row_text(row.get(k)) for k in _CAPTION_FIELDS]
    return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class Recipe:
    """How one dataset is made from its candidate rows: a character's (:func:`character_recipe`) or a dataset
    type's (:mod:`castlab.typed.recipes`). Every function gets the row and the config."""

    name: str  # the character, or the dataset type
    trigger: Trigger
    image: Callable[[dict[str, Any], Config, int], DatasetImage]  # (row, cfg, resolution) → the RGBA image
    quality: Callable[[dict[str, Any], Config, int], Quality]  # (row, cfg, resolution) → its quality score
    caption: Callable[[dict[str, Any], Config, Trigger], str]
    source: Callable[[dict[str, Any]], str]  # where the caption comes from: reviewed | predicted | template
    entry: Callable[[dict[str, Any]], dict[str, Any]]  # metadata.json fields of the row's image beyond the common
    min_quality: float
    min_quality_setting: str  # where min_quality comes from, named in the rejections
    target_min: int
    target_max: int
    key: str = "view"  # the row field the selection balances
    shares: dict[str, float] = field(default_factory=dict)  # its quotas (empty: equal shares of what is there)
    # (row, out_dir, name, built image) → files written beside the image, as metadata fields (pose skeletons)
    extra: Callable[[dict[str, Any], Path, str, DatasetImage], dict[str, Any]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # metadata.json fields of the dataset (type, suite)


def character_entry(row: dict[str, Any]) -> dict[str, Any]:
    return {"identity": row_text(row.get("identity")) or None, "source_crop": row_text(row.get("crop_path"))}


def character_recipe(name: str, cfg: Config) -> Recipe:
    """A character's dataset: its reviewed instance crops with context, view quotas, captions led by its trigger."""
    return Recipe(
        name=name, trigger=character_trigger(name, cfg), image=dataset_image, quality=measure_quality,
        caption=build_caption, source=caption_source, entry=character_entry,
        min_quality=float(cfg.dataset.min_quality), min_quality_setting="dataset.min_quality",
        target_min=int(cfg.dataset.target_size_min),
        target_max=int(cfg.dataset.target_size_max),
        shares={str(k): float(v) for k, v in dict(cfg.dataset.view_quotas).items()},
        metadata={"type": "character", "character": name},
    )


@dataclass(frozen=True)
class Layout:
    """Where one dataset's files go, and what every image is built with."""

    out_dir: Path
    kohya_dir: Path
    splits: dict[str, str]  # shot key → train | val
    names: dict[str, str]  # row id → file name (no suffix)
    recipe: Recipe
    resolution: int  # image size target: about resolution² pixels
    min_side: int  # an image with a shorter side is rejected (sd-scripts would give it a zero-size bucket)


def _unique_names(rows: list[dict[str, Any]]) -> dict[str, str]:
    names: dict[str, str] = {}
    used: set[str] = set()
    for row in rows:
        base = name = safe_name(str(row["row_id"]))
        k = 1
        while name in used:
            k += 1
            name = f"{base}-{k}"
        used.add(name)
        names[str(row["row_id"])] = name
    return names


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def process(rows: list[dict[str, Any]], cfg: Config, models: Any, *, layout: Layout) -> tuple[list[dict], list[dict]]:
    """Write one chunk of chosen rows (image, caption, kohya link for train rows). `models` is unused (the
    CLIP tokenizer is shared). Returns (``metadata.json`` image entries, rejections of rows whose files are
    missing or unreadable)."""
    recipe = layout.recipe
    entries, rejected = [], []
    for row in rows:
        name = layout.names[str(row["row_id"])]
        try:
            built = recipe.image(row, cfg, layout.resolution)
        except InputError as exc:
            rejected.append(rejection(row, "missing_file", str(exc)))
            continue
        if min(built.image.size) < layout.min_side:
            w, h = built.image.size
            why = f"too small: {w}x{h} after scaling (max_upscale {cfg.dataset.max_upscale}), a side < " \
                  f"{layout.min_side} px"
            rejected.append(rejection(row, "low_quality", why))
            continue
        caption = recipe.caption(row, cfg, recipe.trigger)
        split = layout.splits[shot_key(row)]
        image_path = layout.out_dir / "images" / f"{name}.png"
        with atomic_path(image_path) as tmp:
            built.image.save(tmp, format="PNG")
        caption_path = layout.out_dir / "captions" / f"{name}.txt"
        write_text_atomic(caption_path, caption + "\n")
        if split == "train":
            _link(image_path, layout.kohya_dir / f"{name}.png")
            _link(caption_path, layout.kohya_dir / f"{name}.txt")
        entries.append({
            "name": name, "image": f"images/{name}.png", "caption_file": f"captions/{name}.txt",
            "caption": caption, "caption_tokens": count_clip_tokens(caption), "caption_source": recipe.source(row),
            "split": split, "row_id": str(row["row_id"]), "run": row.get("run"), "shot_key": shot_key(row),
            "view": row_text(row.get(recipe.key)) or "unknown", "quality": row.get("quality"),
            "quality_parts": row.get("quality_parts"), "size": list(built.image.size), "crop_box": built.crop_box,
            "scale": built.scale, "context": built.context, **recipe.entry(row),
            **(recipe.extra(row, layout.out_dir, name, built) if recipe.extra else {}),
        })
    return entries, rejected


def prepare_out_dir(out_dir: Path, force: bool) -> None:
    """An empty `out_dir`; a non-empty one only with `force` (then castlab's outputs in it are removed)."""
    prepare_output_dir(out_dir, OUTPUTS, force, "dataset", "rebuild it")


def rank_candidates(candidates: list[dict[str, Any]], cfg: Config, resolution: int, recipe: Recipe
                    ) -> tuple[list[dict], list[dict]]:
    """(candidates with ``quality``, rejections: missing/unreadable image, low quality, flagged caption)."""
    kept, rejected = [], []
    floor = recipe.min_quality
    for row in tqdm(candidates, desc="dataset quality", unit="crop", disable=len(candidates) < 50):
        row = {**row, "shot_key": shot_key(row)}
        try:
            quality = recipe.quality(row, cfg, resolution)
        except InputError as exc:
            rejected.append(rejection(row, "missing_file", str(exc)))
            continue
        row.update(quality=quality.score, quality_parts=quality.__dict__)
        if quality.score < floor:
            code = "caption_flagged" if quality.flagged and quality.score / float(cfg.dataset.caption_flag_penalty) \
                >= floor else "low_quality"
            rejected.append(rejection(row, code, f"{quality.describe()} < {recipe.min_quality_setting} {floor}"))
            continue
        kept.append(row)
    return kept, rejected


def duplicate_threshold(cfg: Config) -> tuple[float, str]:
    """The near-duplicate cosine and where it comes from (the embedder's own, else ``dataset.max_similarity``)."""
    own = cfg.model("embedder").max_similarity
    if own is not None:
        return float(own), f"models.{cfg.profile}.embedder.max_similarity"
    return float(cfg.dataset.max_similarity), "dataset.max_similarity"


def _repeats(n_train: int, target_min: int) -> int:
    """kohya ``num_repeats`` that brings `n_train` images up to `target_min` per epoch (1 when already there)."""
    return max(1, math.ceil(target_min / n_train)) if n_train else 1


def _splits(rows: list[dict[str, Any]], cfg: Config) -> dict[str, str]:
    splits = row_splits(rows, float(cfg.dataset.val_fraction), int(cfg.seed))
    if rows and all(splits[shot_key(r)] == "val" for r in rows):  # every chosen shot was a val shot at curate time
        splits = split_by_shot(rows, float(cfg.dataset.val_fraction), int(cfg.seed))
    return splits


def assemble_character(
    name: str, candidates: list[dict[str, Any]], out_dir: Path, cfg: Config, *,
    runs: list[Path] | None = None, base_model: str | None = None, force: bool = False,
) -> dict[str, Any]:
    """Write the dataset of character `name` (module docstring) into `out_dir`; returns its summary.

    `candidates`: rows from :func:`castlab.dataset.candidates.gather` (``run``, ``frame_path``, ``clip``).
    `base_model` goes into the training TOML (default: the active profile's base model).
    """
    if not candidates:
        raise InputError(Path(out_dir), f"no reviewed instances of {name!r} to build a dataset from")
    return assemble(character_recipe(name, cfg), candidates, out_dir, cfg, runs=runs, base_model=base_model,
                    force=force)


def assemble(
    recipe: Recipe, candidates: list[dict[str, Any]], out_dir: Path, cfg: Config, *,
    runs: list[Path] | None = None, base_model: str | None = None, force: bool = False,
    rejected: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write the dataset `recipe` makes of `candidates` (rows with ``row_id``, ``run``, shot fields, ``clip``)
    into `out_dir` (module docstring); returns its summary. `rejected`: candidates an earlier stage turned
    down (:func:`castlab.dataset.selection.rejection`), listed with the others."""
    from castlab.models.diffusion import base_model_source, training_resolution

    out_dir = Path(out_dir).resolve()
    name, trigger = recipe.name, recipe.trigger
    if not candidates:
        raise InputError(out_dir, f"no candidates to build the {name!r} dataset from")
    template = kohya.load_template(cfg)  # fail on a bad template before writing anything
    base_model = base_model or base_model_source(cfg)
    prepare_out_dir(out_dir, force)
    size = int(cfg.dataset.resolution)
    shares = dict(recipe.shares)
    threshold, threshold_from = duplicate_threshold(cfg)

    earlier = list(rejected or [])
    ranked, rejected = rank_candidates(candidates, cfg, size, recipe)
    rejected = earlier + rejected
    chosen = select(ranked, shares, recipe.target_max, threshold, key=recipe.key)
    rejected += chosen.rejected
    splits = _splits(chosen.selected, cfg)
    target_min = recipe.target_min
    repeats = _repeats(sum(1 for r in chosen.selected if splits[shot_key(r)] == "train"), target_min)
    kohya_dir = out_dir / "kohya" / f"{repeats}_{trigger.class_tokens}"
    for sub in (out_dir / "images", out_dir / "captions", kohya_dir):
        sub.mkdir(parents=True, exist_ok=True)
    resolution = training_resolution(cfg)
    training = kohya.training_toml(template, cfg, {
        "base_model": base_model, "dataset_config": str(out_dir / "dataset_config.toml"),
        "output_dir": str(out_dir / "checkpoints"), "resolution": kohya.resolution_text(resolution),
        "output_name": f"castlab_{safe_name(name).lower()}",
    })
    layout = Layout(out_dir, kohya_dir, splits, _unique_names(chosen.selected), recipe, size,
                    kohya.min_image_side(training))
    entries: list[dict[str, Any]] = []
    for chunk in tqdm(list(chunked(chosen.selected, DATASET_CHUNK)), desc=f"dataset {name}", unit="chunk"):
        written, failed = process(chunk, cfg, None, layout=layout)
        entries += written
        rejected += failed
    if not entries:
        raise InputError(out_dir, f"none of the {len(candidates)} candidates of {name!r} could be used: "
                                  + "; ".join(sorted({r['code'] for r in rejected})))
    written_repeats = _repeats(sum(1 for e in entries if e["split"] == "train"), target_min)
    if written_repeats != repeats:  # some chosen crops could not be written: keep the epoch at target_size_min
        repeats, kohya_dir = written_repeats, kohya_dir.rename(kohya_dir.with_name(f"{written_repeats}_"
                                                                                   f"{trigger.class_tokens}"))

    pair = kohya.write_pair(out_dir, training, kohya.dataset_config(
        training, resolution=resolution, image_dir=kohya_dir, class_tokens=trigger.class_tokens,
        num_repeats=repeats, cfg=cfg))

    counts = {"candidates": len(candidates) + len(earlier), "selected": len(entries),
              "train": sum(1 for e in entries if e["split"] == "train"),
              "val": sum(1 for e in entries if e["split"] == "val"), "rejected": len(rejected)}
    max_tokens = int(cfg.dataset.caption_max_tokens)
    metadata = {
        "format": FORMAT, "profile": cfg.profile, "character": name, **recipe.metadata, "trigger": trigger.token,
        "trigger_source": trigger.source, "class_word": trigger.class_word, "class_tokens": trigger.class_tokens,
        "runs": [run_label(r) for r in (runs or sorted({c["run"] for c in candidates}))],
        "resolution": resolution, "image_resolution": size, "background": str(cfg.dataset.background),
        "num_repeats": repeats, "target_size": {"min": target_min, "max": recipe.target_max},
        "small": len(entries) < target_min, "base_model": base_model,
        "selection": {"balance": recipe.key, "view_quotas": shares, "allotment": chosen.allotment,
                      "available": chosen.available, "max_similarity": threshold,
                      "max_similarity_from": threshold_from, "without_embedding": chosen.undeduplicated,
                      "min_quality": recipe.min_quality},
        "counts": counts, "views": view_counts(entries),
        "images": entries, "rejected": rejected,
        "long_captions": [e["name"] for e in entries if e["caption_tokens"] > max_tokens],
    }
    write_json_atomic(out_dir / "metadata.json", metadata)
    report = write_dataset_report(out_dir, metadata)
    return {
        "character": name, "type": metadata.get("type", "character"), "out_dir": str(out_dir),
        "trigger": trigger.token, "class_tokens": trigger.class_tokens,
        "images": len(entries), **{k: counts[k] for k in ("candidates", "train", "val", "rejected")},
        "small": metadata["small"], "num_repeats": repeats, "long_captions": len(metadata["long_captions"]),
        "views": metadata["views"], "metadata": str(out_dir / "metadata.json"), "kohya_dir": str(kohya_dir),
        **pair, "base_model": base_model, "report": {k: str(out_dir / v) for k, v in report.items()},
    }
