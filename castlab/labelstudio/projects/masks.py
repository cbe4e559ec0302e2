"""The *masks* review project: push frames with SAM2 brush predictions, pull reviewed masks back.

One task per kept frame (reviewers can add characters the model missed), one BrushLabels region
per instance. Task keys are manifest row ids, so pushing again never duplicates a task.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from castlab.config import PROJECT_ROOT, Config, load_config
from castlab.labelstudio import client
from castlab.layers import read_mask, write_instance_layers
from castlab.manifest import Manifest
from castlab.reviews.hooks import watch_project
from castlab.segment.background import BackgroundSettings, write_background
from castlab.workspace import relative_to_workspace, write_json_atomic

log = logging.getLogger(__name__)
LABEL_CONFIG = PROJECT_ROOT / "label_configs" / "masks.xml"
CHARACTER_LABEL = "character"


def region_id(instance_row_id: str) -> str:
    """Stable Label Studio region id for an instance (survives review, links results back)."""
    return hashlib.sha1(instance_row_id.encode()).hexdigest()[:10]


def build_tasks(manifest: Manifest, run_dir: Path) -> list[dict[str, Any]]:
    """Label Studio task dicts (data + inline predictions) for every kept frame of the run."""
    instances: dict[str, list[dict[str, Any]]] = {}
    for inst in manifest.rows(kind="instance", status="kept"):
        instances.setdefault(inst["parent_id"], []).append(inst)
    run_rel = relative_to_workspace(run_dir)
    tasks = []
    for frame in manifest.rows(kind="frame", status="kept"):
        width, height = int(frame["width"]), int(frame["height"])
        regions, scores, versions = [], [], set()
        for inst in instances.get(frame["row_id"], []):
            mask = read_mask(inst["mask_path"])
            regions.append(
                client.brush_result(mask, CHARACTER_LABEL, width, height, region_id=region_id(inst["row_id"]))
            )
            scores.append(float(inst["score"]))
            versions.add(inst["model_version"])
        task: dict[str, Any] = {
            "data": {
                "image": client.local_file_url(Path(frame["path"])),
                "castlab_key": frame["row_id"],
                "castlab_run": run_rel,
                "shot_id": frame.get("shot_id"),
                "frame_index": frame.get("frame_index"),
            },
            "predictions": [],
        }
        if regions:
            task["predictions"].append(
                {"result": regions, "score": float(np.mean(scores)), "model_version": sorted(versions)[0]}
            )
        tasks.append(task)
    return tasks


def push_masks(ls: Any, manifest: Manifest, run_dir: Path, cfg: Config, title: str | None = None) -> dict:
    """Create/reuse the masks project, serve the run's frames from local storage, push new tasks.

    Task ids are recorded in the manifest in memory (``ls_project_id``, ``ls_task_id``; the caller saves it).
    An interrupted push loses nothing: tasks carry a stable key, so the next push finds those that reached
    Label Studio, records their ids and sends only the rest.
    """
    title = title or cfg.labelstudio.masks_project_title
    project_id = client.ensure_project(ls, title, LABEL_CONFIG.read_text(encoding="utf-8"))
    watch_project(ls, project_id, cfg)  # its reviews move the pipeline (castlab.reviews)
    frames_dir = Path(manifest.rows(kind="frame")[0]["path"]).parent if len(manifest) else run_dir
    client.ensure_local_storage(ls, project_id, frames_dir)
    tasks = build_tasks(manifest, run_dir)
    known = {r["row_id"] for r in manifest.rows(kind="frame")}

    def record(mapping: dict[str, int]) -> None:
        for key, task_id in mapping.items():
            if key in known:
                manifest.update(key, ls_project_id=int(project_id), ls_task_id=int(task_id))

    mapping = client.push_tasks(ls, project_id, tasks, on_chunk=record)
    record(mapping)
    summary = {
        "project_id": int(project_id),
        "title": title,
        "tasks": len(mapping),
        "new_tasks": len(mapping.created),
        "predicted_regions": sum(len(t["predictions"][0]["result"]) for t in tasks if t["predictions"]),
    }
    write_json_atomic(run_dir / "labelstudio_push.json", summary)
    return summary


def sync_mask_reviews(ls: Any, manifest: Manifest, run_dir: Path, cfg: Config | None = None) -> dict[str, int]:
    """Pull the latest annotation of every task of this run back into the manifest.

    Kept regions update their instance (``review_state`` accepted or corrected, reviewed mask and
    re-cut layers); regions a reviewer drew are added as new instances; instances a reviewer deleted
    stay in the manifest as rejected with reason "removed in review". An annotation whose mask does not
    fit its frame (an RLE of another size) is not applied at all: the frame gets ``review_state`` invalid
    and a ``review_error`` naming the task and region, and the other tasks go on. A reviewed frame's background
    is re-inpainted from its kept reviewed masks into ``background/reviewed/`` (``background_path`` on
    those instances), with the ``segmentation.background_*`` settings of `cfg`, by default the run's
    own ``config.yaml`` over the defaults.
    """
    background = BackgroundSettings.from_config(cfg if cfg is not None else run_config(run_dir))
    counts = dict.fromkeys(("tasks", "reviewed", "invalid", "pending", "accepted", "corrected", "added", "removed"), 0)
    frames = {r["row_id"]: r for r in manifest.rows(kind="frame")}
    project_ids = {r.get("ls_project_id") for r in frames.values() if r.get("ls_project_id") is not None}
    instances = manifest.rows(kind="instance")
    by_region = {region_id(i["row_id"]): i for i in instances}
    for project_id in project_ids:
        for task in client.list_tasks(ls, int(project_id)):
            frame = frames.get((task.get("data") or {}).get("castlab_key"))
            if frame is None:
                continue
            counts["tasks"] += 1
            annotation = client.latest_annotation(task)
            if annotation is None:
                manifest.update(frame["row_id"], review_state="pending")
                counts["pending"] += 1
                continue
            image = np.asarray(Image.open(frame["path"]).convert("RGB"))
            try:
                masks = _annotation_masks(annotation, image.shape[:2])
            except ValueError as exc:  # nothing of this annotation is applied; the others go on
                problem = f"task {task.get('id')}, annotation {annotation.get('id')}: {exc}"
                log.warning("review-sync %s: %s", frame["row_id"], problem)
                manifest.update(frame["row_id"], review_state="invalid", review_error=problem)
                counts["invalid"] += 1
                continue
            counts["reviewed"] += 1
            manifest.update(frame["row_id"], review_state="reviewed", review_error=None,
                            ls_annotation_id=int(annotation["id"]))
            _apply_annotation(manifest, run_dir, frame, image, masks, by_region, instances, counts, background)
    write_json_atomic(run_dir / "review_sync.json", counts)
    return counts


def _annotation_masks(annotation: dict[str, Any], shape: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    """(region id, mask) of every brush region; ValueError naming the region when one does not fit the frame."""
    masks = []
    for result in annotation.get("result") or []:
        if result.get("type") != "brushlabels":
            continue
        rid = str(result.get("id"))
        try:
            mask = client.mask_from_result(result).astype(bool)
        except ValueError as exc:
            raise ValueError(f"region {rid}: {exc}") from exc
        if mask.shape != shape:
            raise ValueError(f"region {rid}: mask is {mask.shape[1]}x{mask.shape[0]}, the frame {shape[1]}x{shape[0]}")
        masks.append((rid, mask))
    return masks


def _apply_annotation(
    manifest: Manifest,
    run_dir: Path,
    frame: dict[str, Any],
    image: np.ndarray,
    masks: list[tuple[str, np.ndarray]],
    by_region: dict[str, dict[str, Any]],
    instances: list[dict[str, Any]],
    counts: dict[str, int],
    background: BackgroundSettings | None = None,
) -> None:
    seen: set[str] = set()
    kept_masks: list[np.ndarray] = []
    for rid, mask in masks:
        inst = by_region.get(rid)
        if inst is not None and inst["parent_id"] == frame["row_id"]:
            row_id = inst["row_id"]
            state = "accepted" if np.array_equal(mask, read_mask(inst["mask_path"])) else "corrected"
        else:
            row_id = f"{frame['row_id'].replace('frame:', 'inst:', 1)}:r{rid}"
            state = "added"
            manifest.add_rows(
                [{"row_id": row_id, "kind": "instance", "parent_id": frame["row_id"],
                  "shot_id": frame.get("shot_id"), "video_id": frame.get("video_id"), "split": frame.get("split"),
                  "frame_index": frame.get("frame_index"), "model_version": "human"}]
            )
        seen.add(row_id)
        kept_masks.append(mask)
        layers = write_instance_layers(image, mask, run_dir, row_id, subdir="reviewed")
        manifest.update(row_id, status="kept", reject_reason=None, review_state=state,
                        reviewed_mask_path=layers["mask_path"], crop_path=layers["crop_path"],
                        bbox=layers["bbox"], area=layers["area"])
        counts[state] += 1
    bg_path = write_background(image, kept_masks, run_dir, frame["row_id"], background or BackgroundSettings(),
                               subdir="reviewed")
    if bg_path is not None:
        for row_id in seen:
            manifest.update(row_id, background_path=str(bg_path))
    for inst in instances:
        if inst["parent_id"] == frame["row_id"] and inst["row_id"] not in seen:
            manifest.update(inst["row_id"], status="rejected", reject_reason="removed in review",
                            review_state="removed")
            counts["removed"] += 1


def run_config(run_dir: Path) -> Config:
    """The run's resolved ``config.yaml`` over the current defaults (defaults alone if it has none)."""
    path = Path(run_dir) / "config.yaml"
    return load_config(overrides=[path]) if path.is_file() else load_config()


