"""Preparing a dataset type on a curate run: candidates → checks and quality → image embeddings → the VLM's fields
under the type's schema → labels (scene clusters, measured light, pose, expression) → records a reviewer corrects
in Label Studio.

Candidates are the kept frames: for ``background`` their background (:mod:`castlab.backgrounds.candidates`),
checked to be character-free (:mod:`castlab.backgrounds.check`); for ``style`` and ``lighting`` the frame itself
(``lighting`` adds :mod:`castlab.lighting.features`). For ``pose`` and ``expression`` they are the reviewed
character instances (:mod:`castlab.typed.instances`: keypoints, face crops). Every candidate gets a record, a
rejected one with its reason (``missing_file``, ``low_quality``, ``character_evidence``, ``character_score``,
``no_face``, ``small_face``, ``blurred_face``, ``occluded_face``; frames without a known background are
``skipped``): nothing is dropped silently.

Outputs in ``<run>/<type>/``: ``records.jsonl`` (one record per candidate: status, reason, image, quality, VLM
fields, labels, the predicted caption body and, once synced, the review) and ``embeddings.npz`` (the open_clip
vectors of the ok records: near-duplicates and scene clusters). Preparing again reuses every record whose image
and models are unchanged (with its review); ``force`` redoes all.

Steps: :func:`process` (one chunk of candidate rows, no file written; a flow hands chunks to workers) and
:func:`finish` (scene clusters, captions, files); :func:`prepare` does it all here.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from castlab.captions.schema import SchemaError, get_field, parse_fields
from castlab.config import Config
from castlab.errors import ConfigError, InputError
from castlab.layers import media_path, open_rgba
from castlab.manifest import Manifest, row_text
from castlab.pictures import fit_within
from castlab.rows import chunked
from castlab.typed.spec import DatasetType, dataset_type
from castlab.workspace import read_jsonl, relative_to_workspace, write_json_atomic, write_text_atomic

RECORDS_NAME = "records.jsonl"
EMBEDDINGS_NAME = "embeddings.npz"
SUMMARY_NAME = "summary.json"
CHUNK = 32  # candidates per process() call
SHOT_FIELDS = ("video_id", "video_path", "shot_id", "frame_index", "time_s", "split")
OTHER_SCENE = "scene-other"
# how a measured lighting label reads in a caption (None: left out)
MEASURED_PHRASES: dict[str, dict[str, str | None]] = {
    "luma_key": {"low-key": "low-key lighting", "high-key": "high-key lighting", "mid-key": None},
    "warmth": {"warm": "warm light", "cool": "cool light", "neutral": None, "unknown": None},
    "direction": {"left": "key light from the left", "right": "key light from the right",
                  "top": "light from above", "bottom": "light from below", "frontal": "flat frontal light"},
    "category": {"standing": "standing", "walking": "walking", "running": "running", "sitting": "sitting",
                 "other": None},
    "view": {"front": "front view", "back": "back view", "side": "side view", "unknown": None},
    "expression": {"happy": "happy expression", "sad": "sad expression", "surprised": "surprised expression",
                   "angry": "angry expression", "neutral": "neutral expression", "other": None},
}


def type_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / name


@dataclass
class TypedModels:
    """What preparing a type needs: open_clip, and the VLM (background, style, lighting), the character detectors
    (background), ViTPose (pose) or the zero-shot expression scorer (expression)."""

    embedder: Any
    captioner: Any = None
    detector: Any = None
    scorer: Any = None
    pose: Any = None
    expression: Any = None

    @property
    def version(self) -> str:
        parts = [m.model_version for m in (self.captioner, self.pose, self.embedder) if m is not None]
        return "+".join(parts)


def load_models(cfg: Config, name: str) -> TypedModels:
    """The models of type `name` for the active profile."""
    from castlab.models.embedder import load_embedder

    kind = dataset_type(name)
    models = TypedModels(load_embedder(cfg))
    if kind.schema is not None:
        from castlab.models.captioner import load_captioner

        models.captioner = load_captioner(cfg)
    if name == "background":
        from castlab.segment.characters import CharacterScorer, EvidenceDetector

        models.detector = EvidenceDetector.from_config(cfg)
        models.scorer = CharacterScorer.from_config(models.embedder, cfg)
    elif name == "pose":
        from castlab.models.pose import load_pose_estimator

        models.pose = load_pose_estimator(cfg)
    elif name == "expression":
        from castlab.expression.labels import ExpressionScorer, label_names
        from castlab.typed.spec import EXPRESSIONS

        unknown = sorted(set(label_names(cfg)) - set(EXPRESSIONS))
        if unknown:  # the review project offers a fixed list (label_configs/expression.xml)
            raise ConfigError(f"expression.labels: {unknown} are not among the review choices {list(EXPRESSIONS)}; "
                              "add them to label_configs/expression.xml and castlab.typed.spec.EXPRESSIONS")
        models.expression = ExpressionScorer(models.embedder, cfg)
    return models


# -- candidates ---------------------------------------------------------------------------------------------------
def candidate_rows(manifest: Manifest, name: str, run_dir: Path | None = None
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(candidate rows with ``image_path``, skipped rows with ``row_id`` and ``reason``) of type `name`."""
    if dataset_type(name).rows == "instance":
        from castlab.typed.instances import instance_candidates

        return instance_candidates(manifest, Path(run_dir or manifest.path.parent), name), []
    if name == "background":
        from castlab.backgrounds.candidates import background_candidates

        return background_candidates(manifest)
    return [{**f, "image_path": row_text(f.get("path")), "background_source": None}
            for f in manifest.rows(kind="frame", status="kept")], []


