"""The identity review projects: instances (preselected from their cluster) and clusters (contact sheets).

- *instances* (``label_configs/identity_instances.xml``): one task per clustered instance, its RGBA crop
  beside its frame; the identity list comes with the task (dynamic choices: every cluster's default name
  ``character_<k>``), the cluster's name is preselected by a prediction.
- *clusters* (``label_configs/identity_clusters.xml``): one task per cluster showing its contact sheet;
  name / merge (into a cluster from the list) / noise / split.

Task keys are content, never the run, so a second run of the same footage asks nothing twice and its review-sync
finds the earlier answers:

- an instance task is ``identity:<video id>:<frame index>:<mask digest>`` (:func:`instance_key`: the video id
  hashes the file's bytes, the digest the pixels of the mask the crop was cut from), as the masks project keys
  frames by ``<video id>:<frame index>``;
- a cluster task is ``cluster:<partition>:<k>``: clusters are numbered per run, and a cluster decision (a name, a
  merge into ``character_<j>``, a split) only means the same thing under the same clustering, so ``partition``
  digests every cluster's members (their instance keys). The same clip clustered the same way re-uses the tasks and
  their decisions; any other clustering gets tasks of its own.

A re-used task joins the run (``castlab_runs``, :func:`castlab.labelstudio.client.task_runs`); ``castlab_run`` stays
the run that created it, which is how the ML backend finds embeddings. An instance answer naming a default cluster
name (``character_3``) given under another clustering (the task's ``partition``) is not applied: it is noted.

``sync_identity_reviews`` reads the latest annotation of every task, resolves the decisions
(:mod:`castlab.identity.review`) and writes ``identity``, ``identity_state`` and ``identity_source`` on
every clustered instance, plus ``identity_review.json`` (counts, notes).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from castlab.config import PROJECT_ROOT, Config
from castlab.errors import InputError
from castlab.identity.review import (
    NOISE,
    NOT_A_CHARACTER,
    ClusterDecision,
    InstanceDecision,
    cluster_of_default_name,
    default_name,
    resolve,
)
from castlab.labelstudio import client
from castlab.manifest import Manifest
from castlab.reviews.hooks import watch_project
from castlab.workspace import relative_to_workspace, resolve_in_workspace, write_json_atomic

log = logging.getLogger(__name__)
INSTANCES_CONFIG = PROJECT_ROOT / "label_configs" / "identity_instances.xml"
CLUSTERS_CONFIG = PROJECT_ROOT / "label_configs" / "identity_clusters.xml"
CLUSTER_COLUMN = "identity_cluster"


def _clustered(manifest: Manifest) -> list[dict[str, Any]]:
    rows = [r for r in manifest.rows(kind="instance", status="kept") if r.get(CLUSTER_COLUMN) is not None]
    for r in rows:
        r[CLUSTER_COLUMN] = int(r[CLUSTER_COLUMN])  # parquet may hand back floats
    return rows


def instance_key(row: dict[str, Any]) -> str:
    """An instance as content, the same in every run of the same footage: ``<video id>:<frame index>`` (its frame's
    row id) and a digest of the mask its crop was cut from (the reviewed one if any; without a mask, the crop).
    InputError naming the file when that cannot be read."""
    frame = str(row.get("parent_id") or row["row_id"]).removeprefix("frame:")
    mask = row.get("reviewed_mask_path") or row.get("mask_path")
    path = mask or row.get("crop_path")
    if not path:
        raise InputError(row["row_id"], "has no mask or crop to key its review tasks by")
    try:
        with Image.open(str(path)) as im:
            size = f"{im.width}x{im.height}:".encode()
            pixels = np.packbits(np.asarray(im.convert("L")) > 127) if mask else np.asarray(im.convert("RGBA"))
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot be read to key instance {row['row_id']}'s review tasks ({exc})") from exc
    return f"{frame}:{hashlib.sha1(size + pixels.tobytes()).hexdigest()[:12]}"


def instance_keys(rows: list[dict[str, Any]]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(row id -> :func:`instance_key`, ``{"instance", "reason"}`` of the rows without one: they get no task)."""
    keys, failed = {}, []
    for row in rows:
        try:
            keys[row["row_id"]] = instance_key(row)
        except InputError as exc:
            failed.append({"instance": row["row_id"], "reason": str(exc)})
            log.warning("no review task for %s: %s", row["row_id"], exc)
    return keys, failed


