"""Which instances may enter a character's dataset, gathered over one or more curate runs.

An instance is a candidate of character C when its mask was reviewed (accepted, corrected or drawn) AND its
identity was reviewed as C (an instance decision, or a cluster named or merged by a reviewer). Noise, "not a
character", split clusters and unreviewed default names never are. Each candidate row carries ``run`` (the run
folder, workspace-relative), ``frame_path`` (its frame, for the context crop) and ``clip`` (its image embedding,
or None).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from castlab.errors import InputError
from castlab.identity.embed import load_embeddings
from castlab.identity.review import normalise
from castlab.manifest import MANIFEST_NAME, Manifest, row_text
from castlab.workspace import relative_to_workspace

REVIEWED_STATES = ("accepted", "corrected", "added")  # mask review states that count as reviewed
REVIEWED_IDENTITY_STATES = ("reviewed", "cluster")  # identity states a reviewer decided


def reviewed_instances(manifest: Manifest) -> list[dict[str, Any]]:
    """Kept instances whose mask a reviewer accepted, corrected or drew."""
    if "review_state" not in manifest.df.columns:
        return []
    return [r for r in manifest.rows(kind="instance", status="kept") if r.get("review_state") in REVIEWED_STATES]


def run_label(run_dir: Path | str) -> str:
    """A run folder as datasets name it: workspace-relative when inside the workspace, else as given."""
    try:
        return relative_to_workspace(Path(run_dir))
    except InputError:
        return str(run_dir)


def has_reviewed_identity(row: dict[str, Any]) -> bool:
    return bool(row_text(row.get("identity"))) and row.get("identity_state") in REVIEWED_IDENTITY_STATES


@dataclass
class CharacterPool:
    """Candidates by character name (spelt as first seen), over all runs given."""

    runs: list[Path]
    by_name: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return sorted(self.by_name, key=lambda n: (-len(self.by_name[n]), normalise(n)))

    def find(self, name: str) -> str:
        """The pool's spelling of `name`; InputError listing the known names when there is none."""
        wanted = normalise(name)
        for known in self.by_name:
            if normalise(known) == wanted:
                return known
        listing = ", ".join(f"{n} ({len(self.by_name[n])})" for n in self.names()) or "none"
        raise InputError(", ".join(map(str, self.runs)), f"no reviewed character named {name!r}; known: {listing}")


def _frame_paths(manifest: Manifest) -> dict[str, str]:
    return {str(r["row_id"]): row_text(r.get("path")) for r in manifest.rows(kind="frame") if row_text(r.get("path"))}


def _clip_vectors(run_dir: Path, notes: list[str]) -> dict[str, np.ndarray]:
    try:
        emb = load_embeddings(run_dir)
    except InputError as exc:
        notes.append(f"{run_dir}: {exc}; its candidates are not checked for near-duplicates")
        return {}
    mask = emb.clip_mask
    return {rid: emb.clip[i] for i, rid in enumerate(emb.row_ids) if mask[i]}


def gather(run_dirs: list[Path]) -> CharacterPool:
    """The candidates of every reviewed character of `run_dirs`; InputError for a run without a manifest or
    without any reviewed identity (naming the run and what to review)."""
    pool = CharacterPool([Path(r) for r in run_dirs])
    spelling: dict[str, str] = {}
    for run_dir in pool.runs:
        path = run_dir / MANIFEST_NAME
        if not path.is_file():
            raise InputError(run_dir, f"is not a curate run (no {MANIFEST_NAME})")
        manifest = Manifest.load(path)
        masks = reviewed_instances(manifest)
        rows = [r for r in masks if has_reviewed_identity(r)]
        if not rows:
            what = ("no reviewed instance masks: review the masks project, then `castlab review-sync`" if not masks
                    else "no reviewed identities among its reviewed instances: run `castlab identify`, name the "
                         "clusters (or instances) in the identity projects, then `castlab review-sync`")
            raise InputError(run_dir, what)
        frames = _frame_paths(manifest)
        vectors = _clip_vectors(run_dir, pool.notes)
        for row in rows:
            name = spelling.setdefault(normalise(str(row["identity"])), " ".join(str(row["identity"]).split()))
            vector = vectors.get(str(row["row_id"]))
            pool.by_name.setdefault(name, []).append({
                **row, "run": run_label(run_dir), "frame_path": frames.get(row_text(row.get("parent_id"))) or None,
                "clip": vector,
            })
    return pool
