"""The identity review projects: instances (preselected from their cluster) and clusters (contact sheets).

- *instances* (``label_configs/identity_instances.xml``): one task per clustered instance, its RGBA crop
  beside its frame; the identity list comes with the task (dynamic choices: every cluster's default name
  ``character_<k>``), the cluster's name is preselected by a prediction.
- *clusters* (``label_configs/identity_clusters.xml``): one task per cluster showing its contact sheet;
  name / merge (into a cluster from the list) / noise / split.

Task keys carry the run name (``identity:<run>:<row id>``, ``cluster:<run>:<k>``), so pushing again adds
nothing and runs never collide; ``castlab_run`` is the run folder relative to the workspace (as in the
masks project), which is how the ML backend finds the run's embeddings.

``sync_identity_reviews`` reads the latest annotation of every task, resolves the decisions
(:mod:`castlab.identity.review`) and writes ``identity``, ``identity_state`` and ``identity_source`` on
every clustered instance, plus ``identity_review.json`` (counts, notes).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from castlab.config import PROJECT_ROOT, Config
from castlab.identity.review import NOISE, NOT_A_CHARACTER, ClusterDecision, InstanceDecision, default_name, resolve
from castlab.labelstudio import client
from castlab.manifest import Manifest
from castlab.reviews.hooks import watch_project
from castlab.workspace import relative_to_workspace, resolve_in_workspace, write_json_atomic

INSTANCES_CONFIG = PROJECT_ROOT / "label_configs" / "identity_instances.xml"
CLUSTERS_CONFIG = PROJECT_ROOT / "label_configs" / "identity_clusters.xml"
CLUSTER_COLUMN = "identity_cluster"


def _clustered(manifest: Manifest) -> list[dict[str, Any]]:
    rows = [r for r in manifest.rows(kind="instance", status="kept") if r.get(CLUSTER_COLUMN) is not None]
    for r in rows:
        r[CLUSTER_COLUMN] = int(r[CLUSTER_COLUMN])  # parquet may hand back floats
    return rows


def _choice(from_name: str, to_name: str, value: str) -> dict[str, Any]:
    rid = hashlib.sha1(f"{from_name}:{value}".encode()).hexdigest()[:10]
    return {"id": rid, "from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [value]}}


def build_identity_tasks(
    manifest: Manifest, run_dir: Path, sheets: dict[int, Path], model_version: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(instance tasks, cluster tasks) for the run's clustered instances and its cluster contact sheets."""
    run, run_rel = Path(run_dir).name, relative_to_workspace(Path(run_dir))
    rows = _clustered(manifest)
    frames = {r["row_id"]: r for r in manifest.rows(kind="frame")}
    clusters = sorted({r[CLUSTER_COLUMN] for r in rows if r[CLUSTER_COLUMN] != NOISE})
    options = [{"value": default_name(c)} for c in clusters]
    sizes = Counter(r[CLUSTER_COLUMN] for r in rows)
    instance_tasks = []
    for r in rows:
        cluster = r[CLUSTER_COLUMN]
        frame = frames.get(r.get("parent_id"))
        task: dict[str, Any] = {
            "data": {
                "image": client.local_file_url(Path(r["crop_path"])),
                "frame": client.local_file_url(Path(frame["path"])) if frame else "",
                "castlab_key": f"identity:{run}:{r['row_id']}", "castlab_run": run_rel, "instance": r["row_id"],
                "cluster": cluster, "suggested": default_name(cluster) if cluster != NOISE else "noise (no cluster)",
                "identities": options,
            },
            "predictions": [],
        }  # fmt: skip
        if cluster != NOISE:
            score = float(r.get("cluster_probability") or 1.0)
            task["predictions"].append({"result": [_choice("identity", "crop", default_name(cluster))],
                                        "score": score, "model_version": model_version})
        instance_tasks.append(task)
    cluster_tasks = []
    for c in clusters:
        if c not in sheets:
            continue
        cluster_tasks.append({"data": {
            "image": client.local_file_url(sheets[c]), "castlab_key": f"cluster:{run}:{c}", "castlab_run": run_rel,
            "cluster": c, "title": f"{default_name(c)}: {sizes[c]} instances",
            "clusters": [o for o in options if o["value"] != default_name(c)] or [{"value": default_name(c)}],
        }})  # fmt: skip
    return instance_tasks, cluster_tasks


