"""The video flows: track (every object of a frame through its shot → Label Studio), export-video (reviewed tracks →
Wan VACE training clips) and showcase (a track → an H.264 video, optionally interpolated, masks drawn on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from castlab.config import Config
from castlab.workspace import Run
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config, save_changes


@task(name="track-objects")
def track_task(run_dir: str, frame: str | None, instances: list[str] | None, query: str | None, force: bool,
               cfg: Config) -> dict[str, Any]:
    from castlab.video.stage import track

    return track(cfg, Path(run_dir), frame=frame, instances=instances, query=query, force=force)


@task(name="push-track", **LABEL_STUDIO_RETRIES)
def push_track_task(result: dict[str, Any], run_dir: str, cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.tracks import push_track

    return push_track(labelstudio(cfg), Path(run_dir), result, cfg)


@flow(name="track")
def track(
    run_dir: str, frame: str | None = None, instances: list[str] | None = None, query: str | None = None,
    push: bool = True, force: bool = False, config_files: list[str] | None = None, preset: str | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """Track every reviewed instance of `frame` (or the named `instances`, or the objects a text `query` finds on
    `frame`) through its shot in one SAM2 pass per window; push per-frame and video review tasks."""
    from castlab.video.stage import track_rows

    cfg = resolve_config(config_files, preset, profile)
    run = Run.open(run_dir, cfg)
    result = track_task(str(run.path), frame, list(instances or []) or None, query, force, cfg)
    save_changes(run.path, track_rows(result, run.path))
    summary: dict[str, Any] = {
        "track_id": result["track_id"], "shot_id": result["shot_id"], "frames": len(result["frames"]),
        "objects": {o["obj_id"]: {"label": o["label"], "present": o["present"], "absent": len(o["absent"])}
                    for o in result["objects"]},
        "reused": result.get("reused", False), "folder": str(run.path / "tracks" / result["track_id"]),
        "frames_per_s": result.get("frames_per_s")}
    if push:
        summary["labelstudio"] = push_track_task(result, str(run.path), cfg)
    get_run_logger().info("track %s: %s", result["track_id"], summary)
    return summary


@flow(name="export-video")
def export_video(
    run_dir: str, format: str = "vace", out_dir: str | None = None, reference_image: str | None = None,
    prompt: str | None = None, include_pending: bool = False, force: bool = False,
    config_files: list[str] | None = None, preset: str | None = None, profile: str | None = None,
) -> dict[str, Any]:
    """The run's reviewed tracks as video-editing training clips (`format` vace: DiffSynth-Studio's Wan VACE layout)
    under `out_dir` (default ``<run>/exports/vace``)."""
    from castlab.errors import InputError
    from castlab.video.export import FORMATS, export_vace

    if format not in FORMATS:
        raise InputError(f"--format {format}", f"is not a video export format (known: {', '.join(FORMATS)})")
    cfg = resolve_config(config_files, preset, profile)
    run = Run.open(run_dir, cfg)
    target = Path(out_dir) if out_dir else run.path / "exports" / format
    summary = export_vace(run.path, target, cfg, reference_image=Path(reference_image) if reference_image else None,
                          prompt=prompt, include_pending=include_pending, force=force)
    get_run_logger().info("export-video %s: %d clips (%d frames) into %s; %d objects left out", run.path.name,
                          len(summary["clips"]), summary["frames"], target, len(summary["skipped"]))
    return {k: v for k, v in summary.items() if k != "clips"} | {"clip_names": [c["name"] for c in summary["clips"]]}


@flow(name="showcase")
def showcase(
    run_dir: str, track_id: str, out: str | None = None, overlay: bool = False, interpolate: str | None = None,
    force: bool = False, config_files: list[str] | None = None, preset: str | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """A track's frames as a showcase video (``tracks/<id>/showcase.mp4`` unless `out`): `interpolate` none |
    minterpolate | rife overrides ``video.showcase.interpolate``; `overlay` draws every object's mask and label."""
    from castlab.video.showcase_track import showcase_track

    cfg = resolve_config(config_files, preset, profile)
    run = Run.open(run_dir, cfg)
    summary = showcase_track(run.path, track_id, cfg, out=Path(out) if out else None, overlay=overlay,
                             interpolate=interpolate, force=force)
    get_run_logger().info("showcase %s: %s", track_id, summary)
    return summary
