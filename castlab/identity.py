"""Identity stage of a curate run: embeddings → clusters → outputs → Label Studio review.

Face-routed instances (ArcFace) are clustered PCA → UMAP → HDBSCAN (:mod:`castlab.clustering`); ArcFace and
open_clip vectors live in different spaces, so an instance without a usable face joins the face cluster
whose open_clip centroid is nearest when that similarity reaches ``identity.clip_join_min_similarity``, and
is noise otherwise — it stays in the manifest either way, with its route. When a run has no face at all
the open_clip vectors are clustered instead (the report says so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from castlab.faces import load_embeddings


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