def partition_key(rows: list[dict[str, Any]], keys: dict[str, str]) -> str:
    """Digest of the run's clustering: every cluster's number and its members' instance keys (noise left out)."""
    members: dict[int, list[str]] = {}
    for r in rows:
        if r[CLUSTER_COLUMN] != NOISE:
            members.setdefault(r[CLUSTER_COLUMN], []).append(keys.get(r["row_id"], r["row_id"]))
    text = "\n".join(f"{c}:{','.join(sorted(m))}" for c, m in sorted(members.items()))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _choice(from_name: str, to_name: str, value: str) -> dict[str, Any]:
    rid = hashlib.sha1(f"{from_name}:{value}".encode()).hexdigest()[:10]
    return {"id": rid, "from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [value]}}


def build_identity_tasks(
    manifest: Manifest, run_dir: Path, sheets: dict[int, Path], model_version: str,
    keys: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(instance tasks, cluster tasks) for the run's clustered instances and its cluster contact sheets; `keys`:
    :func:`instance_keys` (computed when not given; an instance without a key gets no task)."""
    run_rel = relative_to_workspace(Path(run_dir))
    rows = _clustered(manifest)
    keys = keys if keys is not None else instance_keys(rows)[0]
    partition = partition_key(rows, keys)
    frames = {r["row_id"]: r for r in manifest.rows(kind="frame")}
    clusters = sorted({r[CLUSTER_COLUMN] for r in rows if r[CLUSTER_COLUMN] != NOISE})
    options = [{"value": default_name(c)} for c in clusters]
    sizes = Counter(r[CLUSTER_COLUMN] for r in rows)
    instance_tasks, asked = [], set()
    for r in rows:
        cluster = r[CLUSTER_COLUMN]
        frame = frames.get(r.get("parent_id"))
        key = keys.get(r["row_id"])
        if key is None or key in asked:  # no readable mask; or the same content twice in one frame: asked once
            continue
        asked.add(key)
        task: dict[str, Any] = {
            "data": {
                "image": client.local_file_url(Path(r["crop_path"])),
                "frame": client.local_file_url(Path(frame["path"])) if frame else "",
                "castlab_key": f"identity:{key}", "castlab_run": run_rel, "instance": r["row_id"],
                "cluster": cluster, "suggested": default_name(cluster) if cluster != NOISE else "noise (no cluster)",
                "identities": options, "partition": partition,
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
            "image": client.local_file_url(sheets[c]), "castlab_key": f"cluster:{partition}:{c}",
            "castlab_run": run_rel,
            "cluster": c, "title": f"{default_name(c)}: {sizes[c]} instances",
            "clusters": [o for o in options if o["value"] != default_name(c)] or [{"value": default_name(c)}],
        }})  # fmt: skip
    return instance_tasks, cluster_tasks


def push_identity_review(
    ls: Any, manifest: Manifest, run_dir: Path, cfg: Config, sheets: dict[int, Path], model_version: str
) -> dict[str, Any]:
    """Create/reuse both projects, serve crops, frames and sheets from local storage, push new tasks (tasks of the
    same content re-used and joined to this run; this run's tasks it no longer asks for left)."""
    keys, unkeyed = instance_keys(_clustered(manifest))
    instance_tasks, cluster_tasks = build_identity_tasks(manifest, run_dir, sheets, model_version, keys)
    run = relative_to_workspace(Path(run_dir))
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
        mapping = client.push_tasks(ls, project_id, tasks, complete_for=run)
        if kind == "instances":
            refresh_instance_tasks(ls, project_id, tasks, set(mapping.created))
        summary[kind] = {"project_id": int(project_id), "title": title, "tasks": len(mapping),
                         "new_tasks": len(mapping.created), "reused_tasks": len(mapping.joined)}
    if unkeyed:
        summary["failed"] = unkeyed  # recorded, not asked: their masks or crops cannot be read
    write_json_atomic(Path(run_dir) / "identity_push.json", summary)
    return summary


def refresh_instance_tasks(ls: Any, project_id: int, tasks: list[dict[str, Any]], created: set[str]) -> int:
    """Existing instance tasks nobody answered yet, made under another clustering: this run's identity list,
    suggestion and prediction; this run becomes their ``castlab_run`` (the ML backend reads its embeddings), the other
    runs stay members. Returns how many were refreshed."""
    wanted = {t["data"]["castlab_key"]: t for t in tasks if t["data"]["castlab_key"] not in created}
    refreshed = 0
    for task in client.list_tasks(ls, project_id) if wanted else []:
        data = task.get("data") or {}
        fresh = wanted.get(str(data.get("castlab_key")))
        if fresh is None or client.latest_annotation(task) is not None or \
                data.get("partition") == fresh["data"]["partition"]:
            continue
        run = fresh["data"][client.RUN_FIELD]
        others = [r for r in client.task_runs(data) if r != run]
        client.update_task_data(ls, int(task["id"]),
                                {**fresh["data"], **({client.RUNS_FIELD: others} if others else {})})
        for prediction in fresh["predictions"]:
            ls.predictions.create(task=int(task["id"]), result=prediction["result"], score=prediction["score"],
                                  model_version=prediction["model_version"])
        refreshed += 1
    return refreshed


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
    """Apply the latest cluster and instance annotations of this run to its instances (see module doc): the tasks
    of this run, and those of its content (instance keys, this clustering) whoever pushed them."""
    run = relative_to_workspace(Path(run_dir))
    rows = _clustered(manifest)
    membership = {r["row_id"]: r[CLUSTER_COLUMN] for r in rows}
    keys = instance_keys(rows)[0]
    partition = partition_key(rows, keys)
    by_key: dict[str, list[str]] = {}
    for row_id, key in keys.items():
        by_key.setdefault(f"identity:{key}", []).append(row_id)
    clusters: dict[int, ClusterDecision] = {}
    instances: dict[str, InstanceDecision] = {}
    foreign: list[str] = []
    stamps: dict[str, tuple[str, int]] = {}
    for kind in ("clusters", "instances"):
        project_id = client.find_project(ls, str(getattr(cfg.labelstudio, f"identity_{kind}_title")))
        for task in client.list_tasks(ls, project_id) if project_id is not None else []:
            data = task.get("data") or {}
            key = str(data.get("castlab_key"))
            annotation = client.latest_annotation(task)
            if annotation is None:
                continue
            if kind == "clusters":
                decision = cluster_decision(annotation)
                if decision is not None and _this_clustering(key, partition, task, run):
                    clusters[int(data["cluster"])] = decision
                continue
            targets = by_key.get(key) or ([str(data["instance"])] if client.in_run(task, run)
                                          and data.get("instance") in membership else [])
            decided = instance_decision(annotation)
            if decided is None or not targets:
                continue
            if decided.identity and cluster_of_default_name(decided.identity) is not None \
                    and data.get("partition", partition) != partition:  # "character_3" of another clustering
                foreign += targets
                continue
            for row_id in targets:  # two tasks of one instance (one pushed before content keys): the newer answer
                if row_id not in stamps or client.annotation_order(annotation) > stamps[row_id]:
                    instances[row_id], stamps[row_id] = decided, client.annotation_order(annotation)
    outcome = resolve(membership, clusters, instances)
    if foreign:
        outcome.notes.append(f"{len(foreign)} instance answer(s) name a cluster of another clustering of this footage "
                             f"(not applied; their cluster's decision holds): {', '.join(sorted(foreign)[:10])}")
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


def _this_clustering(key: str, partition: str, task: dict[str, Any], run: str) -> bool:
    """A cluster task of the run's clustering: this partition's key, or (pushed before content keys) a task of the
    run keyed by its name."""
    if key.startswith(f"cluster:{partition}:"):
        return True
    return client.in_run(task, run) and key.startswith(f"cluster:{Path(run).name}:")


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
