"""The captions review project (``label_configs/captions.xml``): one task per captioned instance.

A task shows the instance crop, its reviewed identity with the identity's cluster description, the QC flags
and the model's own sentence; its prediction pre-fills the caption TextArea and the per-field Choices the
caption was built from. Flagged captions are imported first (highest review priority first) and carry a
lower prediction score, so both the default order and "sort by prediction score" put them first.

Task keys are the instance's content (``caption:<video id>:<frame index>:<mask digest>``,
:func:`castlab.labelstudio.projects.identity.instance_key`), never the run: pushing again, re-captioning with
``--force`` or a second run of the same footage adds no task (a re-used task joins the run, ``castlab_runs``) and
review-sync finds the earlier answer by that key; a task not yet annotated whose caption changed gets the new
prediction.

``sync_caption_reviews`` reads each task's latest annotation: an edited text is the reviewed caption; an
unchanged text with corrected Choices is rebuilt from the corrected fields; otherwise the prediction is
accepted. It writes ``caption`` (what the dataset uses), ``caption_state`` and ``caption_edited`` on the
instance, and the reviewed/edited fields of ``captions.jsonl`` and the report. A reviewed caption over
``dataset.caption_max_tokens`` CLIP tokens is kept as written and listed in the result (``over_max_tokens``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from castlab.captions.qc import review_priority
from castlab.captions.schema import CHOICE_FIELDS, get_field
from castlab.captions.stage import CAPTIONS_DIR, identified, label_text, read_labels, read_records, write_records
from castlab.captions.text import caption_from_choices, count_clip_tokens
from castlab.config import PROJECT_ROOT, Config
from castlab.labelstudio import client
from castlab.labelstudio.projects.identity import instance_keys
from castlab.manifest import Manifest
from castlab.reviews.hooks import watch_project
from castlab.workspace import relative_to_workspace, resolve_in_workspace, write_json_atomic

LABEL_CONFIG = PROJECT_ROOT / "label_configs" / "captions.xml"
PUSH_NAME = "captions_push.json"
# schema field path → the Choices control that shows it (Label Studio names cannot hold dots)
CONTROLS = {"view": "view", "camera.shot_size": "shot_size", "camera.angle": "angle",
            "lighting.key": "key_light", "lighting.rim": "rim_light", "lighting.fill": "fill_light"}


def prediction_result(record: dict[str, Any]) -> list[dict[str, Any]]:
    """TextArea (the caption) + one Choices per closed-vocabulary field, as a Label Studio result."""
    row = str(record["row_id"])
    result = [{"id": client.result_id(row, "caption"), "from_name": "caption", "to_name": "crop", "type": "textarea",
               "value": {"text": [record["caption"]]}}]
    for path, control in CONTROLS.items():
        value = get_field(record["fields"], path)
        if value in CHOICE_FIELDS[path]:
            result.append({"id": client.result_id(row, control), "from_name": control, "to_name": "crop",
                           "type": "choices", "value": {"choices": [value]}})
    return result


def prediction(record: dict[str, Any]) -> dict[str, Any]:
    """The Label Studio prediction of a captioned record; its score falls as its review priority rises."""
    priority = review_priority(record["flags"])
    return {"result": prediction_result(record), "model_version": record["model_version"],
            "score": round(1.0 / (1 + priority), 4)}


def build_caption_tasks(records: list[dict[str, Any]], manifest: Manifest, run_dir: Path,
                        labels: dict[str, Any], keys: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Tasks for the captioned (status ok) records, most flagged first; a record whose identity changed since
    it was captioned (re-reviewed) is flagged ``character_mismatch``. `keys`: the instances' content keys
    (:func:`~castlab.labelstudio.projects.identity.instance_keys`, computed when not given; no key, no task)."""
    run_rel = relative_to_workspace(Path(run_dir))
    rows = {r["row_id"]: r for r in manifest.rows(kind="instance")}
    ready = [r for r in records if r.get("status") == "ok" and r.get("caption") and r["row_id"] in rows]
    keys = keys if keys is not None else instance_keys([rows[r["row_id"]] for r in ready])[0]
    tasks, asked = [], set()
    for record in ready:
        key = keys.get(record["row_id"])
        if key is None or key in asked:  # no readable mask; or the same content twice: asked once
            continue
        asked.add(key)
        identity = str(record["identity"])
        current = identified(rows[record["row_id"]])
        if current != identity:  # the identity was re-reviewed after captioning: this caption names the wrong one
            record = {**record, "flags": sorted({*record["flags"], "character_mismatch"})}
        tasks.append({
            "data": {
                "image": client.local_file_url(Path(str(rows[record["row_id"]]["crop_path"]))),
                "castlab_key": f"caption:{key}", "castlab_run": run_rel,
                "instance": record["row_id"], "identity": identity,
                "identity_description": label_text(labels.get(identity)) or "(no description)",
                "qc_flags": ", ".join(record["flags"]) or "none", "priority": review_priority(record["flags"]),
                "model_sentence": str(get_field(record["fields"], "final_caption") or ""),
                "style": record.get("style"),
            },
            "predictions": [prediction(record)],
        })  # fmt: skip
    return sorted(tasks, key=lambda t: (-t["data"]["priority"], t["data"]["instance"]))


