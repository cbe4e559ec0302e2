"""Identity suggestions that learn: nearest neighbours over reviewed embeddings, updated one answer at a time.

An :class:`IdentityIndex` keeps, per embedding route (``face``: ArcFace, ``clip``: open_clip; vectors of
different routes are never compared), the unit vectors of instances whose identity a person decided, and
suggests the identity of any other vector by its ``k`` nearest reviewed neighbours (cosine similarity,
similarity-weighted vote). ``learn`` adds or corrects one instance in place — the ML backend calls it from
Label Studio's annotation webhook, so the next suggestion already uses the new answer, without a restart.
A suggestion needs ``min_similarity`` to its best neighbour; below that there is no suggestion.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Suggestion:
    identity: str
    score: float  # the winner's share of the similarity-weighted vote, times its best similarity
    neighbours: int


class IdentityIndex:
    def __init__(self, k: int = 5, min_similarity: float = 0.3) -> None:
        self.k, self.min_similarity = k, min_similarity
        self._rows: dict[str, dict[str, int]] = defaultdict(dict)  # route → row id → slot
        self._vectors: dict[str, list[np.ndarray]] = defaultdict(list)
        self._names: dict[str, list[str | None]] = defaultdict(list)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(1 for names in self._names.values() for n in names if n is not None)

    def learn(self, row_id: str, route: str, vector: np.ndarray, identity: str | None) -> None:
        """Record (or correct) the reviewed identity of one instance; None forgets it."""
        vec = np.asarray(vector, np.float32).ravel()
        norm = float(np.linalg.norm(vec))
        if not np.isfinite(norm) or norm == 0:
            raise ValueError(f"{row_id}: cannot learn from a zero or non-finite {route} embedding")
        with self._lock:
            slot = self._rows[route].get(row_id)
            if slot is None:
                self._rows[route][row_id] = len(self._vectors[route])
                self._vectors[route].append(vec / norm)
                self._names[route].append(identity)
            else:
                self._vectors[route][slot] = vec / norm
                self._names[route][slot] = identity

    def suggest(self, route: str, vector: np.ndarray, exclude: str | None = None) -> Suggestion | None:
        """The identity most of the nearest reviewed neighbours share, or None (nothing close enough)."""
        with self._lock:
            names = list(self._names.get(route, []))
            if not names:
                return None
            matrix = np.stack(self._vectors[route])
            skip = self._rows[route].get(exclude) if exclude else None
        vec = np.asarray(vector, np.float32).ravel()
        vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
        sims = matrix @ vec
        valid = np.array([n is not None for n in names])
        if skip is not None:
            valid[skip] = False
        if not valid.any():
            return None
        sims = np.where(valid, sims, -np.inf)
        order = np.argsort(-sims)[: min(self.k, int(valid.sum()))]
        if sims[order[0]] < self.min_similarity:
            return None
        votes: dict[str, float] = defaultdict(float)
        for i in order:
            if sims[i] >= self.min_similarity:
                votes[names[i]] += float(sims[i])
        winner = max(votes, key=lambda n: (votes[n], n))
        best = max(float(sims[i]) for i in order if names[i] == winner)
        return Suggestion(winner, round(votes[winner] / sum(votes.values()) * best, 6), len(order))