def new_record(row: dict[str, Any], name: str) -> dict[str, Any]:
    record = {"row_id": str(row["row_id"]), "type": name, "status": "ok", "reason": None, "detail": None,
              "image": row_text(row.get("image_path")), "source_image": row_text(row.get("image_path")),
              "source": row.get("background_source")}
    if row.get("kind") == "instance":
        from castlab.labelstudio.projects.identity import instance_key

        try:
            key = instance_key(row)
        except InputError:
            key = None  # the mask cannot be read: the review task is keyed by the row instead
        record.update(instance=str(row["row_id"]), identity=row_text(row.get("identity")) or None, content_key=key)
    for key in SHOT_FIELDS:
        value = row.get(key)
        if value is not None:
            whole = isinstance(value, float) and value.is_integer() and key == "frame_index"
            record[key] = int(value) if whole else value
    return record


def _reject(record: dict[str, Any], reason: str, detail: str) -> None:
    record.update(status="rejected", reason=reason, detail=detail)


def sharpness(image: Image.Image, cfg: Config) -> float:
    """Variance of the Laplacian of the grey image over ``dataset.sharpness_ref``, capped at 1."""
    from castlab.frames.quality import sharpness as laplacian_variance

    return round(min(1.0, laplacian_variance(np.asarray(image.convert("L"))) / float(cfg.dataset.sharpness_ref)), 4)


def _open(record: dict[str, Any]) -> Image.Image:
    return open_rgba(media_path(record["image"]), f"{record['type']} image of {record['row_id']}").convert("RGB")


def _thumb(image: Image.Image, side: int) -> Image.Image:
    return fit_within(image, side, Image.Resampling.LANCZOS)


def _look(record: dict[str, Any], row: dict[str, Any], image: Image.Image, models: TypedModels, cfg: Config,
          name: str) -> Image.Image | None:
    """The type's own look at one candidate: checks, measures, crops. Returns the image to go on with (None when
    rejected); sets the record's ``measured`` labels."""
    if name == "pose":
        from castlab.typed.instances import pose_look

        return pose_look(record, row, image, models, cfg)
    if name == "expression":
        from castlab.typed.instances import expression_look

        return expression_look(record, row, image, models, cfg)
    small = _thumb(image, int(cfg.captions.max_side))
    if name == "background":
        from castlab.backgrounds.check import check_character_free

        check = check_character_free(np.asarray(small), models.detector, models.scorer,
                                     float(cfg.backgrounds.max_character_score))
        record["check"] = check.as_row()
        if not check.ok:
            _reject(record, str(check.reason), check.detail)
            return None
    if name == "lighting":
        from castlab.lighting.features import lighting_features

        record["features"] = lighting_features(np.asarray(small), cfg.lighting).as_dict()
        record["measured"] = {"luma_key": record["features"]["key"], "warmth": record["features"]["warmth"],
                              "direction": record["features"]["direction"]}
    return small