def accept_predictions(ls: Any, manifest: Manifest) -> int:
    """Demo reviewer: accept the predictions of the run's frame tasks (:func:`client.accept_predictions`)."""
    project_ids = {r["ls_project_id"] for r in manifest.rows(kind="frame") if r.get("ls_project_id") is not None}
    keys = {r["row_id"] for r in manifest.rows(kind="frame")}
    return sum(client.accept_predictions(ls, int(pid), lambda t: (t.get("data") or {}).get("castlab_key") in keys)
               for pid in project_ids)


def push_propagation(ls: Any, result: dict[str, Any], run_dir: Path, cfg: Config, title: str | None = None) -> dict:
    """One masks-project task per propagated frame, the propagated mask as its prediction (re-runs add none)."""
    title = title or cfg.labelstudio.masks_project_title
    project_id = client.ensure_project(ls, title, LABEL_CONFIG.read_text(encoding="utf-8"))
    watch_project(ls, project_id, cfg)  # its reviews move the pipeline (castlab.reviews)
    frames_dir = Path(result["frames"][0]["frame_path"]).parent
    client.ensure_local_storage(ls, project_id, frames_dir)
    tasks = []
    for entry in result["frames"]:
        mask = read_mask(entry["mask_path"])
        height, width = mask.shape
        key = f"prop:{result['instance']}:{entry['frame_index']}"
        region = client.brush_result(mask.astype(np.uint8), CHARACTER_LABEL, width, height,
                                     region_id=hashlib.sha1(key.encode()).hexdigest()[:10])
        tasks.append({
            "data": {"image": client.local_file_url(Path(entry["frame_path"])), "castlab_key": key,
                     "castlab_run": relative_to_workspace(Path(run_dir)), "shot_id": result["shot_id"],
                     "frame_index": entry["frame_index"], "propagated_from": result["instance"]},
            "predictions": [{"result": [region] if mask.any() else [], "score": 1.0 if entry["seed"] else 0.5,
                             "model_version": result["model_version"]}],
        })
    mapping = client.push_tasks(ls, project_id, tasks)
    return {"project_id": int(project_id), "tasks": len(mapping), "new_tasks": len(mapping.created)}