def push_captions(ls: Any, manifest: Manifest, run_dir: Path, cfg: Config) -> dict[str, Any]:
    """Create/reuse the captions project, serve the crops, push new tasks; writes ``captions_push.json``."""
    records = read_records(run_dir)
    rows = {r["row_id"]: r for r in manifest.rows(kind="instance")}
    keys, unkeyed = instance_keys([rows[r["row_id"]] for r in records
                                   if r.get("status") == "ok" and r.get("caption") and r["row_id"] in rows])
    tasks = build_caption_tasks(records, manifest, run_dir, read_labels(run_dir), keys)
    title = str(cfg.labelstudio.captions_title)
    project_id = client.ensure_project(ls, title, LABEL_CONFIG.read_text(encoding="utf-8"))
    watch_project(ls, project_id, cfg)  # its reviews move the pipeline (castlab.reviews)
    folders = {Path(t["data"]["image"].split("?d=", 1)[-1]).parent for t in tasks}
    for folder in sorted(folders):
        client.ensure_local_storage(ls, project_id, resolve_in_workspace(str(folder)))
    mapping = client.push_tasks(ls, project_id, tasks, complete_for=relative_to_workspace(Path(run_dir)))
    updated = client.refresh_predictions(ls, project_id, tasks, set(mapping.created), _caption_of)
    summary: dict[str, Any] = {
        "project_id": int(project_id), "title": title, "tasks": len(mapping), "new_tasks": len(mapping.created),
        "reused_tasks": len(mapping.joined), "updated_predictions": updated,
        "flagged_first": sum(1 for t in tasks if t["data"]["priority"] > 0)}
    if unkeyed:
        summary["failed"] = unkeyed  # recorded, not asked: their masks or crops cannot be read
    write_json_atomic(Path(run_dir) / CAPTIONS_DIR / PUSH_NAME, summary)
    return summary


def _caption_of(result: list[dict[str, Any]]) -> str:
    return next((" ".join(r["value"]["text"]) for r in result if r.get("from_name") == "caption"), "")