def push_identity_review(
    ls: Any, manifest: Manifest, run_dir: Path, cfg: Config, sheets: dict[int, Path], model_version: str
) -> dict[str, Any]:
    """Create/reuse both projects, serve crops, frames and sheets from local storage, push new tasks."""
    instance_tasks, cluster_tasks = build_identity_tasks(manifest, run_dir, sheets, model_version)
    summary: dict[str, Any] = {}
    for kind, config, tasks in (("instances", INSTANCES_CONFIG, instance_tasks),
                                ("clusters", CLUSTERS_CONFIG, cluster_tasks)):
        title = str(getattr(cfg.labelstudio, f"identity_{kind}_title"))
        project_id = client.ensure_project(ls, title, config.read_text(encoding="utf-8"))
        watch_project(ls, project_id, cfg)  # its reviews move the pipeline (castlab.reviews)
        folders = {Path(u["data"][key].split("?d=", 1)[-1]).parent for u in tasks for key in ("image", "frame")
                   if u["data"].get(key)}
        for folder in sorted(folders):
            client.ensure_local_storage(ls, project_id, resolve_in_workspace(str(folder)))
        mapping = client.push_tasks(ls, project_id, tasks)
        summary[kind] = {"project_id": int(project_id), "title": title, "tasks": len(mapping),
                         "new_tasks": len(mapping.created)}
    write_json_atomic(Path(run_dir) / "identity_push.json", summary)
    return summary


def _values(annotation: dict[str, Any], from_name: str) -> list[str]:
    out: list[str] = []
    for result in annotation.get("result") or []:
        if result.get("from_name") != from_name:
            continue
        value = result.get("value") or {}
        out.extend(str(v) for v in value.get("choices") or value.get("text") or [])
    return [v for v in out if v.strip()]


def cluster_decision(annotation: dict[str, Any]) -> ClusterDecision | None:
    kinds = _values(annotation, "decision")
    if not kinds:
        return None
    name = (_values(annotation, "name") or [None])[0]
    target = (_values(annotation, "merge_into") or [None])[0]
    merge_into = int(target.rsplit("_", 1)[-1]) if target and target.rsplit("_", 1)[-1].isdigit() else None
    return ClusterDecision(kinds[0], name=name, merge_into=merge_into)


def instance_decision(annotation: dict[str, Any]) -> InstanceDecision | None:
    if NOT_A_CHARACTER in _values(annotation, "verdict"):
        return InstanceDecision(not_character=True)
    typed = _values(annotation, "new_identity")
    chosen = _values(annotation, "identity")
    if typed or chosen:
        return InstanceDecision(identity=(typed or chosen)[0])
    return None


def sync_identity_reviews(ls: Any, manifest: Manifest, run_dir: Path, cfg: Config) -> dict[str, Any]:
    """Apply the latest cluster and instance annotations of this run to its instances (see module doc)."""
    run = relative_to_workspace(Path(run_dir))
    rows = _clustered(manifest)
    membership = {r["row_id"]: r[CLUSTER_COLUMN] for r in rows}
    clusters: dict[int, ClusterDecision] = {}
    instances: dict[str, InstanceDecision] = {}
    for kind in ("clusters", "instances"):
        for task in client.run_tasks(ls, str(getattr(cfg.labelstudio, f"identity_{kind}_title")), run):
            data = task.get("data") or {}
            annotation = client.latest_annotation(task)
            if annotation is None:
                continue
            if kind == "clusters":
                decision = cluster_decision(annotation)
                if decision is not None:
                    clusters[int(data["cluster"])] = decision
            else:
                decided = instance_decision(annotation)
                if decided is not None and data.get("instance") in membership:
                    instances[str(data["instance"])] = decided
    outcome = resolve(membership, clusters, instances)
    for row_id, resolved in outcome.instances.items():
        manifest.update(row_id, identity=resolved.identity, identity_state=resolved.state,
                        identity_source=resolved.source)
    states = Counter(r.state for r in outcome.instances.values())
    report = {"instances": len(outcome.instances), "cluster_decisions": len(clusters),
              "instance_decisions": len(instances), "states": dict(states),
              "identities": dict(Counter(r.identity for r in outcome.instances.values() if r.identity)),
              "notes": outcome.notes}
    write_json_atomic(Path(run_dir) / "identity_review.json", report)
    return report


def name_clusters(ls: Any, run_dir: Path, cfg: Config) -> int:
    """Demo reviewer: name every unreviewed cluster task of the run by its default name (decision "name")."""
    run = relative_to_workspace(Path(run_dir))
    created = 0
    for task in client.run_tasks(ls, str(cfg.labelstudio.identity_clusters_title), run):
        data = task.get("data") or {}
        if client.latest_annotation(task):
            continue
        name = default_name(int(data["cluster"]))
        client.create_annotation(ls, int(task["id"]), [
            _choice("decision", "sheet", "name"),
            {"from_name": "name", "to_name": "sheet", "type": "textarea", "value": {"text": [name]}},
        ])
        created += 1
    return created
