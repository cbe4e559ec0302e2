"""The experiment log a video run writes beside its results (``EXPERIMENT.md``), as the research pipeline keeps
one per run: background, a configuration table, the inputs, timing and throughput, result pictures, and the
findings left for the user to fill in (with what the numbers already say)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from castlab.config import Config
from castlab.layers import read_mask
from castlab.pictures import palette_colour
from castlab.video.reviewed import object_label
from castlab.workspace import write_text_atomic

LOG_NAME = "EXPERIMENT.md"
STRIP_NAME = "strip.png"
TINY_NOTE = ("> **tiny profile**: random-weight models (same architectures, small configs). The masks and boxes are "
             "noise; this log shows the pipeline, not results.")


def _table(rows: Sequence[tuple[str, Any]], head: tuple[str, str] = ("setting", "value")) -> list[str]:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {k} | {'' if v is None else str(v).replace('|', '/')} |" for k, v in rows]
    return lines


def _document(title: str, background: str, config: Sequence[tuple[str, Any]], inputs: list[str],
              timing: Sequence[tuple[str, Any]], pictures: Sequence[tuple[str, str]], findings: list[str],
              profile: str) -> str:
    lines = [f"# {title}", "", f"Written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by castlab.", ""]
    if profile == "tiny":
        lines += [TINY_NOTE, ""]
    lines += ["## Background", "", background, "", "## Configuration", "", *_table(config), "",
              "## Inputs", "", *inputs, "", "## Timing and throughput", "", *_table(timing, ("measure", "value")), ""]
    if pictures:
        lines += ["## Results", ""] + [f"![{caption}]({path})\n\n*{caption}*\n" for caption, path in pictures]
    lines += ["## Findings", "", *findings, "", "- [ ] What worked:", "- [ ] What did not:", "- [ ] Next run:", ""]
    return "\n".join(lines)


def track_strip(folder: Path, result: dict[str, Any], cfg: Config, columns: int = 6, width: int = 240) -> Path:
    """``strip.png``: up to `columns` evenly spaced frames of the track with every object's mask drawn on."""
    from castlab.video.showcase import Overlay, draw_overlay

    frames = result["frames"]
    picks = sorted({round(k * (len(frames) - 1) / max(1, columns - 1)) for k in range(min(columns, len(frames)))})
    labels = {str(o["obj_id"]): object_label(o) for o in result["objects"]}
    tiles = []
    for k in picks:
        frame = frames[k]
        rgb = np.asarray(Image.open(folder / frame["frame_path"]).convert("RGB"))
        items = [(read_mask(folder / e["mask_path"]), labels[obj],
                  palette_colour(int(obj) - 1)) for obj, e in frame["objects"].items()]
        tile = Image.fromarray(draw_overlay(rgb, Overlay(items), cfg.settings.video.showcase.overlay_alpha))
        tiles.append(tile.resize((width, max(1, round(tile.height * width / tile.width)))))
    strip = Image.new("RGB", (width * len(tiles), max(t.height for t in tiles)), "white")
    for k, tile in enumerate(tiles):
        strip.paste(tile, (k * width, 0))
    path = folder / STRIP_NAME
    strip.save(path)
    return path


def _seeded_from(obj: dict[str, Any]) -> str:
    if obj["instance"]:
        return str(obj["instance"])
    return "query" if obj["score"] is None else f"query, score {obj['score']:.2f}"


