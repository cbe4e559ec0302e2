"""The *track* review projects: a tracked shot's masks per frame, and the shot as a video with a box track per object.

- ``labelstudio.track_frames_title`` (``label_configs/track_frames.xml``): one task per frame of the track, pushed in
  frame order; every object is its own brush label ``"<object id> <name>"`` (dynamic labels from the task), the same
  on every frame, so the object a reviewer fixes is the object of the track. Keys ``track:<track id>:<frame>``.
- ``labelstudio.tracks_title`` (``label_configs/track_video.xml``): one task per track, the shot as an H.264 video
  (``tracks/<id>/shot.mp4``) with each object's boxes as a video-rectangle track (a keyframe per frame where it is
  present, disabled where it is absent); the reviewer ticks the tracks to reject. Key ``track:<track id>``.

:func:`sync_track_reviews` reads the latest annotations back: reviewed masks into ``tracks/<id>/reviewed/<object
id>/<frame>.png`` (an object without a region on a reviewed frame is absent there), the decisions and counts into
``tracks/<id>/review.json``, and the track rows' ``review_state`` (accepted | rejected | pending) for the manifest.

Both projects are watched (:mod:`castlab.reviews`): once the run's video tasks are decided, ``export-video`` starts.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from castlab.config import PROJECT_ROOT, Config
from castlab.labelstudio import client
from castlab.layers import mask_bbox, read_mask, write_mask
from castlab.pictures import palette_colour
from castlab.reviews.hooks import watch_project
from castlab.video.reviewed import REVIEW_NAME, object_label
from castlab.video.stage import TRACKS_DIR, load_track, run_tracks
from castlab.workspace import atomic_path, relative_to_workspace, write_json_atomic

log = logging.getLogger(__name__)
FRAMES_CONFIG = PROJECT_ROOT / "label_configs" / "track_frames.xml"
VIDEO_CONFIG = PROJECT_ROOT / "label_configs" / "track_video.xml"
PUSH_NAME = "push.json"  # tracks/push.json: the run's track projects (castlab.reviews moves on from them)
VIDEO_NAME = "shot.mp4"
_LABEL = re.compile(r"^(\d+)\b")


def object_id(label: str) -> int | None:
    """The object id a label names (None for a label castlab did not make)."""
    found = _LABEL.match(str(label).strip())
    return int(found.group(1)) if found else None


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _objects_data(result: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    options = [{"value": object_label(o), "background": _hex(palette_colour(o["obj_id"] - 1))}
               for o in result["objects"]]
    legend = (f"Track {result['track_id']} (shot {result['shot_id']}, frames {result['first_frame']}-"
              f"{result['end_frame'] - 1}, seeded on {result['seed_frame']}): "
              + ", ".join(o["value"] for o in options))
    return options, legend


def _run_data(run_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    return {"castlab_run": relative_to_workspace(run_dir), "track_id": result["track_id"],
            "shot_id": result["shot_id"], "video_id": result["video_id"]}


def frame_tasks(run_dir: Path, result: dict[str, Any]) -> list[dict[str, Any]]:
    """One task per frame of the track, in frame order, each object's mask a brush prediction."""
    folder = Path(run_dir) / TRACKS_DIR / result["track_id"]
    options, legend = _objects_data(result)
    labels = {str(o["obj_id"]): object_label(o) for o in result["objects"]}
    tasks = []
    for order, frame in enumerate(result["frames"]):
        regions = []
        for obj_id, entry in sorted(frame["objects"].items(), key=lambda kv: int(kv[0])):
            mask = read_mask(folder / entry["mask_path"])
            regions.append(client.brush_result(
                mask.astype(np.uint8), labels[obj_id], result["width"], result["height"],
                region_id=client.result_id(result["track_id"], obj_id, str(frame["frame_index"]))))
        tasks.append({
            "data": {"image": client.local_file_url(folder / frame["frame_path"]),
                     "castlab_key": f"track:{result['track_id']}:{frame['frame_index']}",
                     **_run_data(run_dir, result), "frame_index": frame["frame_index"], "order": order,
                     "objects": options, "legend": legend},
            "predictions": [{"result": regions, "score": 1.0 if frame["frame_index"] == result["seed_frame"] else 0.5,
                             "model_version": result["model_version"]}],
        })
    return tasks