def annotation_answer(annotation: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(caption text, {field path: chosen value}) of a captions annotation."""
    text, choices = "", {}
    paths = {control: path for path, control in CONTROLS.items()}
    for result in annotation.get("result") or []:
        value = result.get("value") or {}
        name = result.get("from_name")
        if name == "caption" and value.get("text"):
            text = " ".join(str(t) for t in value["text"]).strip()
        elif name in paths and value.get("choices"):
            choices[paths[name]] = str(value["choices"][0])
    return text, choices


def reviewed_caption(record: dict[str, Any], annotation: dict[str, Any], cfg: Config,
                     usual: dict[str, str] | None) -> tuple[str, bool]:
    """(reviewed caption, edited?) from the record's prediction and the reviewer's annotation."""
    text, choices = annotation_answer(annotation)
    predicted = str(record.get("caption") or "")
    changed = {p: v for p, v in choices.items() if v != get_field(record["fields"], p)}
    if text and " ".join(text.split()) != " ".join(predicted.split()):
        return text, True
    if changed:
        rebuilt = caption_from_choices(record["fields"], changed, cfg, record.get("style"), usual)
        return rebuilt.text, rebuilt.text != predicted
    return predicted, False


def sync_caption_reviews(ls: Any, manifest: Manifest, run_dir: Path, cfg: Config) -> dict[str, Any]:
    """Apply the latest annotation of every captions task of this run, and of every task of its instances' content
    whoever pushed it (see module doc); rewrites the report."""
    from castlab.captions.report import write_caption_report

    run_dir = Path(run_dir)
    run = relative_to_workspace(run_dir)
    records = read_records(run_dir)
    by_row = {r["row_id"]: r for r in records}
    rows = {r["row_id"]: r for r in manifest.rows(kind="instance")}
    keys = instance_keys([rows[r] for r in by_row if r in rows and by_row[r].get("fields")])[0]
    by_key: dict[str, list[str]] = {}
    for row_id, key in keys.items():
        by_key.setdefault(f"caption:{key}", []).append(row_id)
    labels = read_labels(run_dir)
    reviewed = edited = 0
    too_long: list[str] = []
    max_tokens = int(cfg.dataset.caption_max_tokens)
    project_id = client.find_project(ls, str(cfg.labelstudio.captions_title))
    answers: dict[str, dict[str, Any]] = {}
    for task in client.list_tasks(ls, project_id) if project_id is not None else []:
        data = task.get("data") or {}
        annotation = client.latest_annotation(task)
        targets = by_key.get(str(data.get("castlab_key"))) or (
            [str(data.get("instance"))] if client.in_run(task, run) else [])  # pushed before content keys
        for row_id in targets if annotation is not None else []:  # two tasks of one instance: the newer answer
            if row_id not in answers or client.annotation_order(annotation) > client.annotation_order(answers[row_id]):
                answers[row_id] = annotation
    for row_id, annotation in answers.items():
        record = by_row.get(row_id)
        if record is None or not record.get("fields"):
            continue
        usual = (labels.get(str(record["identity"])) or {}).get("usual")
        text, was_edited = reviewed_caption(record, annotation, cfg, usual)
        tokens = count_clip_tokens(text)
        record.update(reviewed_caption=text, edited=was_edited, reviewed_tokens=tokens)
        manifest.update(record["row_id"], caption=text, caption_state="reviewed", caption_edited=was_edited,
                        caption_reviewed_tokens=tokens)
        reviewed += 1
        edited += int(was_edited)
        if tokens > max_tokens:  # kept as the reviewer wrote it; CLIP will only see the first 77 tokens
            too_long.append(record["row_id"])
    out = run_dir / CAPTIONS_DIR
    write_records(out, records)
    trigger = [str(cfg.dataset.trigger_token), str(cfg.dataset.class_word)]
    write_caption_report(out, records, cfg.profile, int(cfg.dataset.caption_min_tokens),
                         int(cfg.dataset.caption_max_tokens), trigger)
    return {"reviewed": reviewed, "edited": edited, "over_max_tokens": too_long}


def accept_caption_predictions(ls: Any, run_dir: Path, cfg: Config) -> int:
    """Demo reviewer: accept the caption predictions of the run's tasks as they are."""
    run = relative_to_workspace(Path(run_dir))
    project_id = client.find_project(ls, str(cfg.labelstudio.captions_title))
    if project_id is None:
        return 0
    return client.accept_predictions(ls, project_id, lambda t: client.in_run(t, run))
