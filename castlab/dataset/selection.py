"""Choose a character's training images from its candidates (pure logic, no I/O).

Every candidate is a dict with ``row_id``, ``view``, ``shot_key``, ``quality`` (0..1) and ``clip`` (an image
embedding or None). In order:

1. **near-duplicates**: candidates are ranked by quality; one whose embedding is more than `max_similarity`
   cosine-alike to a better-ranked kept one is a duplicate of it (over all runs at once);
2. **size**: ``n = min(target_max, unique candidates)``;
3. **view quotas**: each view gets ``floor(share * n)`` (never more than it has); what is left goes one by one
   to the view furthest below its share that still has candidates, so rare views keep all they have and common
   views fill the rest. Views without a share of their own count as ``unknown``. Other dataset types balance
   another key the same way (a pose category, an expression label: ``select(..., key=...)``), by default with
   an equal share per label;
4. **spread over shots**: inside a view, candidates are taken round-robin over its shots (each shot's best
   first), so a long shot cannot fill a view.

Each candidate not taken gets a ``code`` and a ``reason`` (see :data:`REJECT_CODES`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from castlab.manifest import row_text

REJECT_CODES = ("missing_file", "low_quality", "caption_flagged", "duplicate", "view_quota", "label_quota",
                "over_target")


@dataclass
class Selection:
    selected: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    allotment: dict[str, int] = field(default_factory=dict)  # view → images taken
    available: dict[str, int] = field(default_factory=dict)  # view → unique candidates
    undeduplicated: int = 0  # candidates without an embedding (kept without a duplicate check)


def view_group(view: Any, shares: dict[str, float]) -> str:
    """The group a value falls in: itself when it has a share (or no group has one), else ``unknown``."""
    text = row_text(view) or "unknown"
    return text if text in shares or not shares else "unknown"


def rejection(row: dict[str, Any], code: str, reason: str) -> dict[str, Any]:
    return {"row_id": str(row["row_id"]), "run": row.get("run"), "code": code, "reason": reason,
            "view": row_text(row.get("view")) or "unknown", "shot_key": row.get("shot_key"),
            "quality": None if row.get("quality") is None else round(float(row["quality"]), 4)}


def _ranked(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(candidates, key=lambda r: (-float(r.get("quality") or 0.0), str(r["row_id"])))


def deduplicate(ranked: list[dict[str, Any]], max_similarity: float) -> tuple[list[dict], list[dict], int]:
    """(kept, rejected duplicates, candidates without an embedding) — `ranked` best first."""
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    owners: list[str] = []
    missing = 0
    for row in ranked:
        vector = row.get("clip")
        if vector is None:
            missing += 1
            kept.append(row)
            continue
        v = np.asarray(vector, np.float64).ravel()
        norm = float(np.linalg.norm(v))
        if not math.isfinite(norm) or norm == 0:
            missing += 1
            kept.append(row)
            continue
        v = v / norm
        if vectors:
            sims = np.stack(vectors) @ v
            best = int(np.argmax(sims))
            if sims[best] > max_similarity:
                rejected.append(rejection(row, "duplicate", f"duplicate of {owners[best]} (cosine {sims[best]:.4f} > "
                                                            f"{max_similarity})"))
                continue
        vectors.append(v)
        owners.append(str(row["row_id"]))
        kept.append(row)
    return kept, rejected, missing


def allot(available: dict[str, int], shares: dict[str, float], n: int) -> dict[str, int]:
    """Images per view: ``floor(share * n)`` capped by what the view has, the rest to the views furthest below
    their share that still have candidates."""
    total = sum(shares.values())
    share = {v: shares.get(v, 0.0) / total for v in available}
    taken = {v: min(available[v], math.floor(share[v] * n)) for v in available}
    while sum(taken.values()) < n:
        open_views = [v for v in available if taken[v] < available[v]]
        if not open_views:
            break
        best = min(open_views, key=lambda v: (taken[v] / (share[v] * n) if share[v] > 0 else math.inf, v))
        taken[best] += 1
    return taken


def spread_over_shots(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` (best first) reordered round-robin over their shots, shots in order of their best row."""
    shots: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        shots.setdefault(str(row.get("shot_key")), []).append(row)
    queues = list(shots.values())
    out: list[dict[str, Any]] = []
    depth = 0
    while len(out) < len(rows):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out


def select(
    candidates: list[dict[str, Any]], shares: dict[str, float], target_max: int, max_similarity: float,
    key: str = "view",
) -> Selection:
    """The selection described in the module docstring, the quotas over the rows' `key` (``view`` for characters;
    a label such as a pose category for other dataset types). Empty `shares`: every group present gets an equal
    share (balanced labels)."""
    unique, rejected, missing = deduplicate(_ranked(candidates), max_similarity)
    n = min(target_max, len(unique))
    by_group: dict[str, list[dict[str, Any]]] = {}
    for row in unique:
        by_group.setdefault(view_group(row.get(key), shares), []).append(row)
    shares = shares or dict.fromkeys(sorted(by_group), 1.0)
    available = {v: len(rows) for v, rows in by_group.items()}
    taken = allot(available, shares, n)
    total = sum(shares.values())
    quota_code = "view_quota" if key == "view" else "label_quota"
    selected: list[dict[str, Any]] = []
    for group in sorted(by_group, key=lambda v: (list(shares).index(v) if v in shares else len(shares), v)):
        ordered = spread_over_shots(by_group[group])
        selected.extend(ordered[: taken[group]])
        quota = math.ceil(shares.get(group, 0.0) / total * n - 1e-9)
        for rank, row in enumerate(ordered[taken[group]:], start=taken[group] + 1):
            if taken[group] < quota:
                code, reason = "over_target", f"dataset full at target_size_max={target_max}"
            else:
                code, reason = quota_code, (f"{key} quota: {group} holds {taken[group]} of {n} "
                                            f"(share {shares.get(group, 0.0) / total:.2f})")
            rejected.append(rejection(row, code, f"{reason}; ranked {rank} of {available[group]} in its {key}"))
    return Selection(selected, rejected, taken, available, missing)


def view_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(row_text(r.get("view")) or "unknown" for r in rows))