def process(rows: Sequence[dict[str, Any]], cfg: Config, models: TypedModels, *, name: str) -> list[dict[str, Any]]:
    """One chunk of candidate rows → records (module docstring), with ``clip`` (a list) on the ok ones."""
    kind = dataset_type(name)
    settings = kind.settings(cfg)
    records, live = [], []
    for row in rows:
        record = new_record(row, name)
        records.append(record)
        try:
            image = _open(record)
        except InputError as exc:
            _reject(record, "missing_file", str(exc))
            continue
        looked = _look(record, row, image, models, cfg, name)
        if looked is None:
            continue
        record["size"] = list(looked.size if kind.rows == "instance" else image.size)
        record["quality"] = sharpness(looked, cfg)
        if record["quality"] < float(settings.min_quality):
            _reject(record, "low_quality", f"sharpness {record['quality']:.2f} < types.{name}.min_quality "
                                           f"{settings.min_quality}")
            continue
        live.append((record, _thumb(looked, int(cfg.captions.max_side))))
    if live:
        vectors = models.embedder.encode_images([img for _, img in live])
        for (record, _), vector in zip(live, vectors, strict=True):
            record["clip"] = [float(v) for v in vector]
    if live and kind.schema is not None:
        texts = models.captioner.generate([[img] for _, img in live], str(settings.prompt), kind.schema,
                                          int(cfg.captions.max_new_tokens), int(cfg.captions.batch_size))
        for (record, _), text in zip(live, texts, strict=True):
            try:
                record["fields"] = parse_fields(text, kind.schema)
            except SchemaError as exc:
                record.update(fields=None, schema_error=str(exc))
    for record in records:
        record["model_version"] = models.version
    return records


# -- labels and captions ------------------------------------------------------------------------------------------
def predicted_labels(record: dict[str, Any], kind: DatasetType) -> dict[str, str]:
    """The record's labels before review: its scene (or pose cluster), its closed fields and what was measured."""
    labels = {k: str(record[k]) for k in ("scene", "pose_cluster") if record.get(k)}
    for path in kind.choices:
        value = get_field(record.get("fields") or {}, path) if record.get("fields") else None
        labels[path] = str(value) if value is not None else "unknown"
    return {**labels, **(record.get("measured") or {})}


def labels_of(record: dict[str, Any]) -> dict[str, str]:
    """The record's labels as reviewed (a reviewer's Choices win over the prediction)."""
    return {**(record.get("labels") or {}), **((record.get("review") or {}).get("labels") or {})}


def _uncertain(value: str, cfg: Config) -> bool:
    terms = {t.lower() for t in cfg.captions.uncertain_terms} | {"not visible"}
    return not value or value.lower() in terms


def caption_body(record: dict[str, Any], kind: DatasetType, cfg: Config) -> str:
    """The caption without its lead: the type's caption fields in order, from the reviewed labels and the VLM's
    phrases; uncertain values ("unknown", ...) and neutral measures are left out."""
    labels, fields = labels_of(record), record.get("fields") or {}
    parts: list[str] = []
    for path in kind.caption_fields:
        value = labels.get(path)
        if value is None and fields:
            value = get_field(fields, path)
        value = " ".join(str(value or "").split())
        if path in MEASURED_PHRASES:
            value = MEASURED_PHRASES[path].get(value) or ""
        if not _uncertain(value, cfg) and value.lower() not in (p.lower() for p in parts):
            parts.append(value)
    return ", ".join(parts)


def reviewed_body(record: dict[str, Any], kind: DatasetType, cfg: Config) -> tuple[str, str]:
    """(caption body, source): the reviewer's text (``reviewed``), else the body rebuilt from reviewed labels
    (``reviewed``), else the prediction (``predicted``)."""
    review = record.get("review") or {}
    if review.get("caption"):
        return str(review["caption"]), "reviewed"
    body = caption_body(record, kind, cfg)
    return body, ("reviewed" if review else "predicted")


# -- the run ------------------------------------------------------------------------------------------------------
def read_records(run_dir: Path, name: str) -> list[dict[str, Any]]:
    path = type_dir(run_dir, name) / RECORDS_NAME
    return read_jsonl(path) if path.is_file() else []


def write_records(run_dir: Path, name: str, records: list[dict[str, Any]]) -> Path:
    path = type_dir(run_dir, name) / RECORDS_NAME
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return path


def read_embeddings(run_dir: Path, name: str) -> dict[str, np.ndarray]:
    """Row id → open_clip vector of the type's ok records (empty when none were written)."""
    path = type_dir(run_dir, name) / EMBEDDINGS_NAME
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {str(r): data["clip"][i] for i, r in enumerate(data["row_ids"])}