def write_track_log(folder: Path, result: dict[str, Any], cfg: Config) -> Path:
    """``tracks/<id>/EXPERIMENT.md`` for one ``castlab track`` run."""
    frames = result["end_frame"] - result["first_frame"]
    objects = ["| object | label | identity | seeded from | frames present | frames absent |",
               "|---|---|---|---|---|---|"]
    objects += [f"| {o['obj_id']} | {o['label']} | {o['identity'] or ''} | {_seeded_from(o)} | {o['present']} | "
                f"{len(o['absent'])} |" for o in result["objects"]]
    config = [("profile", result["profile"]), ("segmenter (SAM2 video)", result["model_version"]),
              ("mask threshold (alpha)", result["alpha_threshold"]), ("window (propagation.max_frames)",
                                                                       result["max_frames"]),
              ("windows", result.get("windows")), ("text query", result["query"])]
    if result["query"]:
        grounding = cfg.settings.video.grounding
        config += [("box_threshold", grounding.box_threshold), ("text_threshold", grounding.text_threshold),
                   ("max_boxes", grounding.max_boxes)]
    inputs = [f"Run `{result['run']}`, video `{result['video_id']}`, shot `{result['shot_id']}`: frames "
              f"{result['first_frame']}-{result['end_frame'] - 1} ({frames} frames, {result['width']}x"
              f"{result['height']} at {result['fps']:g} fps), seeded on frame {result['seed_frame']}.", "", *objects]
    timing = [("seconds", result.get("seconds")), ("frames/s (all objects in one pass)", result.get("frames_per_s")),
              ("object-frames/s", round(frames * len(result["objects"]) / result["seconds"], 2)
               if result.get("seconds") else None)]
    findings = []
    for o in result["objects"]:
        share = len(o["absent"]) / max(1, frames)
        if share > 0.5:
            findings.append(f"- Object {o['obj_id']} ({o['label']}) is absent on {share:.0%} of the frames: check that "
                            "the seed mask is the object, or seed it on a frame where it is larger.")
    findings = findings or ["- Every object is present on most frames of the shot."]
    strip = track_strip(folder, result, cfg)
    text = _document(f"Track {result['track_id']}", (
        "Every object of one frame carried through its shot by SAM2's video predictor, all objects in one pass per "
        "window (windows chained through long shots), frames where an object is gone recorded as absent. The masks "
        "go to Label Studio for review (castlab track --push) and, reviewed, to castlab export-video."),
        config, inputs, timing, [("masks on evenly spaced frames of the shot", strip.name)], findings,
        result["profile"])
    return write_text_atomic(folder / LOG_NAME, text)


def write_export_log(out_dir: Path, summary: dict[str, Any], cfg: Config) -> Path:
    """``EXPERIMENT.md`` of one ``castlab export-video`` run."""
    vace = cfg.settings.video.vace
    config = [("format", summary["format"]), ("profile", summary["profile"]), ("max_side", vace.max_side),
              ("max_frames", vace.max_frames), ("fps", vace.fps or "source"), ("keep_region", summary["keep_region"]),
              ("reference", summary["reference"])]
    clips = ["| clip | object | frames | size | fps | reviewed frames | decision |", "|---|---|---|---|---|---|---|"]
    clips += [f"| {c['name']} | {c['label']} | {c['frames']} ({c['first_frame']}-{c['last_frame']}) | "
              f"{c['width']}x{c['height']} | {c['fps']:g} | {c['reviewed_frames']} | {c['decision']} |"
              for c in summary["clips"]]
    skipped = [f"- {s['track']} object {s['object']}: {s['why']}" for s in summary["skipped"]]
    seconds = summary["seconds"]
    timing = [("seconds", seconds), ("clips", len(summary["clips"])), ("frames", summary["frames"]),
              ("frames/s", round(summary["frames"] / seconds, 2) if seconds else None),
              ("clips kept from an earlier export", summary["kept_from_before"])]
    findings = [f"- {len(summary['skipped'])} tracked objects were left out (below)."] if skipped else []
    unreviewed = [c["name"] for c in summary["clips"] if not c["reviewed_frames"]]
    if unreviewed:
        findings.append(f"- {len(unreviewed)} clips have no reviewed frame (their masks are the tracker's).")
    text = _document("Video export (Wan VACE)", (
        "Reviewed object tracks cut into Wan VACE training clips in DiffSynth-Studio's layout (video.mp4, "
        "vace_video.mp4, vace_video_mask.mp4, vace_reference_image.png and metadata_vace.csv), sides multiples of 16, "
        "4k + 1 frames, clips cut at shot bounds."), config, ["Clips:", "", *clips, "", "Left out:", "",
                                                               *(skipped or ["- nothing"])],
        timing, [], findings or ["- Every reviewed object gave at least one clip."], summary["profile"])
    return write_text_atomic(Path(out_dir) / LOG_NAME, text)
