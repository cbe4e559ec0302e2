"""The review projects of the dataset types (``label_configs/<type>.xml``; title ``types.<type>.title``): one
task per ok record of ``<run>/<type>/records.jsonl``.

A task shows the record's image, its labels and the VLM's own sentence; its prediction pre-fills the caption body
(TextArea; the trigger and class word are added in front by the dataset) and one Choices per reviewed label (the
type's closed schema fields, and the measured ones: lighting's, a pose's category and view, an expression) and for a
pose its keypoints (KeyPointLabels). Task keys are the content (``<type>:<video id>:<frame index>:<image source>``,
for an instance type ``<type>:<instance key>``), never the run: pushing again or a second run of the same footage adds
no task (a re-used task joins the run) and review-sync finds the answer by that key.

:func:`sync_typed_reviews` writes each reviewed record's ``review``: ``labels`` (every Choices answer),
``caption`` (the text when the reviewer edited it, else None: the dataset rebuilds the body from the reviewed
labels), ``edited`` and for a pose ``keypoints`` (as placed; the dataset's skeleton is drawn from them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from castlab.config import Config
from castlab.labelstudio import client
from castlab.layers import media_path
from castlab.reviews.hooks import watch_project
from castlab.typed.spec import DatasetType, control_name, dataset_type
from castlab.typed.stage import SUMMARY_NAME, read_records, summarise, type_dir, write_records
from castlab.workspace import relative_to_workspace, resolve_in_workspace, write_json_atomic

PUSH_NAME = "push.json"
CAPTION = "type_caption"  # the TextArea (not "caption": the ML backend suggests character captions to that one)


def task_key(record: dict[str, Any]) -> str:
    """The content key of a record's task (module docstring)."""
    if record.get("instance"):
        return f"{record['type']}:{record.get('content_key') or record['row_id']}"
    where = f"{record.get('video_id') or 'video'}:{record.get('frame_index', record['row_id'])}"
    return f"{record['type']}:{where}:{record.get('source') or 'frame'}"


def keypoint_results(record: dict[str, Any], min_confidence: float) -> list[dict[str, Any]]:
    """The record's keypoints (image pixels) found with at least `min_confidence`, as KeyPointLabels results (in
    percent of the image, as Label Studio stores them)."""
    from castlab.pose.geometry import COCO_KEYPOINTS

    width, height = record.get("size") or (0, 0)
    results = []
    for name, (x, y, confidence) in zip(COCO_KEYPOINTS, record.get("keypoints") or [], strict=False):
        if confidence < min_confidence or not (0 <= x <= width and 0 <= y <= height) or not width or not height:
            continue
        results.append({"id": client.result_id(record["row_id"], name), "from_name": "keypoints", "to_name": "image",
                        "type": "keypointlabels", "original_width": width, "original_height": height,
                        "value": {"x": 100.0 * x / width, "y": 100.0 * y / height, "width": 0.6,
                                  "keypointlabels": [name]}})
    return results


def reviewed_keypoints(result: list[dict[str, Any]], size: tuple[int, int]) -> list[list[float]] | None:
    """Keypoints (17, 3: x, y in image pixels, confidence 1 when placed, 0 when absent) of an annotation's
    KeyPointLabels; None when it has none."""
    from castlab.pose.geometry import COCO_KEYPOINTS

    placed = {}
    for item in result:
        value = item.get("value") or {}
        names = value.get("keypointlabels") or []
        if item.get("type") == "keypointlabels" and names and names[0] in COCO_KEYPOINTS:
            placed[names[0]] = [float(value["x"]) * size[0] / 100.0, float(value["y"]) * size[1] / 100.0, 1.0]
    if not placed:
        return None
    return [[round(v, 2) for v in placed.get(name, [0.0, 0.0, 0.0])] for name in COCO_KEYPOINTS]


def prediction_result(record: dict[str, Any], kind: DatasetType, cfg: Config) -> list[dict[str, Any]]:
    """TextArea (the caption body) + one Choices per reviewed label whose value is in its vocabulary (+ the
    keypoints of a pose)."""
    row = record["row_id"]
    result = [{"id": client.result_id(row, "caption"), "from_name": CAPTION, "to_name": "image", "type": "textarea",
               "value": {"text": [record.get("caption_pred") or ""]}}]
    labels = record.get("labels") or {}
    for path, values in kind.reviewed.items():
        if labels.get(path) in values:
            result.append({"id": client.result_id(row, path), "from_name": control_name(path), "to_name": "image",
                           "type": "choices", "value": {"choices": [labels[path]]}})
    if kind.keypoints:
        result += keypoint_results(record, float(cfg.pose.min_confidence))
    return result


def _sentence(record: dict[str, Any]) -> str:
    sources = record.get("expression_sources")
    if sources:
        said = f"{sources['caption_phrase']!r} → {sources['caption']}" if sources.get("caption") else "no expression"
        return f"caption: {said}; open_clip: {sources['zero_shot']} ({sources['zero_shot_probability']:.2f})"
    return str((record.get("fields") or {}).get("final_caption") or "(none)")


