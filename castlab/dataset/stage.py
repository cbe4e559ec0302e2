"""Which rows make a dataset, and a run's dataset in one call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from castlab.config import Config
from castlab.dataset.assemble import assemble_dataset
from castlab.errors import InputError
from castlab.manifest import MANIFEST_NAME, Manifest

REVIEWED_STATES = ("accepted", "corrected", "added")


def reviewed_instances(manifest: Manifest) -> list[dict[str, Any]]:
    """Kept instances whose mask a reviewer accepted, corrected or drew (input of dataset assembly)."""
    if "review_state" not in manifest.df.columns:
        return []
    return [r for r in manifest.rows(kind="instance", status="kept") if r.get("review_state") in REVIEWED_STATES]


def run(run_dir: Path, cfg: Config, out_dir: Path, force: bool = False) -> dict[str, Any]:
    """Assemble the dataset of a run's reviewed instances into `out_dir` (the run's manifest is only read)."""
    rows = reviewed_instances(Manifest.load(Path(run_dir) / MANIFEST_NAME))
    if not rows:
        raise InputError(run_dir, "has no reviewed instances yet (review masks in Label Studio, then review-sync)")
    return assemble_dataset(rows, Path(out_dir), cfg, force=force)