def plan(run_dir: Path, cfg: Config, name: str, version: str, force: bool = False
         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows to process, records reused, skipped rows) of type `name` on the run."""
    rows, skipped = candidate_rows(Manifest.for_run(Path(run_dir)), name, Path(run_dir))
    previous = {} if force else {r["row_id"]: r for r in read_records(run_dir, name)}
    vectors = read_embeddings(run_dir, name) if previous else {}
    todo, reused = [], []
    for row in rows:
        old = previous.get(str(row["row_id"]))
        if old and old.get("source_image") == row_text(row.get("image_path")) and old.get("model_version") == version \
                and (old["status"] != "ok" or str(row["row_id"]) in vectors):
            reused.append({**old, "clip": vectors[old["row_id"]].tolist()} if old["status"] == "ok" else old)
        else:
            todo.append(row)
    return todo, reused, skipped


def scene_labels(vectors: np.ndarray, cfg: Config, min_size: int) -> list[str]:
    """Scene clusters of image embeddings (the identity clustering, ``clustering.*`` with the type's smallest
    scene; also used on normalised pose keypoints): ``scene-01`` is the largest; noise, and every image when there
    are too few, is ``scene-other``."""
    from castlab.identity.cluster import ClusterSettings, cluster_embeddings

    if len(vectors) < 2 * min_size:
        return [OTHER_SCENE] * len(vectors)
    settings = replace(ClusterSettings.from_config(cfg), min_cluster_size=min_size, min_samples=None)
    result = cluster_embeddings(vectors, settings, progress=False)
    return [OTHER_SCENE if label < 0 else f"scene-{label + 1:02d}" for label in result.labels.tolist()]


def finish(run_dir: Path, cfg: Config, name: str, records: list[dict[str, Any]],
           skipped: list[dict[str, Any]]) -> dict[str, Any]:
    """Scene clusters, labels and caption bodies over every record; writes the type's files; the summary."""
    kind = dataset_type(name)
    settings = kind.settings(cfg)
    records = sorted(records, key=lambda r: r["row_id"])
    ok = [r for r in records if r["status"] == "ok" and r.get("clip")]
    vectors = np.asarray([r.pop("clip") for r in ok], np.float32).reshape(len(ok), -1)
    if kind.rows == "frame":  # locations: clusters of the image embeddings
        for record, scene in zip(ok, scene_labels(vectors, cfg, int(settings.scene_min_size)), strict=True):
            record["scene"] = scene
    posed = [r for r in ok if r.get("keypoints_norm")]
    if posed:  # poses: clusters of the normalised keypoints
        points = np.asarray([np.ravel(np.asarray(r["keypoints_norm"])[:, :2]) for r in posed], np.float32)
        for record, cluster in zip(posed, scene_labels(points, cfg, int(settings.scene_min_size)), strict=True):
            record["pose_cluster"] = cluster.replace("scene", "pose")
    for record in records:
        record.pop("clip", None)
        if record["status"] == "ok":
            record["labels"] = predicted_labels(record, kind)
            record["caption_pred"] = caption_body(record, kind, cfg)
    records += [{"row_id": str(s["row_id"]), "type": name, "status": "skipped", "reason": "no_background",
                 "detail": s["reason"]} for s in skipped]
    out = type_dir(run_dir, name)
    out.mkdir(parents=True, exist_ok=True)
    write_records(run_dir, name, records)
    np.savez(out / EMBEDDINGS_NAME, row_ids=np.asarray([r["row_id"] for r in ok]), clip=vectors)
    summary = summarise(run_dir, name, records, cfg)
    write_json_atomic(out / SUMMARY_NAME, summary)
    return summary


def summarise(run_dir: Path, name: str, records: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    settings = dataset_type(name).settings(cfg)
    ok = [r for r in records if r["status"] == "ok"]
    balance = str(settings.balance)
    return {
        "type": name, "run": relative_to_workspace(Path(run_dir)), "profile": cfg.profile, "candidates": len(records),
        "ok": len(ok), "status": dict(Counter(r["status"] for r in records)),
        "reasons": dict(Counter(str(r["reason"]) for r in records if r["status"] != "ok")),
        "schema_errors": sum(1 for r in ok if r.get("schema_error")), "balance": balance,
        "labels": dict(Counter(labels_of(r).get(balance, "unknown") for r in ok)),
        "scenes": len({r.get("scene") for r in ok} - {OTHER_SCENE, None}),
        "pose_clusters": len({r.get("pose_cluster") for r in ok} - {"pose-other", None}),
        "reviewed": sum(1 for r in ok if r.get("review")), "records": str(type_dir(run_dir, name) / RECORDS_NAME),
    }


def prepare(run_dir: Path, cfg: Config, name: str, models: TypedModels | None = None,
            force: bool = False) -> dict[str, Any]:
    """Prepare type `name` on the run (module docstring) in this process; the summary."""
    models = models or load_models(cfg, name)
    todo, reused, skipped = plan(Path(run_dir), cfg, name, models.version, force)
    records = list(reused)
    chunks = list(chunked(todo, CHUNK))
    for chunk in tqdm(chunks, desc=f"prepare {name}", unit="chunk", disable=not chunks):
        records += process(list(chunk), cfg, models, name=name)
    summary = finish(Path(run_dir), cfg, name, records, skipped)
    return {**summary, "processed_now": len(todo), "reused": len(reused),
            "chunks": math.ceil(len(todo) / CHUNK) if todo else 0}
