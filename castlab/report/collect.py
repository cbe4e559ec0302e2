"""The numbers of one pipeline run's report, read from what the stages wrote (nothing is recomputed).

A curate run folder holds the manifest and every stage's summary; the datasets built from it are found by their
``metadata.json`` (which lists their source runs), their checkpoints beside them, and the evaluations of those
checkpoints by ``quality_evaluation.json``. Review analytics come from the manifest (what review-sync made of each
pre-annotation) and, for annotator lead times, from Label Studio's tasks when they are given.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from castlab.frames.report import frame_counts
from castlab.layers import read_mask
from castlab.manifest import Manifest
from castlab.workspace import relative_to_workspace, workspace_root

PUSHES = {"masks": "labelstudio_push.json", "identity instances": "identity_push.json:instances",
          "identity clusters": "identity_push.json:clusters", "captions": "captions/captions_push.json"}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_set(value: Any) -> bool:
    return value is not None and value == value and value != ""  # NaN from a parquet column is unset


def funnel(rows: list[dict[str, Any]], shots: dict[str, Any], in_dataset: set[str]) -> dict[str, dict[str, Any]]:
    """Per video and in total: frames decoded → selected → rejected by reason → duplicates → kept → instances →
    reviewed → per identity → captioned → in a dataset."""
    by_video: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_video[str(row.get("video_id") or "?")].append(row)
    videos = (shots or {}).get("videos", {})
    out = {}
    for video, group in sorted(by_video.items()):
        out[video] = _funnel(group, {"videos": {video: videos[video]}} if video in videos else {}, in_dataset)
    out["all"] = _funnel(rows, shots or {}, in_dataset)
    return out


def _funnel(rows: list[dict[str, Any]], shots: dict[str, Any], in_dataset: set[str]) -> dict[str, Any]:
    frames = [r for r in rows if r.get("kind") == "frame"]
    instances = [r for r in rows if r.get("kind") == "instance"]
    kept = [r for r in instances if r.get("status") == "kept"]
    counts = frame_counts(frames, shots)
    named = Counter(str(r["identity"]) for r in kept if _is_set(r.get("identity")))
    stages = {**counts["stages"],
              "instances": len(instances),
              "instances kept": len(kept),
              "reviewed": sum(1 for r in instances if _is_set(r.get("review_state"))),
              "with a named identity": sum(named.values()),
              "captioned": sum(1 for r in kept if _is_set(r.get("caption"))),
              "in a dataset": sum(1 for r in kept if r["row_id"] in in_dataset)}
    return {"stages": stages, "reasons": counts["reasons"], "identities": dict(named.most_common())}


def mask_iou(a: Any, b: Any) -> float | None:
    """IoU of two mask PNGs (None when either is missing or unreadable, or their sizes differ)."""
    try:
        x, y = read_mask(a), read_mask(b)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if x.shape != y.shape:
        return None
    union = np.logical_or(x, y).sum()
    return float(np.logical_and(x, y).sum() / union) if union else 1.0


def mask_review(instances: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model version (of the frame's pre-annotation): masks accepted unchanged, edited (with the IoU between
    the predicted and the reviewed mask), deleted, and masks reviewers added; the share accepted unchanged."""
    out: dict[str, dict[str, Any]] = {}
    frame_version = {r.get("parent_id"): str(r["model_version"]) for r in instances
                     if _is_set(r.get("model_version")) and r.get("review_state") != "added"}
    for row in instances:
        state = row.get("review_state")
        if not _is_set(state):
            continue
        version = str(row.get("model_version")) if state != "added" else frame_version.get(row.get("parent_id"),
                                                                                          "no pre-annotation")
        entry = out.setdefault(version, {"accepted": 0, "corrected": 0, "removed": 0, "added": 0, "ious": []})
        entry[str(state)] = entry.get(str(state), 0) + 1
        if state == "corrected":
            iou = mask_iou(row.get("mask_path"), row.get("reviewed_mask_path"))
            if iou is not None:
                entry["ious"].append(iou)
    for entry in out.values():
        predicted = entry["accepted"] + entry["corrected"] + entry["removed"]
        ious = entry.pop("ious")
        entry["predicted"] = predicted
        entry["accepted_share"] = round(entry["accepted"] / predicted, 4) if predicted else None
        entry["mean_iou_of_edits"] = round(statistics.fmean(ious), 4) if ious else None
    return out


