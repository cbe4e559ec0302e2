"""Near-duplicate search over frame hashes: castlab.frames.dedup.near_pairs vs imagededup's PHash.find_duplicates.

Synthetic film-shaped 64-bit pHashes: shots of 20–60 frames whose consecutive hashes differ by 0–4
random bits (adjacent-frame duplicates, the ground truth) among unrelated shots. Both searches get the
same hashes and the same threshold (Hamming ≤ 12); recall is measured on the adjacent-frame pairs.
imagededup (it pulls torch) runs in its own venv, `.venv-bench` (`scripts/setup_venv.sh bench`).

imagededup runs with its defaults (Cython brute force on every CPU); castlab on one thread.

    .venv/bin/python benchmarks/bench_dedup.py            # imagededup on 10k hashes, castlab on 10k and 100k
    .venv/bin/python benchmarks/bench_dedup.py --n 30000  # ~5 min on 2 cores; imagededup grows ~n^2 (100k: ~1 h)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH_PY = ROOT / ".venv-bench" / "bin" / "python"
THRESHOLD = 12


def film_hashes(n: int, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """`n` hashes in shots, and the adjacent-frame pairs within THRESHOLD (ground truth)."""
    rng = np.random.default_rng(seed)
    hashes = np.zeros(n, dtype=np.uint64)
    truth: set[tuple[int, int]] = set()
    k = 0
    while k < n:
        h = np.uint64(rng.integers(0, 2**63)) * np.uint64(2) + np.uint64(rng.integers(0, 2))
        for step in range(min(int(rng.integers(20, 61)), n - k)):
            if step:
                for bit in rng.choice(64, int(rng.integers(0, 5)), replace=False):
                    h ^= np.uint64(1) << np.uint64(int(bit))
                if int(hashes[k - 1] ^ h).bit_count() <= THRESHOLD:
                    truth.add((k - 1, k))
            hashes[k] = h
            k += 1
    return hashes, truth


def castlab_pairs(hashes: np.ndarray) -> tuple[float, set[tuple[int, int]]]:
    from castlab.frames.dedup import near_pairs  # not at the top: the --worker process (.venv-bench) has no castlab

    start = time.perf_counter()
    i, j, _ = near_pairs(hashes, THRESHOLD)
    return time.perf_counter() - start, set(zip(i.tolist(), j.tolist(), strict=True))


def imagededup_pairs(hashes: np.ndarray) -> tuple[float, set[tuple[int, int]]]:
    """Runs this file with --worker in .venv-bench; same hashes as 16-digit hex strings."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "hashes.json", Path(tmp) / "out.json"
        src.write_text(json.dumps([f"{int(h):016x}" for h in hashes]))
        subprocess.run([str(BENCH_PY), __file__, "--worker", str(src), str(dst)], check=True)
        out = json.loads(dst.read_text())
    return out["seconds"], {tuple(p) for p in out["pairs"]}


def worker(src: str, dst: str) -> None:
    import types
    import warnings

    warnings.filterwarnings("ignore", message="Parameter num_enc_workers has no effect")
    # imagededup.methods imports its CNN module, whose class body downloads MobileNet weights:
    # stand in an empty module (offline machines; the hashing search does not use it).
    sys.modules["imagededup.methods.cnn"] = types.ModuleType("imagededup.methods.cnn")
    sys.modules["imagededup.methods.cnn"].CNN = None  # type: ignore[attr-defined]
    from imagededup.methods.hashing import PHash

    hexes = json.loads(Path(src).read_text())
    encoding_map = {str(k): h for k, h in enumerate(hexes)}
    start = time.perf_counter()
    found = PHash(verbose=False).find_duplicates(encoding_map=encoding_map, max_distance_threshold=THRESHOLD)
    seconds = time.perf_counter() - start
    pairs = sorted({tuple(sorted((int(a), int(b)))) for a, dups in found.items() for b in dups})
    Path(dst).write_text(json.dumps({"seconds": seconds, "pairs": pairs}))


def brute_force_count(hashes: np.ndarray, rows: int = 500) -> int:
    """Pairs within THRESHOLD by comparing every pair (in row blocks, to bound memory)."""
    from castlab.frames.dedup import hamming

    total = 0
    for s in range(0, len(hashes), rows):
        block = hashes[s : s + rows]
        later = np.arange(len(hashes) - s)[None, :] > np.arange(len(block))[:, None]
        total += int(np.count_nonzero((hamming(block[:, None], hashes[None, s:]) <= THRESHOLD) & later))
    return total


def recall(found: set[tuple[int, int]], truth: set[tuple[int, int]]) -> float:
    return len(found & truth) / max(1, len(truth))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="hashes both searches get (default 10000)")
    parser.add_argument("--castlab-n", type=int, default=100_000, help="castlab alone on this many as well")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    if not BENCH_PY.exists():
        print(f"{BENCH_PY} missing: run `scripts/setup_venv.sh bench` first", file=sys.stderr)
        return 2

    hashes, truth = film_hashes(args.n)
    ours_s, ours = castlab_pairs(hashes)
    base_s, base = imagededup_pairs(hashes)
    brute = brute_force_count(hashes) if args.n <= 30_000 else None  # exactness check (slow beyond that)
    if brute is not None and brute != len(ours):
        print(f"castlab found {len(ours)} pairs, brute force {brute}: the index is not exact", file=sys.stderr)
        return 1
    print(f"{args.n} hashes, {len(truth)} adjacent-frame duplicate pairs, threshold {THRESHOLD}, {os.cpu_count()} CPUs")
    print(f"  imagededup PHash.find_duplicates : {base_s:8.2f} s  pairs {len(base):8d}  "
          f"adjacent recall {recall(base, truth):.4f}")
    print(f"  castlab near_pairs (MIH)         : {ours_s:8.2f} s  pairs {len(ours):8d}  "
          f"adjacent recall {recall(ours, truth):.4f}" + (f"  (= brute force: {brute})" if brute is not None else ""))
    print(f"  speed-up: x{base_s / ours_s:.1f} (goal >= x10, recall >= imagededup's)")
    if args.castlab_n > args.n:
        big, big_truth = film_hashes(args.castlab_n, seed=1)
        seconds, found = castlab_pairs(big)
        print(f"castlab alone, {args.castlab_n} hashes: {seconds:.2f} s, {len(found)} pairs, "
              f"adjacent recall {recall(found, big_truth):.4f}")
    ok = base_s / ours_s >= 10 and recall(ours, truth) >= recall(base, truth)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
