"""Near-duplicate frames: 64-bit pHash candidates (Hamming ≤ ``dedup.phash_max_distance``) confirmed by
SSIM (≥ ``dedup.ssim_min``), within and across shots and videos.

Candidate pairs come from multi-index hashing (Norouzi et al.): the 64 bits are split into 4 chunks of
16; two hashes within distance r differ in at most ``r // 4`` bits of at least one chunk (pigeonhole),
so each chunk table is probed with every 16-bit flip mask of weight ≤ r // 4 and the candidates are
verified on all 64 bits. Exact (no pair within r is missed) and vectorised; no all-pairs loop.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError
from skimage.metrics import structural_similarity
from tqdm import tqdm

from castlab.config import Config
from castlab.errors import ConfigError, InputError
from castlab.quality import DUPLICATE

CHUNKS = 4
CHUNK_BITS = 64 // CHUNKS


def _flip_masks(bits: int, max_weight: int) -> np.ndarray:
    """Every `bits`-bit mask with at most `max_weight` bits set (0 first)."""
    masks = [sum(1 << b for b in combo) for w in range(max_weight + 1) for combo in combinations(range(bits), w)]
    return np.asarray(masks, dtype=np.uint16)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with ``hamming(hashes[i], hashes[j]) <= max_distance``: ``(i, j, distance)``.

    `hashes` are 64-bit integers (``uint64``). Pairs come out sorted by ``(i, j)``, each once.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    if n < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    masks = _flip_masks(CHUNK_BITS, max_distance // CHUNKS)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    for c in range(CHUNKS):
        chunk = ((hashes >> np.uint64(c * CHUNK_BITS)) & np.uint64(0xFFFF)).astype(np.uint16)
        order = np.argsort(chunk, kind="stable")
        sizes = np.bincount(chunk, minlength=1 << CHUNK_BITS)  # bucket v holds order[first[v]:first[v]+sizes[v]]
        first = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        values = np.nonzero(sizes)[0].astype(np.uint16)
        for mask in masks:  # bucket pairs (a, b = a ^ mask), each unordered pair once
            other = values ^ mask
            hit = (sizes[other] > 0) & (values <= other)
            if not hit.any():
                continue
            i, j = _expand(values[hit], other[hit], sizes, first, order)
            close = hamming(hashes[i], hashes[j]) <= max_distance
            found_i.append(np.minimum(i, j)[close])
            found_j.append(np.maximum(i, j)[close])
    if not found_i:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    keys = np.unique(np.concatenate(found_i).astype(np.int64) * n + np.concatenate(found_j))
    i, j = keys // n, keys % n
    return i, j, hamming(hashes[i], hashes[j])


def _expand(
    a: np.ndarray, b: np.ndarray, sizes: np.ndarray, first: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Item pairs of the bucket pairs ``(a, b)``: every member of a with every member of b (i < j
    inside a bucket paired with itself)."""
    size_a, size_b = sizes[a], sizes[b]
    per = size_a * size_b
    pair = np.repeat(np.arange(len(a)), per)
    k = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)
    i = order[first[a][pair] + k // size_b[pair]]
    j = order[first[b][pair] + k % size_b[pair]]
    keep = (a[pair] != b[pair]) | (i < j)
    return i[keep], j[keep]


def phash(path: Path) -> int:
    """64-bit perceptual hash (imagehash's pHash) of an image file."""
    try:
        with Image.open(path) as im:
            return int(str(imagehash.phash(im)), 16)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(path, f"cannot read the frame image for hashing ({exc})") from exc


class _Thumbs:
    """Grey square thumbnails for SSIM, each image loaded once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.cache: dict[str, np.ndarray] = {}

    def __getitem__(self, path: str) -> np.ndarray:
        if path not in self.cache:
            try:
                with Image.open(path) as im:
                    grey = im.convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR)
            except (OSError, UnidentifiedImageError) as exc:
                raise InputError(path, f"cannot read the frame image for SSIM ({exc})") from exc
            self.cache[path] = np.asarray(grey, dtype=np.float32)
        return self.cache[path]

    def ssim(self, a: str, b: str) -> float:
        return float(structural_similarity(self[a], self[b], data_range=255.0))


def _settings(cfg: Config) -> tuple[int, float, int]:
    distance, ssim_min, size = (
        int(cfg.get("dedup.phash_max_distance")), float(cfg.get("dedup.ssim_min")), int(cfg.get("dedup.ssim_size")),
    )
    if not 0 <= distance <= 63:
        raise ConfigError(f"dedup.phash_max_distance must be in 0..63, got {distance}")
    if not -1.0 <= ssim_min <= 1.0:
        raise ConfigError(f"dedup.ssim_min must be in -1..1, got {ssim_min}")
    if size < 16:
        raise ConfigError(f"dedup.ssim_size must be >= 16 pixels, got {size}")
    return distance, ssim_min, size


def deduplicate(rows: list[dict[str, Any]], cfg: Config, progress: bool = True) -> list[dict[str, Any]]:
    """Copies of frame `rows` (same order) with near-duplicates rejected.

    Kept rows are visited sharpest first (``blur`` descending, then ``row_id``); a row within the
    pHash distance of an earlier kept row *and* SSIM-confirmed against it becomes ``status="rejected"``
    with ``duplicate_of`` (that row's id), ``dup_hamming``, ``dup_ssim`` and ``reject_codes``
    ``duplicate``. Every kept input row gets ``phash`` (16 hex digits). Rejected rows pass unchanged.
    """
    distance, ssim_min, size = _settings(cfg)
    out = [dict(r) for r in rows]
    live = [k for k, r in enumerate(out) if r.get("status") == "kept"]
    hashes = np.zeros(len(live), dtype=np.uint64)
    for n, k in enumerate(tqdm(live, desc="phash", unit="frame", leave=False, disable=not progress)):
        value = phash(Path(str(out[k]["path"])))
        hashes[n] = np.uint64(value)
        out[k]["phash"] = f"{value:016x}"
    neighbours: dict[int, list[tuple[int, int]]] = {}
    for a, b, d in zip(*near_pairs(hashes, distance), strict=True):
        neighbours.setdefault(int(a), []).append((int(b), int(d)))
        neighbours.setdefault(int(b), []).append((int(a), int(d)))
    order = sorted(range(len(live)), key=lambda n: (-float(out[live[n]].get("blur") or 0.0), out[live[n]]["row_id"]))
    thumbs, kept = _Thumbs(size), set()
    for n in order:
        match = _first_match(n, neighbours.get(n, []), kept, live, out, thumbs, ssim_min)
        if match is None:
            kept.add(n)
            continue
        rep, d, score = match
        row = out[live[n]]
        row.update(
            status="rejected",
            duplicate_of=out[live[rep]]["row_id"],
            dup_hamming=d,
            dup_ssim=round(score, 4),
            reject_reason=f"duplicate of {out[live[rep]]['row_id']} (hamming {d}, ssim {score:.3f})",
            reject_codes=DUPLICATE,
        )
    return out


def _first_match(
    n: int,
    candidates: list[tuple[int, int]],
    kept: set[int],
    live: list[int],
    rows: list[dict[str, Any]],
    thumbs: _Thumbs,
    ssim_min: float,
) -> tuple[int, int, float] | None:
    """The nearest kept representative (by Hamming distance) whose SSIM with frame `n` passes."""
    for rep, d in sorted((c for c in candidates if c[0] in kept), key=lambda c: (c[1], c[0])):
        score = thumbs.ssim(str(rows[live[n]]["path"]), str(rows[live[rep]]["path"]))
        if score >= ssim_min:
            return rep, d, score
    return None

