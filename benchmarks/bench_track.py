"""Multi-object tracking: two objects in one SAM2 video pass (castlab.video.track) vs one pass per object.

The same ``--frames`` synthetic frames (two squares moving across a textured set, ``--size`` px), the same predictor
(the tiny profile's SAM2 Hiera-tiny architecture at its image size, random weights: the cost is real, the masks
are noise), the same window (``--frames`` ≤ ``--max-frames``). Prints frames/s of each and the ratio of the
one-pass time to the two single passes. Goal: the multi-object pass costs less than two single passes (ratio < 1;
SAM2 encodes each frame once per state, so two objects in one state share the image encoder).

    .venv/bin/python benchmarks/bench_track.py [--frames 16] [--size 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

GOAL = 1.0


def scene(n: int, size: int) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    rng = np.random.default_rng(0)
    base = rng.integers(60, 160, (size, size, 3), dtype=np.uint8)
    frames = []
    for k in range(n):
        frame = base.copy()
        frame[size // 8:size // 8 + size // 5, (k * 3) % size:(k * 3) % size + size // 5] = (230, 40, 40)
        frame[size // 2:size // 2 + size // 4, size - size // 4 - (k * 2) % size:size - (k * 2) % size] = (40, 40, 230)
        frames.append(frame)
    a, b = np.zeros((size, size), bool), np.zeros((size, size), bool)
    a[size // 8:size // 8 + size // 5, :size // 5] = True
    b[size // 2:size // 2 + size // 4, size - size // 4:] = True
    return frames, {1: a, 2: b}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--max-frames", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("CASTLAB_WORKSPACE", tempfile.mkdtemp(prefix="castlab-bench-track-"))
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from castlab.config import load_config
    from castlab.segment.propagate import load_video_predictor
    from castlab.video.track import track_objects

    cfg = load_config(profile="tiny")
    predictor, version = load_video_predictor(cfg)
    frames, seeds = scene(args.frames, args.size)

    def run(objects: dict[int, np.ndarray]) -> None:
        track_objects(predictor, lambda s, e: frames[s:e], objects, 0, 0, len(frames), args.max_frames, 0.0)

    def best(work) -> float:
        work()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        return min(times)

    together = best(lambda: run(seeds))
    apart = best(lambda: run({1: seeds[1]})) + best(lambda: run({2: seeds[2]}))
    ratio = together / apart
    print(f"{version}: {args.frames} frames of {args.size} px, 2 objects")
    print(f"  one pass, both objects   {args.frames / together:6.2f} frames/s ({together:.2f} s)")
    print(f"  one pass per object      {args.frames / apart:6.2f} frames/s ({apart:.2f} s for both passes)")
    print(f"  ratio {ratio:.2f} of the two single passes (goal < {GOAL:g}): {'ok' if ratio < GOAL else 'MISSED'}")
    return 0 if ratio < GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
