"""The video stage: every object of a frame carried through its shot (``castlab track``).

Objects come from the run's reviewed instances of a frame (each its own SAM2 object id, its reviewed identity
carried along), from instance ids named explicitly, or from a text query that an open-vocabulary detector turns
into boxes (:mod:`castlab.models.grounding`). :func:`castlab.video.track.track_objects` carries them all through
the shot in one pass per window. The result is written under ``tracks/<track id>/``:

- ``frames/<frame>.jpg``: the shot's frames (what Label Studio shows and the exports cut from);
- ``masks/<object id>/<frame>.png``: each object's mask on every frame where it is present;
- ``track.json``: objects (id, label, identity, source instance or query, frames present, frames absent), frames,
  model version and profile (``tiny-`` under the tiny profile), timing;
- ``EXPERIMENT.md``: the run's experiment log (:mod:`castlab.video.experiment`).

``track.json`` is written last: a finished track is reused as it is unless ``force``; an interrupted one is
tracked again (decoded frames are kept). :func:`track_rows` gives the manifest rows (``kind="track"``, one per
object) that the flow, the manifest's one writer, records.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from castlab.config import Config
from castlab.dataset.candidates import has_reviewed_identity, reviewed_instances
from castlab.errors import InputError
from castlab.layers import instance_mask, mask_bbox, safe_name, write_mask
from castlab.manifest import MANIFEST_NAME, Manifest, row_text
from castlab.models.segmenter import alpha_threshold, logit
from castlab.segment.propagate import decode_frames, load_video_predictor, shot_range
from castlab.video.experiment import write_track_log
from castlab.video.track import Track, plan_windows, track_objects
from castlab.workspace import read_json, write_json_atomic

TRACKS_DIR = "tracks"
RESULT_NAME = "track.json"


@dataclass(frozen=True)
class TrackObject:
    """One tracked object: its SAM2 object id, how reviewers see it, and where its seed came from."""

    obj_id: int
    label: str  # the reviewed identity, the query, or "object <id>"
    identity: str | None  # the instance's reviewed identity (None when not reviewed, or from a query)
    instance: str | None  # the seed instance's row id (None for a query)
    source: str  # "instance" | "query"
    score: float | None = None  # the detector's score (query objects)


@dataclass
class Seeds:
    frame: dict[str, Any]  # the frame's manifest row
    objects: list[TrackObject]
    masks: dict[int, np.ndarray]  # object id → boolean mask on the frame


def _manifest_row(manifest: Manifest, row_id: str, kind: str) -> dict[str, Any]:
    try:
        row = manifest.get(row_id)
    except KeyError:
        row = None
    if row is None or row.get("kind") != kind:
        raise InputError(manifest.path, f"has no {kind} {row_id!r} (ids look like {kind[:5]}:<video>:<frame>...)")
    return row


def instance_seeds(manifest: Manifest, frame: str | None = None, instances: list[str] | None = None) -> Seeds:
    """The objects to track: the named instances (all on one frame), or every reviewed instance of `frame`."""
    if instances:
        rows = [_manifest_row(manifest, i, "instance") for i in instances]
        parents = sorted({str(r.get("parent_id")) for r in rows})
        if len(parents) != 1:
            raise InputError(manifest.path, f"instances {instances} lie on different frames {parents}: track the "
                                            "objects of one frame at a time")
        if frame and parents[0] != frame:
            raise InputError(manifest.path, f"instances {instances} are not on frame {frame!r}")
        frame_row = _manifest_row(manifest, parents[0], "frame")
    elif frame:
        frame_row = _manifest_row(manifest, frame, "frame")
        rows = [r for r in reviewed_instances(manifest) if r.get("parent_id") == frame]
        if not rows:
            raise InputError(manifest.path, f"frame {frame!r} has no reviewed instance: review its masks first, "
                                            "name instances with --instance, or give a text --query")
    else:
        raise InputError(manifest.path, "say what to track: a frame, instance ids, or a frame and a text query")
    objects, masks = [], {}
    for obj_id, row in enumerate(rows, start=1):
        identity = row_text(row.get("identity")) if has_reviewed_identity(row) else None
        objects.append(TrackObject(obj_id, identity or f"object {obj_id}", identity, str(row["row_id"]), "instance"))
        masks[obj_id] = instance_mask(row, manifest.path)
    return Seeds(frame_row, objects, masks)


def query_seeds(cfg: Config, manifest: Manifest, frame: str, query: str, grounder: Any = None,
                segmenter: Any = None) -> Seeds:
    """Objects from a text query on `frame`: the detector's boxes (best first) prompt SAM2's image predictor."""
    from castlab.models.grounding import boxes_to_masks, ground_boxes, load_grounder

    frame_row = _manifest_row(manifest, frame, "frame")
    image = Image.open(str(frame_row["path"])).convert("RGB")
    grounder = grounder if grounder is not None else load_grounder(cfg)
    detections = ground_boxes(grounder, image, query, cfg.settings.video.grounding, where=str(frame_row["path"]))
    masks = boxes_to_masks(cfg, image, detections, segmenter)
    label = " ".join(query.strip().rstrip(".").split())
    objects = [TrackObject(k, f"{label} {k}" if len(detections) > 1 else label, None, None, "query", float(d.score))
               for k, d in enumerate(detections, start=1)]
    return Seeds(frame_row, objects, {k: masks[k] for k in range(1, len(detections) + 1)})


def track_id(frame: dict[str, Any], query: str | None, instances: list[str | None]) -> str:
    """``<video>-<shot>-<frame>-<digest of the objects>``: the same objects of the same frame, the same folder."""
    what = json.dumps({"query": query, "instances": instances}, sort_keys=True)
    digest = hashlib.sha1(what.encode()).hexdigest()[:6]
    return safe_name(f"{frame['video_id']}-{frame['shot_id']}-{int(frame['frame_index']):06d}-{digest}")


def track(
    cfg: Config, run_dir: Path, frame: str | None = None, instances: list[str] | None = None, query: str | None = None,
    predictor: Any = None, model_version: str | None = None, grounder: Any = None, force: bool = False,
) -> dict[str, Any]:
    """Track the objects of one frame through its shot (module docstring); the ``track.json`` content."""
    run_dir = Path(run_dir).resolve()
    manifest = Manifest.load(run_dir / MANIFEST_NAME)
    if query:
        if not frame:
            raise InputError(manifest.path, "a text query needs the frame it is asked on (--frame)")
        tid = track_id(_manifest_row(manifest, frame, "frame"), query, [None])
    else:
        seeds = instance_seeds(manifest, frame, instances)
        tid = track_id(seeds.frame, query, [o.instance for o in seeds.objects])
    out = run_dir / TRACKS_DIR / tid
    if (out / RESULT_NAME).is_file() and not force:  # a query's is reused before the detector and SAM2 load
        return {**load_track(out), "reused": True}
    if query:
        seeds = query_seeds(cfg, manifest, frame, query, grounder)
    row = seeds.frame
    video, shot = shot_range(run_dir, str(row["video_id"]), str(row["shot_id"]))
    first, last, seed_frame = int(shot["start_frame"]), int(shot["end_frame"]), int(row["frame_index"])
    plan = plan_windows(seed_frame, first, last, int(cfg.propagation.max_frames))  # bad shots fail before work
    frames_dir = out / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)

    def frames_of(start: int, end: int) -> list[np.ndarray]:
        start_time = float(shot["start_time"]) + (start - first) / shot["fps"]
        frames = decode_frames(video, start_time, start, end - start, shot["orientation"])
        for index, rgb in zip(range(start, end), frames, strict=True):
            path = frames_dir / f"{index:06d}.jpg"
            if not path.is_file():
                Image.fromarray(rgb).save(path, quality=95)
        return frames

    frame_shape = frames_of(seed_frame, seed_frame + 1)[0].shape[:2]
    for obj_id, mask in seeds.masks.items():
        if mask.shape != frame_shape:
            raise InputError(f"object {obj_id} ({seeds.objects[obj_id - 1].label})",
                             f"its mask is {mask.shape[1]}x{mask.shape[0]}, the video's frames "
                             f"{frame_shape[1]}x{frame_shape[0]}")
    if predictor is None:
        predictor, model_version = load_video_predictor(cfg)
    started = time.perf_counter()
    with tqdm(total=sum(w.end - w.start for w in plan), unit="frame", desc=f"track {tid}", leave=False) as bar:
        result_track = track_objects(predictor, frames_of, seeds.masks, seed_frame, first, last,
                                     int(cfg.propagation.max_frames), logit(alpha_threshold(cfg)), bar.update)
    seconds = time.perf_counter() - started
    missing = [i for i in range(first, last) if not (frames_dir / f"{i:06d}.jpg").is_file()]
    if missing:  # frames no window needed (every object left before them): the review and exports show them too
        frames_of(min(missing), max(missing) + 1)
    (out / RESULT_NAME).unlink(missing_ok=True)  # an earlier track of the same objects (force) goes first
    shutil.rmtree(out / "masks", ignore_errors=True)
    result = _write(out, tid, run_dir, seeds, result_track, shot, (first, last), query, model_version, cfg)
    result.update(seconds=round(seconds, 3), windows=len(plan),
                  frames_per_s=round((last - first) / seconds, 2) if seconds > 0 else None)
    write_json_atomic(out / RESULT_NAME, result)
    write_track_log(out, result, cfg)
    return {**result, "reused": False}


def _write(out: Path, tid: str, run_dir: Path, seeds: Seeds, result: Track, shot: dict[str, Any],
           frame_range: tuple[int, int], query: str | None, model_version: str | None, cfg: Config) -> dict[str, Any]:
    first, last = frame_range
    frames: list[dict[str, Any]] = []
    for index in range(first, last):
        present = {}
        for obj in seeds.objects:
            mask = result.masks.get(obj.obj_id, {}).get(index)
            if mask is None:
                continue
            path = out / "masks" / str(obj.obj_id) / f"{index:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_mask(path, mask)
            present[str(obj.obj_id)] = {"mask_path": path.relative_to(out).as_posix(), "area": int(mask.sum()),
                                        "bbox": mask_bbox(mask)}
        frames.append({"frame_index": index, "frame_path": f"frames/{index:06d}.jpg", "objects": present})
    height, width = next(iter(seeds.masks.values())).shape
    objects = [{**asdict(o), "present": len(result.masks.get(o.obj_id, {})),
                "absent": sorted(result.absent.get(o.obj_id, []))} for o in seeds.objects]
    return {"track_id": tid, "run": run_dir.name, "video_id": seeds.frame["video_id"],
            "shot_id": seeds.frame["shot_id"],
            "seed_frame": int(seeds.frame["frame_index"]), "seed_row": seeds.frame["row_id"], "first_frame": first,
            "end_frame": last, "fps": float(shot["fps"]), "width": int(width), "height": int(height), "query": query,
            "model_version": model_version, "profile": cfg.profile, "alpha_threshold": alpha_threshold(cfg),
            "max_frames": int(cfg.propagation.max_frames), "objects": objects, "frames": frames}


def load_track(path: Path) -> dict[str, Any]:
    """A ``track.json`` (or its folder); InputError naming the file when it is missing or unreadable."""
    path = Path(path)
    path = path / RESULT_NAME if path.is_dir() else path
    if not path.is_file():
        raise InputError(path, "is missing: run castlab track first")
    return read_json(path)


def run_tracks(run_dir: Path) -> list[Path]:
    """The finished tracks of a run (their folders), in name order."""
    return sorted(p.parent for p in (Path(run_dir) / TRACKS_DIR).glob(f"*/{RESULT_NAME}"))


def track_rows(result: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    """Manifest rows of a track: one per object (``track:<track id>:<object id>``)."""
    path = (Path(run_dir) / TRACKS_DIR / result["track_id"] / RESULT_NAME).as_posix()
    return [{"row_id": f"track:{result['track_id']}:{o['obj_id']}", "kind": "track", "status": "kept",
             "parent_id": o["instance"] or result["seed_row"], "video_id": result["video_id"],
             "shot_id": result["shot_id"], "frame_index": result["seed_frame"], "identity": o["identity"],
             "track_label": o["label"], "track_path": path, "track_present": o["present"],
             "track_absent": len(o["absent"]), "model_version": result["model_version"]} for o in result["objects"]]
