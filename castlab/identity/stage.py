"""Identity stage of a curate run: embeddings → clusters → outputs → Label Studio review.

Face-routed instances (ArcFace) are clustered PCA → UMAP → HDBSCAN (:mod:`castlab.identity.cluster`); ArcFace and
open_clip vectors live in different spaces, so an instance without a usable face joins the face cluster
whose open_clip centroid is nearest when that similarity reaches ``identity.clip_join_min_similarity``, and
is noise otherwise — it stays in the manifest either way, with its route. When a run has no face at all
the open_clip vectors are clustered instead (the report says so).

Two steps, so a flow can fan the first out to workers: :func:`embed_chunk` (a chunk of instances → routing
fields and a vectors file) and :func:`cluster_identities` (the chunks merged in instance order → clusters,
outputs, manifest updates). :func:`build_identities` runs both in this process, with the same result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from castlab.config import Config
from castlab.errors import InputError
from castlab.identity.cluster import NOISE, ClusterSettings, cluster_embeddings, unit
from castlab.identity.embed import (
    EMBEDDINGS_DIR,
    embed_instances,
    embedding_meta,
    load_embeddings,
    save_embeddings,
)
from castlab.identity.outputs import SHEETS, write_cluster_outputs
from castlab.manifest import Manifest, row_text
from castlab.rows import chunked
from castlab.workspace import atomic_path, write_json_atomic

IDENTITY_DIR = "identity"
CHUNKS_DIR = "chunks"  # embeddings/chunks/: one embedded chunk's vectors until the clustering step merges them


def identity_vectors(run_dir: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Row id → (route, unit vector): the ArcFace vector when the instance has a face, else its open_clip one."""
    emb = load_embeddings(run_dir)
    face_ok, clip_ok = emb.face_mask, emb.clip_mask
    out: dict[str, tuple[str, np.ndarray]] = {}
    for i, row_id in enumerate(emb.row_ids):
        if face_ok[i]:
            out[row_id] = ("face", emb.face[i])
        elif clip_ok[i]:
            out[row_id] = ("clip", emb.clip[i])
    return out


@dataclass
class IdentityModels:
    """What embedding needs: the face analyzer (detector + ArcFace) and open_clip."""

    analyzer: Any
    embedder: Any


def load_models(cfg: Config, analyzer: Any = None, embedder: Any = None) -> IdentityModels:
    """The face analyzer and open_clip of the active profile (those given are used as they are)."""
    if analyzer is None:
        from castlab.models.faces import load_face_analyzer

        analyzer = load_face_analyzer(cfg)
    if embedder is None:
        from castlab.models.embedder import load_embedder

        embedder = load_embedder(cfg)
    return IdentityModels(analyzer, embedder)