def identity_review(instances: list[dict[str, Any]]) -> dict[str, Any]:
    """Clusters against the names reviewers gave: renames (a cluster named), merges (clusters given one name),
    splits (a cluster given several names), instances moved out of noise; view balance per character."""
    names: dict[int, Counter[str]] = defaultdict(Counter)
    clusters_of: dict[str, set[int]] = defaultdict(set)
    from_noise = 0
    views: dict[str, Counter[str]] = defaultdict(Counter)
    for row in instances:
        name, cluster = row.get("identity"), row.get("identity_cluster")
        if not _is_set(name) or not _is_set(cluster):
            continue
        cluster = int(cluster)
        views[str(name)][str(row.get("view") or "unknown")] += 1
        if cluster < 0:
            from_noise += 1
            continue
        names[cluster][str(name)] += 1
        clusters_of[str(name)].add(cluster)
    return {"clusters_named": len(names),
            "splits": sorted(c for c, n in names.items() if len(n) > 1),
            "merges": {n: sorted(c) for n, c in sorted(clusters_of.items()) if len(c) > 1},
            "named_from_noise": from_noise,
            "views": {n: dict(v.most_common()) for n, v in sorted(views.items())}}


def caption_field_edits(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per schema field, over reviewed captions: how often the field's phrase was taken out by the reviewer (it
    was in the predicted caption and is not in the reviewed one)."""
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        reviewed, predicted = record.get("reviewed_caption"), str(record.get("caption") or "")
        if reviewed is None:
            continue
        for name, value in _leaves(record.get("fields") or {}):
            phrase = str(value).strip()
            if not phrase or phrase not in predicted:
                continue
            entry = out.setdefault(name, {"reviewed": 0, "edited": 0})
            entry["reviewed"] += 1
            entry["edited"] += phrase not in str(reviewed)
    for entry in out.values():
        entry["edited_share"] = round(entry["edited"] / entry["reviewed"], 4)
    return dict(sorted(out.items()))


def _leaves(fields: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for key, value in fields.items():
        if isinstance(value, dict):
            found += _leaves(value, f"{prefix}{key}.")
        else:
            found.append((f"{prefix}{key}", value))
    return found


def lead_times(tasks: list[dict[str, Any]], run: str) -> dict[str, Any]:
    """Annotator lead time (seconds, Label Studio's ``lead_time`` per annotation) over the run's tasks."""
    from castlab.labelstudio.client import in_run

    times = [float(a["lead_time"]) for t in tasks if in_run(t, run)
             for a in t.get("annotations") or [] if _is_set(a.get("lead_time"))]
    if not times:
        return {"annotations": 0}
    return {"annotations": len(times), "median_s": round(statistics.median(times), 2),
            "mean_s": round(statistics.fmean(times), 2), "total_s": round(sum(times), 1)}


def project_ids(run_dir: Path) -> dict[str, int]:
    """The Label Studio projects the run pushed to, by review."""
    found = {}
    for review, spec in PUSHES.items():
        name, _, key = spec.partition(":")
        record = read_json(run_dir / name) or {}
        record = record.get(key) or {} if key else record
        if record.get("project_id") is not None:
            found[review] = int(record["project_id"])
    return found


def datasets_from(run_dir: Path) -> list[Path]:
    """Dataset folders (``metadata.json``) built from this run."""
    run = relative_to_workspace(run_dir)
    return [meta.parent for meta in sorted(workspace_root().glob("runs/*/*/metadata.json"))
            if run in ((read_json(meta) or {}).get("runs") or [])]


def training(dataset: Path) -> list[dict[str, Any]]:
    """Each training of the dataset: steps, final loss, the loss curve picture."""
    out = []
    for path in sorted((dataset / "checkpoints").glob("*-training.json")):
        data = read_json(path) or {}
        losses = [float(x) for x in data.get("losses") or [] if _is_set(x)]
        curve = path.with_name(path.name.replace("-training.json", "-loss.png"))
        out.append({"name": path.name.removesuffix("-training.json"), "steps": data.get("steps"),
                    "final_loss": round(statistics.fmean(losses[-5:]), 5) if losses else None,
                    "base_model_version": data.get("base_model_version"), "profile": data.get("profile"),
                    "loss_curve": str(curve) if curve.is_file() else None})
    return out


def evaluations(dataset: Path) -> list[dict[str, Any]]:
    """Each evaluation of the dataset's checkpoints: ranking, recommendation, the reviewers' pick."""
    out = []
    for path in sorted(workspace_root().glob("runs/*-evaluate/quality_evaluation.json")):
        report = read_json(path) or {}
        if Path(str(report.get("dataset") or "")).resolve() != dataset.resolve():
            continue
        ranked = (report.get("ranking") or {}).get("checkpoints") or {}
        pick = read_json(path.with_name("human_pick.json")) or {}
        comparison = path.with_name((report.get("files") or {}).get("comparison_png", "comparison.png"))
        out.append({"out_dir": str(path.parent), "recommended": report.get("recommended"),
                    "reason": report.get("reason"), "human_pick": pick.get("chosen"),
                    "agreement": pick.get("agreement"), "answers": pick.get("answers"),
                    "ranking": [{"checkpoint": name, "rank": c.get("rank"), "status": c.get("status"),
                                 "score": c.get("score")} for name, c in sorted(
                                     ranked.items(), key=lambda kv: (kv[1].get("rank") or 1e9, kv[0]))],
                    "comparison": str(comparison) if comparison.is_file() else None})
    return out


def stage_versions(run_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """When each stage finished (its summary file's time) and with which models."""
    instances = [r for r in rows if r.get("kind") == "instance"]

    def versions(column: str) -> str:
        return ", ".join(sorted({str(r[column]) for r in instances if _is_set(r.get(column))})) or "-"

    captions = read_json(run_dir / "captions" / "caption_summary.json") or {}
    stages = [("frames", "shots.json", "-"), ("segmentation", "segmentation_results.json", versions("model_version")),
              ("identify", "identity/identity_summary.json", versions("embedding_model")),
              ("caption", "captions/caption_summary.json", str(captions.get("model_version") or "-")),
              ("review-sync", "review_sync.json", "-")]
    out = []
    for stage, name, models in stages:
        path = run_dir / name
        if path.is_file():
            from datetime import datetime, timezone

            finished = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
            out.append({"stage": stage, "finished": finished, "models": models})
    return out


def collect(run_dir: Path, tasks: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Every section of the report of curate run `run_dir`; `tasks`: Label Studio's tasks per review (as listed
    by the API) for the lead times, None when Label Studio was not asked."""
    run_dir = Path(run_dir).resolve()
    manifest = Manifest.for_run(run_dir)
    rows = manifest.rows()
    instances = [r for r in rows if r.get("kind") == "instance"]
    datasets = datasets_from(run_dir)
    in_dataset = {str(e.get("row_id")) for d in datasets for e in (read_json(d / "metadata.json") or {})
                  .get("images", [])}
    run = relative_to_workspace(run_dir)
    captions = read_json(run_dir / "captions" / "caption_report.json") or {}
    records = [json.loads(line) for line in _lines(run_dir / "captions" / "captions.jsonl")]
    return {
        "run": run, "run_dir": str(run_dir), "profile": _profile(run_dir),
        "stages": stage_versions(run_dir, rows),
        "funnel": funnel(rows, read_json(run_dir / "shots.json") or {}, in_dataset),
        "identity": {"clusters": read_json(run_dir / "identity" / "cluster_report.json") or {},
                     "review": identity_review(instances),
                     "scatter": _file(run_dir / "identity" / "umap_scatter.png")},
        "captions": {"report": captions, "fields": caption_field_edits(records),
                     "tokens_chart": _file(run_dir / "captions" / "caption_tokens.png")},
        "reviews": {"masks": mask_review(instances), "projects": project_ids(run_dir),
                    "lead_times": {review: lead_times(t, run) for review, t in (tasks or {}).items()},
                    "label_studio": tasks is not None},
        "datasets": [{"dir": str(d), "character": (read_json(d / "metadata.json") or {}).get("character"),
                      "counts": (read_json(d / "metadata.json") or {}).get("counts"),
                      "training": training(d), "evaluations": evaluations(d)} for d in datasets],
        "contact_sheet": _file(run_dir / "contact_sheet.png"),
    }


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return []


def _file(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def _profile(run_dir: Path) -> str | None:
    import yaml

    try:
        return (yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}).get("profile")
    except (OSError, yaml.YAMLError):
        return None
