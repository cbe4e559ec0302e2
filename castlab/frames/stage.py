"""The frames stage: videos → frame rows past the quality and safety gates (:func:`process`, one chunk of videos),
then near-duplicates, splits by shot and the frame report over the whole run (:func:`run`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from castlab.config import Config
from castlab.frames.dedup import deduplicate
from castlab.frames.extract import extract_frames
from castlab.frames.failures import INPUT_ERRORS, failed_video, failed_videos, none_readable
from castlab.frames.report import write_report
from castlab.frames.safety import gate_frames
from castlab.frames.splits import assign_splits
from castlab.frames.video import find_videos
from castlab.manifest import Manifest

if TYPE_CHECKING:
    from castlab.models.safety import SafetyScorer


def process(rows: list[dict[str, Any]], cfg: Config, models: SafetyScorer | None = None, *, run_dir: Path,
            mode: str | None = None) -> list[dict[str, Any]]:
    """Extract the frames of a chunk of video rows (``{"video": path}``) into `run_dir`: one row per frame
    written (rejected frames keep their reason), the kept ones scored by the safety gate
    (:mod:`castlab.frames.safety`; `models` is its scorer, else loaded once per process when ``safety.enabled``).
    Writes frames and ``shots.json`` only. A video that cannot be read gives one rejected ``kind="video"`` row
    with its reason (:mod:`castlab.frames.failures`) and the others go on."""
    out: list[dict[str, Any]] = []
    for row in rows:
        try:
            frames = extract_frames(Path(row["video"]), Path(run_dir), cfg, mode=mode)
        except INPUT_ERRORS as exc:
            out.append(failed_video(Path(row["video"]), Path(run_dir), exc))
            continue
        out += gate_frames(frames, cfg, models, desc=f"safety {Path(row['video']).name}")
    return out


def split(rows: list[dict[str, Any]], cfg: Config) -> list[dict[str, Any]]:
    """``{"row_id", "split"}`` for every frame: train/val by shot, seeded."""
    return [{"row_id": r["row_id"], "split": r["split"]}
            for r in assign_splits(rows, float(cfg.dataset.val_fraction), int(cfg.seed))]


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    rows = [r for r in rows if r.get("kind", "frame") == "frame"]
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
    summary["failed"] = failed_videos(manifest.rows(kind="video"))
    if len(summary["failed"]) == len(summary["videos"]):
        manifest.save()  # the run keeps the record of what failed
        raise none_readable(video, summary["failed"])
    manifest.add_rows(deduplicate(manifest.rows(kind="frame"), cfg))
    manifest.add_rows(split(manifest.rows(kind="frame"), cfg))
    manifest.save()
    summary["report"] = write_report(Path(run_dir), manifest.rows(kind="frame"), profile=cfg.profile)
    return summary
