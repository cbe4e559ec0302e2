from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from castlab.config import load_config
from castlab.dedup import deduplicate, near_pairs
from castlab.errors import ConfigError, InputError


def _brute_force(hashes: np.ndarray, r: int) -> set[tuple[int, int]]:
    d = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(d <= r, 1)), strict=True)}


def _flip(h: np.uint64, bits) -> np.uint64:
    for b in bits:
        h ^= np.uint64(1) << np.uint64(int(b))
    return h


@pytest.mark.parametrize("r", [0, 3, 12, 20])
def test_index_finds_exactly_the_pairs_brute_force_finds(r):
    rng = np.random.default_rng(r)
    base = rng.integers(0, 2**63, 40, dtype=np.int64).astype(np.uint64)
    hashes = [base[0]]
    for h in base:  # clusters at every distance up to r + 2, so pairs at exactly r and r + 1 exist
        hashes += [_flip(h, rng.choice(64, k, replace=False)) for k in range(0, min(r + 3, 64), 1)]
    hashes = np.array(hashes, dtype=np.uint64)
    i, j, d = near_pairs(hashes, r)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == _brute_force(hashes, r)
    assert np.array_equal(d, np.bitwise_count(hashes[i] ^ hashes[j]))
    assert (d == r).any()  # the boundary is included ...
    far = np.bitwise_count(hashes[:, None] ^ hashes[None, :]) == r + 1
    assert far.any() and not any(np.bitwise_count(hashes[a] ^ hashes[b]) > r for a, b in zip(i, j, strict=True))


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
    shifted = np.roll(a, 3, axis=1)  # same pHash neighbourhood, structurally a few pixels off
    rows = [_frame(tmp_path, "a", a, 200.0), _frame(tmp_path, "a2", shifted, 100.0)]
    lenient = deduplicate(rows, load_config(extra={"dedup": {"ssim_min": 0.0}}), progress=False)
    assert lenient[1]["duplicate_of"] == "frame:v:a"
    strict = deduplicate(rows, load_config(extra={"dedup": {"ssim_min": 0.999}}), progress=False)
    assert all(r["status"] == "kept" for r in strict)  # pHash alone does not remove a frame
    exact_hash = deduplicate(rows, load_config(extra={"dedup": {"phash_max_distance": 0, "ssim_min": 0.0}}),
                             progress=False)
    assert exact_hash[1]["status"] == ("rejected" if lenient[1]["dup_hamming"] == 0 else "kept")


def test_bad_input_is_named(tmp_path: Path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="broken.jpg"):
        deduplicate([{"row_id": "frame:v:1", "path": str(bad), "status": "kept", "blur": 1.0}], load_config(),
                    progress=False)
    with pytest.raises(ConfigError, match="dedup.phash_max_distance"):
        deduplicate([], load_config(extra={"dedup": {"phash_max_distance": 64}}))
