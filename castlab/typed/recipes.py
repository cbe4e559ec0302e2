"""A dataset type's dataset: the prepared records of one or more runs → the common dataset contract
(:func:`castlab.dataset.assemble.assemble`).

Candidates are the ok records of ``<run>/<type>/records.jsonl`` (:mod:`castlab.typed.stage`); the records a
preparation rejected (a character left in a background, a blurred frame, a missing file) enter ``metadata.json``'s
rejections with their reasons. Images are the whole record image (a background layer, a frame, a pose's context
crop, a face crop) scaled towards
``dataset.resolution``² pixels with an opaque alpha; captions are ``<trigger> <class word>, <medium>, <body>``
(the reviewed caption, else the body rebuilt from the reviewed labels, else the prediction); the selection gives
every value of ``types.<type>.balance`` an equal share, after near-duplicates (open_clip cosine) are dropped.
A pose dataset also writes ``conditioning/<name>.png``: the OpenPose skeleton in the image's frame (ControlNet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from castlab.config import Config
from castlab.dataset.assemble import Recipe
from castlab.dataset.candidates import run_label
from castlab.dataset.images import DatasetImage, scaled_rgba
from castlab.dataset.selection import rejection
from castlab.dataset.triggers import Trigger, derive_trigger
from castlab.errors import InputError
from castlab.layers import media_path, open_rgba
from castlab.pictures import save_png
from castlab.typed.spec import dataset_type
from castlab.typed.stage import labels_of, read_embeddings, read_records, reviewed_body, type_dir


@dataclass(frozen=True)
class ImageQuality:
    """The quality a preparation measured (sharpness of the whole image)."""

    score: float
    flagged: str = ""

    def describe(self) -> str:
        return f"sharpness {self.score:.2f}"


def type_trigger(name: str, cfg: Config) -> Trigger:
    settings = dataset_type(name).settings(cfg)
    if settings.trigger:
        return Trigger(settings.trigger.strip(), settings.class_word, "config")
    return Trigger(derive_trigger(f"castlab {name}"), settings.class_word, "derived")


def gather_typed(run_dirs: list[Path], name: str, cfg: Config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(candidates, rejections) of type `name` over `run_dirs`; InputError for a run not prepared for it."""
    balance = str(dataset_type(name).settings(cfg).balance)
    candidates, rejected = [], []
    for run_dir in run_dirs:
        records = read_records(Path(run_dir), name)
        if not records:
            raise InputError(type_dir(Path(run_dir), name), f"holds no {name} records: run `castlab prepare "
                                                             f"{run_dir} --type {name}` first")
        vectors = read_embeddings(Path(run_dir), name)
        for record in records:
            row = {**record, "run": run_label(run_dir)}
            if record["status"] != "ok":
                rejected.append(rejection(row, str(record.get("reason") or record["status"]),
                                          str(record.get("detail") or "")))
                continue
            candidates.append({**row, "clip": vectors.get(record["row_id"]),
                               "label": labels_of(record).get(balance, "unknown")})
    return candidates, rejected


def type_image(row: dict[str, Any], cfg: Config, resolution: int) -> DatasetImage:
    """The record's whole image towards `resolution`² pixels (never enlarged past ``dataset.max_upscale``),
    opaque alpha (the whole image is learnt)."""
    rgb = open_rgba(media_path(row.get("image")), "image").convert("RGB")
    image, scale = scaled_rgba(rgb, Image.new("L", rgb.size, 255), cfg, resolution)
    return DatasetImage(image, [0, 0, rgb.width, rgb.height], scale, "whole image")


def type_recipe(name: str, cfg: Config) -> Recipe:
    """How a dataset of type `name` is made (module docstring)."""
    kind = dataset_type(name)
    settings = kind.settings(cfg)

    def caption(row: dict[str, Any], cfg: Config, trigger: Trigger) -> str:
        body, _ = reviewed_body(row, kind, cfg)
        return ", ".join(p for p in (trigger.class_tokens, str(settings.medium), body) if p)

    def entry(row: dict[str, Any]) -> dict[str, Any]:
        found = {k: row[k] for k in ("scene", "pose_cluster", "instance", "identity", "keypoints",
                                     "expression_sources") if row.get(k) is not None}
        return {"labels": labels_of(row), "source_image": row.get("source_image") or row.get("image"),
                "image_source": row.get("source"), **found}

    return Recipe(
        name=name, trigger=type_trigger(name, cfg), image=type_image,
        quality=lambda row, cfg, resolution: ImageQuality(float(row.get("quality") or 0.0)),
        caption=caption, source=lambda row: reviewed_body(row, kind, cfg)[1], entry=entry,
        min_quality=float(settings.min_quality), min_quality_setting=f"types.{name}.min_quality",
        target_min=int(settings.target_size_min),
        target_max=int(settings.target_size_max), key="label", shares={},
        extra=(lambda row, out, file, built: write_skeleton(row, out, file, built, float(cfg.pose.min_confidence)))
        if kind.keypoints else None,
        metadata={"type": name, "balance": str(settings.balance), "medium": str(settings.medium)},
    )


def write_skeleton(row: dict[str, Any], out_dir: Path, name: str, built: DatasetImage, min_confidence: float
                   ) -> dict[str, Any]:
    """``conditioning/<name>.png``: the OpenPose skeleton of the row's keypoints (the reviewed ones when a reviewer
    moved them) in the dataset image's frame, for ControlNet training beside the LoRA's."""
    from castlab.pose.skeleton import draw_skeleton

    keypoints = (row.get("review") or {}).get("keypoints") or row.get("keypoints")
    if not keypoints:
        return {"conditioning": None}
    skeleton = draw_skeleton(np.asarray(keypoints, np.float32), built.image.size, min_confidence, scale=built.scale)
    save_png(Image.fromarray(skeleton), Path(out_dir) / "conditioning" / f"{name}.png")
    return {"conditioning": f"conditioning/{name}.png"}