def shot_video(run_dir: Path, result: dict[str, Any]) -> Path:
    """``tracks/<id>/shot.mp4``: the track's frames as H.264 at the shot's rate (written once, atomically)."""
    from castlab.video.vace import write_video  # PyAV, only when a video is written

    folder = Path(run_dir) / TRACKS_DIR / result["track_id"]
    path = folder / VIDEO_NAME
    if not path.is_file():
        frames = [np.asarray(Image.open(folder / f["frame_path"]).convert("RGB")) for f in result["frames"]]
        height, width = (s // 2 * 2 for s in frames[0].shape[:2])  # yuv420p wants even sides
        with atomic_path(path) as tmp:
            write_video(tmp, [f[:height, :width] for f in frames], result["fps"])
    return path


def _box_sequence(result: dict[str, Any], obj_id: str) -> list[dict[str, Any]]:
    """Video-rectangle keyframes of one object: its box (percent of the frame) where present, disabled where it
    goes missing (frames are 1-based in Label Studio's video tag)."""
    sequence, last = [], None
    width, height, fps = result["width"], result["height"], result["fps"]
    for k, frame in enumerate(result["frames"]):
        entry = frame["objects"].get(obj_id)
        if entry is None:
            if last is not None:
                sequence.append({**last, "frame": k + 1, "time": k / fps, "enabled": False})
                last = None
            continue
        x, y, w, h = entry["bbox"]
        last = {"frame": k + 1, "time": k / fps, "enabled": True, "rotation": 0, "x": 100 * x / width,
                "y": 100 * y / height, "width": 100 * w / width, "height": 100 * h / height}
        sequence.append(last)
    return sequence


def video_task(run_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """The shot-level task: the video, every object's box track as a prediction, the reject choices."""
    options, legend = _objects_data(result)
    count = len(result["frames"])
    regions = [{"id": client.result_id(result["track_id"], str(o["obj_id"]), "video"), "from_name": "box",
                "to_name": "video", "type": "videorectangle", "origin": "prediction",
                "value": {"framesCount": count, "duration": count / result["fps"],
                          "sequence": _box_sequence(result, str(o["obj_id"])), "labels": [object_label(o)]}}
               for o in result["objects"]]
    return {"data": {"video": client.local_file_url(shot_video(run_dir, result)),
                     "castlab_key": f"track:{result['track_id']}", **_run_data(run_dir, result),
                     "fps": result["fps"], "objects": options, "tracks": [{"value": o["value"]} for o in options],
                     "legend": legend},
            "predictions": [{"result": [r for r in regions if r["value"]["sequence"]], "score": 1.0,
                             "model_version": result["model_version"]}]}


def frames_title(cfg: Config) -> str:
    return str(cfg.labelstudio.track_frames_title)


def tracks_title(cfg: Config) -> str:
    return str(cfg.labelstudio.tracks_title)


def push_track(ls: Any, run_dir: Path, result: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Push one track's frame tasks and video task (re-pushing adds nothing); a summary with the task ids."""
    run_dir = Path(run_dir).resolve()
    media = run_dir / TRACKS_DIR
    frames_project = client.ensure_project(ls, frames_title(cfg), FRAMES_CONFIG.read_text(encoding="utf-8"))
    video_project = client.ensure_project(ls, tracks_title(cfg), VIDEO_CONFIG.read_text(encoding="utf-8"))
    for project in (frames_project, video_project):
        client.ensure_local_storage(ls, project, media)
        watch_project(ls, project, cfg)  # a finished track review moves on to export-video (castlab.reviews)
    frames = client.push_tasks(ls, frames_project, frame_tasks(run_dir, result))
    video = client.push_tasks(ls, video_project, [video_task(run_dir, result)])
    write_json_atomic(media / PUSH_NAME, {"frames_project_id": int(frames_project),
                                          "video_project_id": int(video_project)})
    return {"track_id": result["track_id"], "frames_project_id": int(frames_project),
            "video_project_id": int(video_project), "frame_tasks": len(frames), "new_frame_tasks": len(frames.created),
            "video_task_id": int(video[f"track:{result['track_id']}"]), "new_video_tasks": len(video.created)}


def _frame_review(annotation: dict[str, Any], result: dict[str, Any], where: str
                  ) -> tuple[dict[str, np.ndarray], str | None]:
    """Object id → reviewed mask of one annotated frame (regions of one object merged); an error text instead when
    a region does not fit the frame or names no tracked object."""
    known = {str(o["obj_id"]) for o in result["objects"]}
    masks: dict[str, np.ndarray] = {}
    for region in annotation.get("result") or []:
        if region.get("type") != "brushlabels":
            continue
        labels = (region.get("value") or {}).get("brushlabels") or []
        obj = object_id(labels[0]) if labels else None
        if obj is None or str(obj) not in known:
            return {}, f"{where}: region {region.get('id')!r} is labelled {labels!r}, not one of the track's objects"
        try:
            mask = client.mask_from_result(region).astype(bool)
        except ValueError as exc:
            return {}, f"{where}: {exc}"
        if mask.shape != (result["height"], result["width"]):
            return {}, (f"{where}: region {region.get('id')!r} is {mask.shape[1]}x{mask.shape[0]}, the frame "
                        f"{result['width']}x{result['height']}")
        masks[str(obj)] = masks[str(obj)] | mask if str(obj) in masks else mask
    return masks, None


def _rejected(annotation: dict[str, Any], result: dict[str, Any]) -> set[str]:
    """Objects a video-task annotation rejects: ticked in "rejected", or whose box track the reviewer deleted."""
    ticked, kept = set(), set()
    for region in annotation.get("result") or []:
        value = region.get("value") or {}
        if region.get("from_name") == "rejected":
            ticked |= {str(object_id(c)) for c in value.get("choices") or [] if object_id(c) is not None}
        elif "sequence" in value:
            labels = value.get("labels") or next((v for k, v in value.items() if k.endswith("labels")), [])
            kept |= {str(object_id(label)) for label in labels if object_id(label) is not None}
    return ticked | ({str(o["obj_id"]) for o in result["objects"]} - kept)


def _sync_one(folder: Path, frames_by_key: dict[str, dict], videos_by_key: dict[str, dict]) -> dict[str, Any]:
    result = load_track(folder)
    tid = result["track_id"]
    review: dict[str, Any] = {"track_id": tid, "frames": {}, "errors": [], "objects": {}}
    tracked = {str(o["obj_id"]): {} for o in result["objects"]}
    for frame in result["frames"]:
        for obj_id, entry in frame["objects"].items():
            tracked[obj_id][frame["frame_index"]] = entry
    reviewed = {obj: 0 for obj in tracked}
    corrected = {obj: 0 for obj in tracked}
    for frame in result["frames"]:
        index = frame["frame_index"]
        task = frames_by_key.get(f"track:{tid}:{index}")
        annotation = client.latest_annotation(task) if task else None
        if annotation is None:
            continue
        masks, error = _frame_review(annotation, result, f"task {task['id']} (track {tid}, frame {index})")
        if error:
            review["errors"].append(error)
            review["frames"][str(index)] = {"state": "invalid"}
            continue
        states = {}
        for obj_id in tracked:
            path = folder / "reviewed" / obj_id / f"{index:06d}.png"
            mask = masks.get(obj_id)
            if mask is None or not mask.any():
                path.unlink(missing_ok=True)
                states[obj_id] = "absent"
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_mask(path, mask)
                states[obj_id] = {"mask_path": path.relative_to(folder).as_posix(), "area": int(mask.sum()),
                                  "bbox": mask_bbox(mask)}
            reviewed[obj_id] += 1
            before = tracked[obj_id].get(index)
            old = read_mask(folder / before["mask_path"]) if before else None
            if (old is None) != (mask is None or not mask.any()) or (old is not None and not np.array_equal(old, mask)):
                corrected[obj_id] += 1
        review["frames"][str(index)] = {"state": "reviewed", "objects": states}
    video = videos_by_key.get(f"track:{tid}")
    decision = client.latest_annotation(video) if video else None
    rejected = _rejected(decision, result) if decision else set()
    for obj in result["objects"]:
        key = str(obj["obj_id"])
        state = "pending" if decision is None else ("rejected" if key in rejected else "accepted")
        review["objects"][key] = {"label": obj["label"], "decision": state, "reviewed_frames": reviewed[key],
                                  "corrected_frames": corrected[key]}
    write_json_atomic(folder / REVIEW_NAME, review)
    return review


def sync_track_reviews(ls: Any, run_dir: Path, cfg: Config) -> dict[str, Any]:
    """Read the run's track reviews back (module docstring); a summary and the track rows' manifest updates."""
    run_dir = Path(run_dir).resolve()
    run = relative_to_workspace(run_dir)
    frames_by_key = {t["data"]["castlab_key"]: t for t in client.run_tasks(ls, frames_title(cfg), run)}
    videos_by_key = {t["data"]["castlab_key"]: t for t in client.run_tasks(ls, tracks_title(cfg), run)}
    summary: dict[str, Any] = {"tracks": 0, "reviewed_frames": 0, "corrected_frames": 0, "invalid_frames": 0,
                               "accepted": 0, "rejected": 0, "pending": 0, "errors": []}
    updates = []
    for folder in run_tracks(run_dir):
        review = _sync_one(folder, frames_by_key, videos_by_key)
        summary["tracks"] += 1
        summary["invalid_frames"] += sum(1 for f in review["frames"].values() if f["state"] == "invalid")
        summary["reviewed_frames"] += sum(1 for f in review["frames"].values() if f["state"] == "reviewed")
        summary["errors"] += review["errors"]
        for obj_id, state in review["objects"].items():
            summary[state["decision"]] += 1
            summary["corrected_frames"] += state["corrected_frames"]
            updates.append({"row_id": f"track:{review['track_id']}:{obj_id}", "review_state": state["decision"],
                            "track_reviewed_frames": state["reviewed_frames"],
                            "track_corrected_frames": state["corrected_frames"]})
    for error in summary["errors"]:
        log.warning("track review not applied: %s", error)
    summary["updates"] = updates
    return summary
