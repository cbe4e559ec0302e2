from itertools import product
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from castlab.config import load_config
from castlab.errors import ConfigError
from castlab.frames.dedup import CHUNK_BITS, CHUNKS, HashIndex, deduplicate, hamming, near_pairs, popcount_table


def _popcount(x: np.ndarray) -> np.ndarray:
    """Independent reference: unpack every bit."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    return np.unpackbits(x.view(np.uint8)).reshape(*x.shape, 64).sum(-1)


def _brute_force(hashes: np.ndarray, r: int) -> set[tuple[int, int]]:
    d = _popcount(hashes[:, None] ^ hashes[None, :])
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(d <= r, 1)), strict=True)}


def _index_pairs(hashes: np.ndarray, r: int) -> set[tuple[int, int]]:
    """Pairs found by querying a HashIndex with each hash before adding it (as the greedy pass does)."""
    index, pairs = HashIndex(r), set()
    for j, h in enumerate(hashes):
        hits = index.query(int(h))
        assert [d for _, d in hits] == sorted(d for _, d in hits)  # nearest first
        pairs |= {(i, j) for i, _ in hits}
        assert index.add(int(h)) == j
    return pairs


def _flip(h: np.uint64, bits) -> np.uint64:
    for b in bits:
        h ^= np.uint64(1) << np.uint64(int(b))
    return h


def test_popcount_fallback_and_hamming():
    x = np.random.default_rng(0).integers(0, 2**63, (6, 7), dtype=np.int64).astype(np.uint64) << np.uint64(1)
    x[0, 0] = np.uint64(2**64 - 1)
    assert np.array_equal(popcount_table(x), _popcount(x)) and popcount_table(x)[0, 0] == 64
    assert np.array_equal(hamming(x, np.zeros_like(x)), _popcount(x))


@pytest.mark.parametrize("r", [0, 1, 3, 5, 6, 12, 13, 15])  # every r % 4
def test_index_finds_exactly_the_pairs_brute_force_finds(r):
    rng = np.random.default_rng(r)
    base = rng.integers(0, 2**63, 40, dtype=np.int64).astype(np.uint64)
    hashes = [base[0]]
    for h in base:  # clusters at every distance up to r + 2, so pairs at exactly r and r + 1 exist
        hashes += [_flip(h, rng.choice(64, k, replace=False)) for k in range(0, min(r + 3, 64), 1)]
    hashes = np.array(hashes, dtype=np.uint64)
    i, j, d = near_pairs(hashes, r)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == _brute_force(hashes, r) == _index_pairs(hashes, r)
    assert np.array_equal(d, _popcount(hashes[i] ^ hashes[j]))
    assert (d == r).any()  # the boundary is included ...
    far = _popcount(hashes[:, None] ^ hashes[None, :]) == r + 1
    assert far.any() and (d <= r).all()  # ... and the pairs just beyond it are not


@pytest.mark.parametrize("r", [5, 12, 13])
def test_index_finds_pairs_however_their_differing_bits_spread_over_the_chunks(r):
    """Adversarial for multi-index hashing: every split of r and r + 1 differing bits over the 4 chunks."""
    rng = np.random.default_rng(7)
    splits = [s for s in product(range(r + 2), repeat=CHUNKS) if sum(s) in (r, r + 1)]
    hashes = []
    for split in splits:
        h = np.uint64(rng.integers(0, 2**63)) << np.uint64(1)
        bits = [c * CHUNK_BITS + b for c, k in enumerate(split) for b in rng.choice(CHUNK_BITS, k, replace=False)]
        hashes += [h, _flip(h, bits)]
    i, j, _ = near_pairs(np.array(hashes, dtype=np.uint64), r)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    index = HashIndex(r)
    for k, split in enumerate(splits):
        assert ((2 * k, 2 * k + 1) in found) == (sum(split) <= r), split
        assert index.add(int(hashes[2 * k])) == k
        assert (k in {key for key, _ in index.query(int(hashes[2 * k + 1]))}) == (sum(split) <= r), split


def test_index_edge_cases():
    assert [len(x) for x in near_pairs(np.zeros(1, np.uint64), 12)] == [0, 0, 0]
    same = np.full(5, 12345, np.uint64)
    i, j, d = near_pairs(same, 0)
    assert len(i) == 10 and (d == 0).all() and (i < j).all()


def _texture(seed: int, size=(96, 128)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize(size[::-1], Image.Resampling.BICUBIC))


def _frame(folder: Path, name: str, pixels: np.ndarray, blur: float, shot: str = "s0") -> dict:
    path = folder / f"{name}.png"
    Image.fromarray(pixels).save(path)
    return {"row_id": f"frame:v:{name}", "path": str(path), "status": "kept", "shot_id": shot, "blur": blur}


def test_near_duplicates_point_at_the_sharper_frame(tmp_path: Path):
    a = _texture(1)
    noisy = np.clip(a.astype(int) + np.random.default_rng(9).integers(-4, 5, a.shape), 0, 255).astype(np.uint8)
    rows = [
        _frame(tmp_path, "a_soft", noisy, blur=90.0),
        _frame(tmp_path, "a_sharp", a, blur=300.0, shot="s1"),  # another shot: dedup works across shots
        _frame(tmp_path, "b", _texture(2), blur=100.0),
        {"row_id": "frame:v:gone", "path": str(tmp_path / "missing.png"), "status": "rejected", "blur": 1.0},
    ]
    out = deduplicate(rows, load_config(), progress=False)
    assert [r["row_id"] for r in out] == [r["row_id"] for r in rows]
    soft, sharp, other, rejected = out
    assert soft["status"] == "rejected" and soft["duplicate_of"] == "frame:v:a_sharp"
    assert soft["reject_codes"] == "duplicate" and soft["dup_hamming"] <= 12 and soft["dup_ssim"] >= 0.92
    assert soft["reject_reason"].startswith("duplicate of frame:v:a_sharp (hamming")
    assert sharp["status"] == other["status"] == "kept" and len(sharp["phash"]) == 16
    assert rejected == rows[3] and rows[0]["status"] == "kept"  # inputs untouched


def test_ssim_confirms_phash_candidates_and_settings_come_from_config(tmp_path: Path):
    a = _texture(1)
    shifted = np.roll(a, 3, axis=1)  # close pHash, but structurally a few pixels off (SSIM ~0.7)
    rows = [_frame(tmp_path, "a", a, 200.0), _frame(tmp_path, "a2", shifted, 100.0)]

    def run(**dedup) -> dict:
        return deduplicate(rows, load_config(extra={"dedup": dedup}), progress=False)[1]

    assert run()["status"] == "kept" and "duplicate_of" not in run()  # pHash alone does not remove a frame
    lenient = run(ssim_min=0.5)
    assert lenient["duplicate_of"] == "frame:v:a" and 0.5 <= lenient["dup_ssim"] < 0.92
    d = lenient["dup_hamming"]
    assert 0 < d <= 12
    assert run(ssim_min=0.5, phash_max_distance=d)["status"] == "rejected"  # the distance bound is inclusive
    assert run(ssim_min=0.5, phash_max_distance=d - 1)["status"] == "kept"  # SSIM never sees non-candidates


def test_removed_frames_point_at_kept_frames_sharpest_first(tmp_path: Path):
    """A shot panning one pixel per frame: each frame passes SSIM against its neighbours only."""
    a = _texture(1)
    blur = {0: 400.0, 1: 300.0, 2: 200.0, 3: 100.0}
    rows = [_frame(tmp_path, f"p{k}", np.roll(a, k, axis=1), blur[k]) for k in (3, 1, 2, 0)]  # input order != blur
    rows.append(_frame(tmp_path, "p0_copy", a, 400.0, shot="s9"))  # same blur as p0: row_id decides
    out = {r["row_id"].split(":")[-1]: r for r in deduplicate(rows, load_config(), progress=False)}
    assert {k: r.get("duplicate_of", "").split(":")[-1] for k, r in out.items()} == {
        "p0": "", "p0_copy": "p0", "p1": "p0", "p2": "", "p3": "p2",  # p2 ~ p1, but p1 was removed
    }
    kept = {r["row_id"] for r in out.values() if r["status"] == "kept"}
    assert all(r["duplicate_of"] in kept for r in out.values() if r["status"] == "rejected")


def test_bad_input_is_named(tmp_path: Path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    [row] = deduplicate([{"row_id": "frame:v:1", "path": str(bad), "status": "kept", "blur": 1.0}], load_config(),
                        progress=False)  # recorded and skipped: the batch goes on
    assert row["status"] == "rejected" and "broken.jpg" in row["reject_reason"]
    with pytest.raises(ConfigError, match="dedup.phash_max_distance"):
        deduplicate([], load_config(extra={"dedup": {"phash_max_distance": 64}}))