def process(rows: list[dict[str, Any]], cfg: Config, models: IdentityModels, *, run_dir: Path,
            frames: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Embed one chunk of instance rows: each gets its routing fields (route, face box, view) and its vectors
    ``face_vector`` / ``clip_vector`` (numpy; zeros where there is none). Nothing is written."""
    updates, face_m, clip_m = embed_instances(rows, frames, models.analyzer, models.embedder, cfg, base_dir=run_dir)
    for i, update in enumerate(updates):
        update["face_vector"], update["clip_vector"] = face_m[i], clip_m[i]
    return updates


def run(run_dir: Path, cfg: Config, models: IdentityModels | None = None, force: bool = False) -> dict[str, Any]:
    """:func:`build_identities` on the run's manifest, then save it (outside a flow; a flow saves it itself)."""
    manifest = Manifest.for_run(run_dir)
    models = models or load_models(cfg)
    summary = build_identities(run_dir, manifest, cfg, models.analyzer, models.embedder, force=force)
    manifest.save()
    return summary


def identity_inputs(run_dir: Path, manifest: Manifest, cfg: Config) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The run's kept instances (in manifest order) and its frame rows by row id; fails before any work when
    there is no kept instance or a clustering setting is bad."""
    instances = manifest.rows(kind="instance", status="kept")
    if not instances:
        raise InputError(Path(run_dir) / "manifest.parquet", "has no kept instances to identify (run curate first)")
    ClusterSettings.from_config(cfg)
    return instances, {r["row_id"]: r for r in manifest.rows(kind="frame")}


def frames_of(rows: Sequence[Mapping[str, Any]], frames: Mapping[str, Any]) -> dict[str, Any]:
    """The frame rows that instance `rows` point at (what :func:`embed_chunk` needs of `frames`)."""
    wanted = {row_text(r.get("parent_id")) for r in rows}
    return {k: frames[k] for k in sorted(wanted) if k in frames}


def embed_chunk(rows: Sequence[Mapping[str, Any]], cfg: Config, models: IdentityModels, *, run_dir: Path,
                frames: Mapping[str, Any], index: int) -> dict[str, Any]:
    """:func:`process` one chunk and write its vectors to ``embeddings/chunks/identity-<index>.npz``; returns
    ``{"updates", "vectors", "meta"}``: the rows' routing fields, that file and the models' sidecar fields —
    small enough to come back from another worker. The manifest is not touched."""
    run_dir = Path(run_dir).resolve()
    updates = process(list(rows), cfg, models, run_dir=run_dir, frames=dict(frames))
    path = run_dir / EMBEDDINGS_DIR / CHUNKS_DIR / f"identity-{index:05d}.npz"
    face_m = np.stack([u.pop("face_vector") for u in updates]).astype(np.float32)
    clip_m = np.stack([u.pop("clip_vector") for u in updates]).astype(np.float32)
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, row_ids=np.array([u["row_id"] for u in updates], dtype=str), face=face_m, clip=clip_m)
    return {"updates": updates, "vectors": str(path), "meta": embedding_meta(models.analyzer, models.embedder, cfg)}


def _merge_chunks(chunks: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    updates: list[dict[str, Any]] = []
    faces, clips = [], []
    for chunk in chunks:
        path = Path(chunk["vectors"])
        try:
            with np.load(path, allow_pickle=False) as data:
                ids, face, clip = data["row_ids"].tolist(), data["face"], data["clip"]
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(path, f"identity embedding chunk is not readable ({exc})") from exc
        if ids != [u["row_id"] for u in chunk["updates"]]:
            raise InputError(path, "identity embedding chunk does not match its rows")
        updates += [dict(u) for u in chunk["updates"]]
        faces.append(face)
        clips.append(clip)
    return updates, np.concatenate(faces), np.concatenate(clips)


def build_identities(
    run_dir: Path, manifest: Manifest, cfg: Config, analyzer: Any = None, clip_embedder: Any = None,
    force: bool = False,
) -> dict[str, Any]:
    """Embed every kept instance (:func:`embed_chunk`, ``identity.chunk_instances`` at a time), then
    :func:`cluster_identities` — what a flow does with the chunks fanned out to workers (see module doc).

    The manifest is updated in memory, not saved (the caller saves it: :func:`run`, or the flow).
    """
    run_dir = Path(run_dir).resolve()
    instances, frames = identity_inputs(run_dir, manifest, cfg)
    models = load_models(cfg, analyzer, clip_embedder)
    chunks = [embed_chunk(chunk, cfg, models, run_dir=run_dir, frames=frames, index=i)
              for i, chunk in enumerate(chunked(instances, cfg.identity.chunk_instances))]
    return cluster_identities(run_dir, manifest, cfg, chunks, force=force)


def cluster_identities(
    run_dir: Path, manifest: Manifest, cfg: Config, chunks: Sequence[Mapping[str, Any]], force: bool = False,
) -> dict[str, Any]:
    """Merge the :func:`embed_chunk` results (in instance order), save ``embeddings/identity.npz``, cluster,
    write ``identity/`` and update the manifest in memory (see module doc).

    Manifest columns: the routing fields of :func:`castlab.identity.embed.embed_instances`, ``identity_cluster``
    (-1 noise; None for ``missing`` rows, which cannot be clustered) and ``cluster_probability``.
    Returns the summary, with ``sheets``: cluster → contact sheet path (for the cluster review project).
    """
    run_dir = Path(run_dir).resolve()
    out_dir = run_dir / IDENTITY_DIR
    if not chunks:
        raise InputError(run_dir / "manifest.parquet", "has no kept instances to identify (run curate first)")
    settings = ClusterSettings.from_config(cfg)
    join_min = float(cfg.identity.clip_join_min_similarity)
    updates, face_m, clip_m = _merge_chunks(chunks)
    by_id = {r["row_id"]: r for r in manifest.rows(kind="instance")}
    missing = [u["row_id"] for u in updates if u["row_id"] not in by_id]
    if missing:
        raise InputError(run_dir / "manifest.parquet", f"has no instance {missing[0]!r} (embedded elsewhere?)")
    instances = [by_id[u["row_id"]] for u in updates]
    save_embeddings(run_dir, [u["row_id"] for u in updates], face_m, clip_m, chunks[0]["meta"])
    for chunk in chunks:
        Path(chunk["vectors"]).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (run_dir / EMBEDDINGS_DIR / CHUNKS_DIR).rmdir()
    routes = np.array([u["embedding_route"] for u in updates])
    face_idx, clip_idx = np.flatnonzero(routes == "face"), np.flatnonzero(routes == "clip")
    n = len(updates)
    labels = np.full(n, NOISE, dtype=int)
    probs = np.zeros(n)
    basis_idx, basis = (face_idx, face_m) if len(face_idx) else (clip_idx, clip_m)
    basis_name = "face" if len(face_idx) else "clip"
    joined = 0
    if len(basis_idx):
        result = cluster_embeddings(basis[basis_idx], settings)
        labels[basis_idx], probs[basis_idx] = result.labels, result.probabilities
        if basis_name == "face" and len(clip_idx) and result.n_clusters:
            centroids = unit(np.stack([clip_m[face_idx[result.labels == k]].mean(axis=0)
                                       for k in range(result.n_clusters)]))
            sims = unit(clip_m[clip_idx]) @ centroids.T
            best = sims.argmax(axis=1)
            ok = sims[np.arange(len(clip_idx)), best] >= join_min
            labels[clip_idx[ok]] = best[ok]
            probs[clip_idx[ok]] = sims[np.arange(len(clip_idx)), best][ok]
            joined = int(ok.sum())
        report = write_cluster_outputs(out_dir, [instances[i] for i in basis_idx], result, force=force,
                                       profile=cfg.profile)
    else:
        result, report = None, {"reason": "no instance has a usable crop"}
    sub = subclusters(basis, labels, basis_idx, float(cfg.identity.subcluster_distance))
    for i, update in enumerate(updates):
        clustered = update["embedding_route"] != "missing"
        manifest.update(update["row_id"], **{k: v for k, v in update.items() if k != "row_id"},
                        identity_cluster=int(labels[i]) if clustered else None,
                        identity_subcluster=sub.get(i),
                        cluster_probability=round(float(probs[i]), 6) if clustered else None)
    summary = {
        "instances": n, "routes": {r: int((routes == r).sum()) for r in ("face", "clip", "missing")},
        "clustered_on": basis_name, "clusters": result.n_clusters if result else 0,
        "noise": int(((labels == NOISE) & (routes != "missing")).sum()), "joined_by_clip": joined,
        "reason": (result.reason if result else report.get("reason")),
        "report": str(out_dir / "cluster_report.json"), "profile": cfg.profile,
    }
    if basis_name == "clip" and len(basis_idx):
        summary["note"] = "no face in the whole run: clustered on open_clip vectors"
    sheets = {k: out_dir / SHEETS / f"character_{k}.png" for k in range(summary["clusters"])}
    summary["sheets"] = {k: str(p) for k, p in sheets.items() if p.is_file()}
    write_json_atomic(out_dir / "identity_summary.json", summary)
    return summary


def subclusters(vectors: np.ndarray, labels: np.ndarray, members: np.ndarray, distance: float) -> dict[int, int]:
    """Row index → subcluster within its identity cluster (e.g. costume or age variants), by average-linkage
    agglomerative clustering of its members' vectors cut at cosine `distance`; 0 = off (no subclusters)."""
    if distance <= 0:
        return {}
    from sklearn.cluster import AgglomerativeClustering

    out: dict[int, int] = {}
    for k in sorted(set(labels[members].tolist()) - {NOISE}):
        idx = members[labels[members] == k]
        if len(idx) < 2:
            out.update(dict.fromkeys(idx.tolist(), 0))
            continue
        model = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                        distance_threshold=distance)
        found = model.fit_predict(unit(vectors[idx]))
        rank = {int(c): n for n, c in enumerate(np.argsort(-np.bincount(found), kind="stable"))}  # 0 = largest
        out.update({int(i): rank[int(c)] for i, c in zip(idx, found, strict=True)})
    return out

