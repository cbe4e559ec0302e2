"""Training items from a :class:`~trainers.config.TrainingPlan`: every image with its caption, bucket placement,
repeats and options; one epoch's batches, seeded by (seed, epoch) so any epoch can be rebuilt on resume."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from castlab.errors import InputError
from trainers import saving
from trainers.buckets import BucketSettings, Placement, bucket_resolutions, place, plan_batches
from trainers.captions import CaptionSettings, caption_variants_are_static
from trainers.config import DatasetSpec, TrainingPlan, read_caption


@dataclass(frozen=True)
class Item:
    key: str  # unique: "<dataset>:<subset>:<file name>"
    image: Path
    caption: str
    captions: CaptionSettings
    placement: Placement
    repeats: int
    alpha_mask: bool
    flip_aug: bool
    dataset: int
    batch_size: int
    image_dir: Path


def image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"training image is not readable ({exc})") from exc


def _buckets(spec: DatasetSpec) -> tuple[BucketSettings, list[tuple[int, int]] | None]:
    """A dataset's bucket settings and its predefined buckets (None without them, or with bucket_no_upscale)."""
    settings = BucketSettings.from_config({**spec.values, "resolution": list(spec.resolution)})
    return settings, bucket_resolutions(settings) if settings.enable and not settings.no_upscale else None


def build_items(plan: TrainingPlan) -> tuple[list[Item], list[str]]:
    """Every training image of the plan, placed in its dataset's buckets; notes say how buckets filled."""
    items: list[Item] = []
    notes: list[str] = []
    for d, spec in enumerate(plan.datasets):
        settings, buckets = _buckets(spec)
        for s, subset in enumerate(spec.subsets):
            captions = CaptionSettings.from_subset(subset.values, plan.args)
            for path in subset.images:
                try:
                    placement = place(image_size(path), settings, buckets)
                except ValueError as exc:
                    raise InputError(path, str(exc)) from exc
                caption = read_caption(path, str(subset["caption_extension"]), subset.get("class_tokens"))
                items.append(Item(f"{d}:{s}:{path.name}", path, caption, captions, placement,
                                  int(subset["num_repeats"]), bool(subset["alpha_mask"]), bool(subset["flip_aug"]),
                                  d, int(spec.values["batch_size"]), subset.image_dir))
        counts = Counter(i.placement.bucket for i in items if i.dataset == d)
        notes.append(f"dataset {d}: {len(counts)} bucket(s): " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in
                                                                             sorted(counts.items())))
    return items, notes


def validation_items(plan: TrainingPlan) -> list[Item]:
    """The shot-level validation split of a castlab dataset (``metadata.json`` beside the dataset config lists the
    ``val`` images, which never enter the train subset), placed in the first dataset's buckets; [] otherwise."""
    meta_path = Path(plan.args["dataset_config"]).parent / "metadata.json"
    if not plan.datasets or not meta_path.is_file():
        return []
    try:
        entries = json.loads(meta_path.read_text(encoding="utf-8")).get("images") or []
    except ValueError as exc:
        raise InputError(meta_path, f"is not valid JSON ({exc})") from exc
    spec = plan.datasets[0]
    subset = spec.subsets[0]
    settings, buckets = _buckets(spec)
    captions = CaptionSettings()  # validation captions are used as written
    items = []
    for entry in entries:
        if entry.get("split") != "val":
            continue
        path = meta_path.parent / str(entry["image"])
        try:
            placement = place(image_size(path), settings, buckets)
        except ValueError as exc:
            raise InputError(path, str(exc)) from exc
        items.append(Item(f"val:{path.name}", path, str(entry["caption"]), captions, placement, 1,
                          bool(subset["alpha_mask"]), False, 0, 1, path.parent))
    return items


def epoch_batches(items: list[Item], seed: int, epoch: int) -> tuple[list[list[Item]], list[str]]:
    """Epoch `epoch`'s batches (each of one dataset and one bucket; nothing dropped), seeded by (seed, epoch)."""
    rng = random.Random(f"{seed}:{epoch}")
    by_key = {i.key: i for i in items}
    batches: list[list[Item]] = []
    notes: list[str] = []
    for d in sorted({i.dataset for i in items}):
        members = [i for i in items if i.dataset == d]
        keys, dataset_notes = plan_batches({i.key: i.placement.bucket for i in members}, members[0].batch_size, rng,
                                           {i.key: i.repeats for i in members})
        batches += [[by_key[k] for k in batch] for batch in keys]
        notes += dataset_notes
    rng.shuffle(batches)
    return batches, notes


def static_captions(items: list[Item]) -> bool:
    """True when no item's caption ever changes (shuffle/dropout off): text encodings can be cached once."""
    return all(caption_variants_are_static(i.captions) for i in items)


def dataset_summary(plan: TrainingPlan, items: list[Item]) -> dict[str, Any]:
    """The data as :func:`trainers.saving.training_metadata` describes it (sd-scripts' ss_datasets shape): per
    dataset its batch size, resolution, buckets (every bucket, counts with repeats) and subsets with the
    captions as read."""
    datasets = []
    for d, spec in enumerate(plan.datasets):
        members = [i for i in items if i.dataset == d]
        settings, buckets = _buckets(spec)
        counts: Counter = Counter(dict.fromkeys(buckets or [], 0))
        for item in members:
            counts[item.placement.bucket] += item.repeats
        subsets = []
        for s, subset in enumerate(spec.subsets):
            own = [i for i in members if i.key.startswith(f"{d}:{s}:")]
            subsets.append({**subset.values, "image_dir": str(subset.image_dir), "img_count": len(own),
                            "num_repeats": int(subset["num_repeats"]), "captions": [i.caption for i in own]})
        datasets.append({
            "batch_size": int(spec.values["batch_size"]), "resolution": list(spec.resolution),
            "enable_bucket": settings.enable, "min_bucket_reso": settings.min_reso,
            "max_bucket_reso": settings.max_reso,
            "bucket_info": saving.bucket_info(counts, [i.placement.aspect_error for i in members]),
            "subsets": subsets,
        })
    return {"datasets": datasets, "num_validation_images": 0,
            "num_train_images": sum(i.repeats for i in items), "unique_images": len(items)}
