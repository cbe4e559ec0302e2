"""The frames stage: videos → frame rows (:func:`process`, one chunk of videos), then near-duplicates, splits by
shot and the frame report over the whole run (:func:`run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from castlab.config import Config
from castlab.frames.dedup import deduplicate
from castlab.frames.extract import extract_frames
from castlab.frames.report import write_report
from castlab.frames.splits import assign_splits
from castlab.frames.video import find_videos
from castlab.manifest import Manifest


def process(rows: list[dict[str, Any]], cfg: Config, models: None = None, *, run_dir: Path,
            mode: str | None = None) -> list[dict[str, Any]]:
    """Extract the frames of a chunk of video rows (``{"video": path}``) into `run_dir`: one row per frame
    written (rejected frames keep their reason). Needs no model; writes frames and ``shots.json`` only."""
    out: list[dict[str, Any]] = []
    for row in rows:
        out += extract_frames(Path(row["video"]), Path(run_dir), cfg, mode=mode)
    return out


def split(rows: list[dict[str, Any]], cfg: Config) -> list[dict[str, Any]]:
    """``{"row_id", "split"}`` for every frame: train/val by shot, seeded."""
    return [{"row_id": r["row_id"], "split": r["split"]}
            for r in assign_splits(rows, float(cfg.dataset.val_fraction), int(cfg.seed))]


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    kept = sum(1 for r in rows if r.get("status") == "kept")
    return {"frames": len(rows), "kept": kept, "rejected": len(rows) - kept}


def run(run_dir: Path, cfg: Config, video: Path, mode: str | None = None) -> dict[str, Any]:
    """Every video under `video` → frames → near-duplicates → splits → report; the manifest saved."""
    manifest = Manifest.for_run(run_dir)
    summary: dict[str, Any] = {"videos": []}
    for path in find_videos(Path(video)):
        rows = process([{"video": str(path)}], cfg, run_dir=run_dir, mode=mode)
        manifest.add_rows(rows)
        summary["videos"].append({"video": str(path), **counts(rows)})
    manifest.add_rows(deduplicate(manifest.rows(kind="frame"), cfg))
    manifest.add_rows(split(manifest.rows(kind="frame"), cfg))
    manifest.save()
    summary["report"] = write_report(Path(run_dir), manifest.rows(kind="frame"), profile=cfg.profile)
    return summary
