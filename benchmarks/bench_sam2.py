"""SAM2 (Hiera-tiny at 1024): interactive click latency with castlab's embedding cache vs re-encoding per click.

Inputs (cached in ``.cache/bench/sam2_frames``): ``--frames`` 1280x720 frames of Big Buck Bunny, spread over
the clip. Model: the ``tiny`` profile (sam2.1_hiera_t, random weights, offline) with ``image_size`` 1024, so
every timing is that of the real architecture at its real resolution.

1. Interactive latency, as the ML backend serves a request (``Segmenter.predict_image``: content hash, embedding,
   prompt decode, mask upsampled to the frame). Each frame is one task:

   - first click on a task: the embedding is computed (cache miss);
   - repeated clicks on the same task: new prompts each time (one positive point, positive + negative points,
     a box, a box + a point), the embedding comes from the cache;
   - baseline: the same clicks on a segmenter whose cache is off (``cache_mb=0``), i.e. ``set_image`` + predict
     on every request, as the public SAM2 example ML backend does. Interleaved with the cached clicks (a busy
     machine slows both alike); both must give the same masks (checked: identical count, min IoU >= 0.99).

   Goal: re-encoding p50 / repeated-click p50 >= 10.
2. Curate segmentation step: ``auto_instances`` on each frame (new image each time, as in curate): frames/s and
   instances/s (no goal; random weights, so the instance count only shows the filters ran).

Runs on CPU, and on CUDA as well when available. Exit status 1 when the goal is missed or masks differ.

    .venv/bin/python benchmarks/bench_sam2.py                         # ~2 min on 2 cores
    .venv/bin/python benchmarks/bench_sam2.py --clicks 40 --frames 4  # more samples
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sample_frames import CACHE, frames

from castlab.config import Config, load_config
from castlab.models.segmenter import Segmenter, load_segmenter

ARCH, IMAGE_SIZE = "sam2.1_hiera_t", 1024
GOAL = 10.0
Prompt = dict[str, list[tuple[float, float]] | list[int] | tuple[float, float, float, float] | None]


def bench_frames(count: int) -> list[np.ndarray]:
    """`count` RGB frames of Big Buck Bunny at evenly spread decode positions (PNG-cached)."""
    return frames(count, CACHE / "sam2_frames", "bbb")


def click_prompts(n: int, height: int, width: int, seed: int = 0) -> list[Prompt]:
    """`n` annotator clicks: cycles through point, points (+/-), box, box + point; random positions."""
    rng = np.random.default_rng(seed)

    def point() -> tuple[float, float]:
        return float(rng.uniform(0.1, 0.9) * width), float(rng.uniform(0.1, 0.9) * height)

    prompts: list[Prompt] = []
    for k in range(n):
        kind = k % 4
        x0, y0 = point()
        box = (x0, y0, min(width - 1.0, x0 + width * 0.3), min(height - 1.0, y0 + height * 0.4))
        if kind == 0:
            prompts.append({"points": [point()], "labels": [1], "box": None})
        elif kind == 1:
            prompts.append({"points": [point(), point(), point()], "labels": [1, 1, 0], "box": None})
        elif kind == 2:
            prompts.append({"points": None, "labels": None, "box": box})
        else:
            prompts.append({"points": [((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)], "labels": [1], "box": box})
    return prompts


def bench_config() -> Config:
    """The tiny profile (random weights, offline) with SAM2 Hiera-tiny at its real 1024 input size."""
    segmenter = {"arch": ARCH, "image_size": IMAGE_SIZE}
    return load_config(profile="tiny", extra={"models": {"tiny": {"segmenter": segmenter}}})


@dataclass
class Result:
    """Seconds per call for each measured path on one device."""

    device: str
    load_s: float = 0.0
    first: list[float] = field(default_factory=list)
    repeated: list[float] = field(default_factory=list)
    reencode: list[float] = field(default_factory=list)
    auto: list[float] = field(default_factory=list)
    instances: int = 0
    identical: int = 0
    min_iou: float = 1.0
    hits: int = 0
    misses: int = 0


def timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    """Wall seconds of `fn()` (CUDA synchronised) and its result."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def click(seg: Segmenter, image: np.ndarray, prompt: Prompt) -> np.ndarray:
    """One ML backend request: the mask for `prompt` on `image` (first element of predict_image's result)."""
    return seg.predict_image(image, points=prompt["points"], labels=prompt["labels"], box=prompt["box"])[0]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def measure(device: str, frames: list[np.ndarray], clicks: int) -> Result:
    res = Result(device)
    cfg = bench_config()
    start = time.perf_counter()
    cached = load_segmenter(cfg, device=device)
    reencoding = load_segmenter(cfg, device=device, cache_mb=0)
    res.load_s = time.perf_counter() - start
    height, width = frames[0].shape[:2]
    prompts = click_prompts(clicks, height, width)
    # warm-up on a picture that is not a task (the backend's warm_up does one prompt too): first-call costs
    warm = np.random.default_rng(1).integers(0, 256, frames[0].shape, dtype=np.uint8)
    click(cached, warm, prompts[0])
    reencoding.auto_instances(warm)
    base_hits, base_misses = cached.cache_hits, cached.cache_misses

    # 1. interactive: each frame is a task; its share of the clicks follows its first click
    for t, image in enumerate(frames):
        seconds, _ = timed(lambda im=image: click(cached, im, prompts[0]), device)
        res.first.append(seconds)
        for prompt in prompts[t :: len(frames)]:
            ours_s, ours = timed(lambda im=image, p=prompt: click(cached, im, p), device)
            base_s, base = timed(lambda im=image, p=prompt: click(reencoding, im, p), device)
            res.repeated.append(ours_s)
            res.reencode.append(base_s)
            res.identical += bool(np.array_equal(ours, base))
            res.min_iou = min(res.min_iou, iou(np.asarray(ours), np.asarray(base)))
    res.hits, res.misses = cached.cache_hits - base_hits, cached.cache_misses - base_misses

    # 2. curate step: automatic instances, every frame a new image (cache off: each one is encoded)
    for image in frames:
        seconds, found = timed(lambda im=image: reencoding.auto_instances(im), device)
        res.auto.append(seconds)
        res.instances += len(found)  # type: ignore[arg-type]
    return res