def build_tasks(records: list[dict[str, Any]], run_dir: Path, kind: DatasetType, cfg: Config) -> list[dict]:
    """One task per ok record (the first of two records with one content key), in row order."""
    run = relative_to_workspace(Path(run_dir))
    balance = str(kind.settings(cfg).balance)
    tasks, seen = [], set()
    for record in sorted((r for r in records if r["status"] == "ok"), key=lambda r: r["row_id"]):
        key = task_key(record)
        if key in seen:
            continue
        seen.add(key)
        labels = record.get("labels") or {}
        summary = ", ".join(f"{k} {labels[k]}" for k in (balance, "scene") if k in labels) or "no labels"
        tasks.append({
            "data": {"image": client.local_file_url(media_path(record["image"])),
                     "castlab_key": key, "castlab_run": run, "record": record["row_id"], "type": kind.name,
                     "summary": summary, "model_sentence": _sentence(record)},
            "predictions": [{"result": prediction_result(record, kind, cfg),
                             "model_version": record["model_version"], "score": 1.0}],
        })
    return tasks


def push_typed(ls: Any, run_dir: Path, name: str, cfg: Config) -> dict[str, Any]:
    """Create/reuse the type's project, serve its images, push new tasks; writes ``<run>/<type>/push.json``."""
    kind = dataset_type(name)
    tasks = build_tasks(read_records(Path(run_dir), name), Path(run_dir), kind, cfg)
    title = str(kind.settings(cfg).title)
    project_id = client.ensure_project(ls, title, kind.label_config)
    watch_project(ls, project_id, cfg)
    for folder in sorted({Path(t["data"]["image"].split("?d=", 1)[-1]).parent for t in tasks}):
        client.ensure_local_storage(ls, project_id, resolve_in_workspace(str(folder)))
    mapping = client.push_tasks(ls, project_id, tasks, complete_for=relative_to_workspace(Path(run_dir)))
    updated = client.refresh_predictions(ls, project_id, tasks, set(mapping.created), _answer)
    summary = {"project_id": int(project_id), "title": title, "tasks": len(mapping),
               "new_tasks": len(mapping.created), "reused_tasks": len(mapping.joined),
               "updated_predictions": updated}
    write_json_atomic(type_dir(Path(run_dir), name) / PUSH_NAME, summary)
    return summary


def _answer(result: list[dict[str, Any]]) -> tuple[str, dict[str, str], list[tuple[str, float, float]]]:
    text, choices, points = "", {}, []
    for item in result or []:
        value = item.get("value") or {}
        if item.get("from_name") == CAPTION and value.get("text"):
            text = " ".join(str(t) for t in value["text"]).strip()
        elif value.get("choices"):
            choices[str(item.get("from_name"))] = str(value["choices"][0])
        elif value.get("keypointlabels"):
            points.append((str(value["keypointlabels"][0]), round(float(value["x"]), 2), round(float(value["y"]), 2)))
    return text, choices, sorted(points)


def annotation_answer(annotation: dict[str, Any], kind: DatasetType) -> tuple[str, dict[str, str]]:
    """(caption text, {label path: chosen value}) of an annotation of a `kind` task."""
    text, by_control, _ = _answer(annotation.get("result") or [])
    paths = {control_name(p): p for p in kind.reviewed}
    return text, {paths[c]: v for c, v in by_control.items() if c in paths}


def sync_typed_reviews(ls: Any, run_dir: Path, name: str, cfg: Config) -> dict[str, Any]:
    """Apply the latest annotation of each record's task (module docstring); rewrites the records."""
    kind = dataset_type(name)
    run_dir = Path(run_dir)
    records = read_records(run_dir, name)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["status"] == "ok":
            by_key.setdefault(task_key(record), []).append(record)
    project_id = client.find_project(ls, str(kind.settings(cfg).title))
    answers: dict[str, dict[str, Any]] = {}
    for task in client.list_tasks(ls, project_id) if project_id is not None else []:
        annotation = client.latest_annotation(task)
        key = str((task.get("data") or {}).get("castlab_key"))
        if annotation is None or key not in by_key:
            continue
        if key not in answers or client.annotation_order(annotation) > client.annotation_order(answers[key]):
            answers[key] = annotation
    edited = 0
    for key, annotation in answers.items():
        text, labels = annotation_answer(annotation, kind)
        for record in by_key[key]:
            predicted = " ".join(str(record.get("caption_pred") or "").split())
            was_edited = bool(text) and " ".join(text.split()) != predicted
            record["review"] = {"state": "reviewed", "labels": labels, "caption": text if was_edited else None,
                                "edited": was_edited}
            if kind.keypoints:
                record["review"]["keypoints"] = reviewed_keypoints(annotation.get("result") or [],
                                                                   tuple(record.get("size") or (0, 0)))
            edited += int(was_edited)
    write_records(run_dir, name, records)
    write_json_atomic(type_dir(run_dir, name) / SUMMARY_NAME, summarise(run_dir, name, records, cfg))
    return {"reviewed": sum(len(by_key[k]) for k in answers), "edited": edited, "tasks_answered": len(answers)}

