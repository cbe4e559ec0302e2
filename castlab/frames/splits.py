"""Train/val splits assigned by shot, never by frame: frames of one shot look alike, so splitting a
shot across train and val would leak. Seeded (``seed``) and independent of row order."""

from __future__ import annotations

import random
from typing import Any

from castlab.manifest import row_text


def shot_key(row: dict[str, Any]) -> str:
    """Video-qualified shot id; rows without a shot share one group per video (no frame-level leak)."""
    return f"{row_text(row.get('video_id')) or 'video'}/{row_text(row.get('shot_id')) or 'no-shot'}"


def split_by_shot(rows: list[dict[str, Any]], val_fraction: float, seed: int) -> dict[str, str]:
    """Shot key → "train" | "val". Validation only when there are ≥ 2 shots (at least one shot each)."""
    shots = sorted({shot_key(r) for r in rows})
    random.Random(seed).shuffle(shots)
    n_val = 0
    if len(shots) >= 2 and val_fraction > 0:
        n_val = min(len(shots) - 1, max(1, round(len(shots) * val_fraction)))
    return {s: ("val" if i < n_val else "train") for i, s in enumerate(shots)}


def assign_splits(rows: list[dict[str, Any]], val_fraction: float, seed: int) -> list[dict[str, Any]]:
    """Copies of `rows` with a ``split`` field from :func:`split_by_shot` over all of their shots."""
    splits = split_by_shot(rows, val_fraction, seed)
    return [{**row, "split": splits[shot_key(row)]} for row in rows]


def row_splits(rows: list[dict[str, Any]], val_fraction: float, seed: int) -> dict[str, str]:
    """Shot key → split, taken from the rows' ``split`` fields when every row has one (assigned at
    curate time over the whole run), else computed here over these rows' shots."""
    given: dict[str, set[str]] = {}
    for row in rows:
        given.setdefault(shot_key(row), set()).add(row_text(row.get("split")))
    if rows and all(len(v) == 1 and v <= {"train", "val"} for v in given.values()):
        return {key: value.pop() for key, value in given.items()}
    return split_by_shot(rows, val_fraction, seed)
