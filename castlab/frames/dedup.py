"""Near-duplicate frames: 64-bit pHash candidates (Hamming ≤ ``dedup.phash_max_distance``) confirmed by
SSIM (≥ ``dedup.ssim_min``), within and across shots and videos.

Candidate pairs come from multi-index hashing (Norouzi et al.): the 64 bits are split into 4 chunks of
16. With ``r = 4q + a`` (``0 <= a < 4``), two hashes within distance r differ in at most q bits of one
of the first a + 1 chunks or in at most q - 1 bits of one of the others (otherwise they would differ in
at least ``(a + 1)(q + 1) + (3 - a)q = r + 1`` bits). So each chunk table is probed with every 16-bit
flip mask of that chunk's radius and the candidates are verified on all 64 bits. Exact (no pair within
r is missed); no all-pairs loop. :class:`HashIndex` is the incremental form the greedy pass uses (each
frame is looked up among the kept representatives only); :func:`near_pairs` the vectorised batch form.
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
from castlab.frames.quality import DUPLICATE, UNREADABLE

CHUNKS = 4
CHUNK_BITS = 64 // CHUNKS


def _flip_masks(bits: int, max_weight: int) -> np.ndarray:
    """Every `bits`-bit mask with at most `max_weight` bits set (0 first)."""
    masks = [sum(1 << b for b in combo) for w in range(max_weight + 1) for combo in combinations(range(bits), w)]
    return np.asarray(masks, dtype=np.uint16)


_BYTE_BITS = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def popcount_table(x: np.ndarray) -> np.ndarray:
    """Set bits of each ``uint64`` in `x`, by a byte lookup table (numpy < 2 has no ``bitwise_count``)."""
    flat = np.ascontiguousarray(x, dtype=np.uint64).reshape(-1)
    return _BYTE_BITS[flat.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.int64).reshape(np.shape(x))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise Hamming distance of 64-bit hashes (``int64``)."""
    xor = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(xor).astype(np.int64)
    return popcount_table(xor)


def _chunk_radii(max_distance: int) -> list[int]:
    """Per-chunk probe radius (refined pigeonhole, see the module docstring); -1 = chunk not probed."""
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    q, a = divmod(max_distance, CHUNKS)
    return [q if c <= a else q - 1 for c in range(CHUNKS)]


class HashIndex:
    """Incremental multi-index over 64-bit hashes: :meth:`add` them, :meth:`query` those within a distance.

    Per chunk, a dict from the 16-bit chunk value to the keys stored with it; a query probes each chunk
    with the flip masks of that chunk's radius and verifies the candidates on all 64 bits.
    """

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance
        self.masks = [_flip_masks(CHUNK_BITS, r).tolist() for r in _chunk_radii(max_distance)]  # r = -1: none
        self.tables: list[dict[int, list[int]]] = [{} for _ in range(CHUNKS)]
        self.hashes: list[int] = []

    def __len__(self) -> int:
        return len(self.hashes)

    def add(self, value: int) -> int:
        """Store `value`; returns its key (0, 1, 2, ... in insertion order)."""
        key = len(self.hashes)
        self.hashes.append(int(value))
        for c, table in enumerate(self.tables):
            table.setdefault((int(value) >> (c * CHUNK_BITS)) & 0xFFFF, []).append(key)
        return key

    def query(self, value: int) -> list[tuple[int, int]]:
        """``(key, distance)`` of every stored hash within ``max_distance`` of `value`, nearest first."""
        value = int(value)
        found: set[int] = set()
        for c, (table, masks) in enumerate(zip(self.tables, self.masks, strict=True)):
            chunk = (value >> (c * CHUNK_BITS)) & 0xFFFF
            for mask in masks:
                found.update(table.get(chunk ^ mask, ()))
        hits = ((key, (self.hashes[key] ^ value).bit_count()) for key in found)
        return sorted(((k, d) for k, d in hits if d <= self.max_distance), key=lambda kd: (kd[1], kd[0]))


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with ``hamming(hashes[i], hashes[j]) <= max_distance``: ``(i, j, distance)``.

    `hashes` are 64-bit integers (``uint64``). Pairs come out sorted by ``(i, j)``, each once.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    radii = _chunk_radii(max_distance)
    if n < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    for c, radius in enumerate(radii):
        if radius < 0:
            continue
        masks = _flip_masks(CHUNK_BITS, radius)
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
        int(cfg.dedup.phash_max_distance), float(cfg.dedup.ssim_min), int(cfg.dedup.ssim_size),
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
    pHash distance of a row kept before it *and* SSIM-confirmed against it (the nearest such by pHash)
    becomes ``status="rejected"``
    with ``duplicate_of`` (that row's id), ``dup_hamming``, ``dup_ssim`` and ``reject_codes``
    ``duplicate``. Every kept input row gets ``phash`` (16 hex digits). Rejected rows pass unchanged; a kept
    frame whose image cannot be read is rejected with the reason (``reject_codes`` ``unreadable``), the rest go on.
    """
    distance, ssim_min, size = _settings(cfg)
    out = [dict(r) for r in rows]
    live = []
    for k in tqdm([k for k, r in enumerate(out) if r.get("status") == "kept"], desc="phash", unit="frame",
                  leave=False, disable=not progress):
        try:
            out[k]["phash"] = f"{phash(Path(str(out[k]['path']))):016x}"
            live.append(k)
        except InputError as exc:
            out[k].update(status="rejected", reject_reason=f"deduplication failed: {exc}", reject_codes=UNREADABLE)
    hashes = np.array([int(out[k]["phash"], 16) for k in live], dtype=np.uint64)
    order = sorted(range(len(live)), key=lambda n: (-float(out[live[n]].get("blur") or 0.0), out[live[n]]["row_id"]))
    thumbs, index, reps = _Thumbs(size), HashIndex(distance), []  # reps[key] = position in `live` of index key
    for n in order:
        row = out[live[n]]
        for key, d in index.query(int(hashes[n])):  # kept representatives only, nearest pHash first
            rep = out[live[reps[key]]]
            try:
                score = thumbs.ssim(str(row["path"]), str(rep["path"]))
            except InputError:  # read for its hash a moment ago: an image that went away is not a duplicate
                continue
            if score >= ssim_min:
                row.update(
                    status="rejected",
                    duplicate_of=rep["row_id"],
                    dup_hamming=d,
                    dup_ssim=round(score, 4),
                    reject_reason=f"duplicate of {rep['row_id']} (hamming {d}, ssim {score:.3f})",
                    reject_codes=DUPLICATE,
                )
                break
        else:
            index.add(int(hashes[n]))
            reps.append(n)
    return out