def stats(values: list[float]) -> str:
    p50, p95 = np.percentile(values, [50, 95]) * 1e3
    return f"p50 {p50:8.1f} ms   p95 {p95:8.1f} ms   (n={len(values)})"


def report(res: Result, clicks: int) -> bool:
    """Print one device's numbers; True when the goal is met and masks agree."""
    ratio = float(np.median(res.reencode) / np.median(res.repeated))
    met = ratio >= GOAL
    same = res.min_iou >= 0.99
    print(f"\n[{res.device}] models loaded in {res.load_s:.1f} s (two segmenters: cache on, cache off)")
    print("1. interactive latency per request (predict_image at 1024; 1280x720 frame, mask at frame size)")
    print(f"  first click on a task (embedding computed)    {stats(res.first)}")
    print(f"  repeated clicks (embedding from cache)         {stats(res.repeated)}")
    print(f"  baseline: re-encode on every click (no cache)  {stats(res.reencode)}")
    print(f"  cache: {res.hits} hits, {res.misses} misses (expected {clicks} and {len(res.first)})")
    print(f"  masks cached vs re-encoded: {res.identical}/{len(res.repeated)} identical, min IoU {res.min_iou:.4f}")
    print(f"  speed-up re-encode p50 / repeated p50: x{ratio:.1f} (goal >= x{GOAL:.0f}: {'met' if met else 'MISSED'})")
    total = sum(res.auto)
    print("2. curate segmentation step (auto_instances at 1024, new frame each call)")
    print(
        f"  {len(res.auto)} frames in {total:.1f} s: {len(res.auto) / total:.3f} frames/s, "
        f"{res.instances / total:.3f} instances/s ({res.instances} instances); "
        f"per frame {', '.join(f'{s:.1f}' for s in res.auto)} s"
    )
    return met and same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=20, help="repeated clicks, spread over the tasks (default 20)")
    parser.add_argument("--frames", type=int, default=3, help="frames = tasks, also auto_instances' frames (default 3)")
    parser.add_argument("--cpu-only", action="store_true", help="skip the CUDA run even when CUDA is available")
    args = parser.parse_args()
    if args.clicks < args.frames or args.frames < 1:
        parser.error("need --frames >= 1 and --clicks >= --frames")

    began = time.perf_counter()
    frames = bench_frames(args.frames)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    gpu = f", CUDA: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", CUDA: not available"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}){gpu}; devices: {', '.join(devices)}"
    )
    h, w = frames[0].shape[:2]
    print(
        f"SAM2 {ARCH} at image_size {IMAGE_SIZE} (tiny profile: random weights); {len(frames)} Big Buck Bunny "
        f"frames {w}x{h}; {args.clicks} repeated clicks; load average {os.getloadavg()[0]:.2f}"
    )
    ok = True
    for device in devices:
        ok &= report(measure(device, frames, args.clicks), args.clicks)
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{time.perf_counter() - began:.0f} s in all; load average at the end {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
