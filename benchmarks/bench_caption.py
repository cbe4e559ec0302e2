"""Captioner: captions/s by batch size against one item per generate() call, and the first-call stall check.

Inputs: ``--n`` square instance-sized crops (160-400 px) of Big Buck Bunny frames, spread over the clip (the
sample media cache, offline once fetched). Prompt, schema (``CaptionFields``) and ``max_new_tokens`` are the
``captions`` defaults, so every caption is a full schema-constrained generation.

1. Model: build time of the tiny profile's Qwen2-VL (cold cache, in a temporary folder) and load time from
   the cache in a fresh process (``load_captioner``, which imports the model's transformers modules).
2. First call vs warm call, one crop: the first ``generate`` of a freshly loaded captioner (the schema index
   is compiled first, timed apart) against the median of the warm calls that follow. TorchDynamo stays
   enabled here, so a ``torch.compile`` on the decoding path (outlines-core's mask kernel compiles for
   20-80 s) would show as a stall and as compiled frames. Goal: 0 compiled frames.
3. Throughput: the same ``--n`` crops at ``batch_size`` 1 (baseline: one item per ``model.generate`` call),
   4 and 8; captions/s (best of ``--repeats``), speed-up over the baseline, texts identical to the baseline
   and schema-valid. Goal: batch 4 >= x1.5 the baseline's captions/s, texts identical.

The tiny profile runs on CPU (random weights, so the captions are noise but their length is real:
~150-250 tokens each). ``--full`` also runs the configured ``full`` model (default Qwen2.5-VL-7B-Instruct,
from the local Hugging Face cache or ``models.full.captioner.model`` set with ``--config``) on CUDA; it is
skipped with a message when CUDA or the model is not available. Exit status 1 when a goal is missed.

    .venv/bin/python benchmarks/bench_caption.py                    # ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_caption.py --full --config my_title.yaml
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sample_frames import CACHE, frames

from castlab.captions.schema import CaptionFields, SchemaError, parse_fields
from castlab.config import PROJECT_ROOT, Config, load_config
from castlab.errors import CastlabError, ConfigError
from castlab.models import captioner as captioner_module
from castlab.models.captioner import Captioner, load_captioner

BATCHES = (1, 4, 8)
GOAL = 1.5


def bench_crops(n: int, seed: int = 0) -> list[Image.Image]:
    """`n` square crops (160-400 px) from Big Buck Bunny frames spread over the clip."""
    rng = np.random.default_rng(seed)
    crops = []
    for frame in frames(n, CACHE / "caption_frames", "bbb"):
        side = int(rng.integers(160, 401))
        y, x = int(rng.integers(0, frame.shape[0] - side)), int(rng.integers(0, frame.shape[1] - side))
        crops.append(Image.fromarray(frame[y : y + side, x : x + side]))
    return crops


@dataclass
class Result:
    """Seconds (and outputs) of one captioner on one device."""

    label: str
    build_s: float | None = None
    load_s: float = 0.0
    index_s: float = 0.0
    first_s: float = 0.0
    warm: list[float] = field(default_factory=list)
    compiled_frames: int = 0
    batch_s: dict[int, float] = field(default_factory=dict)
    texts: dict[int, list[str]] = field(default_factory=dict)


def timed(fn, device: str) -> tuple[float, object]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def measure(res: Result, cap: Captioner, crops: list[Image.Image], cfg: Config, repeats: int) -> Result:
    from torch._dynamo.utils import counters

    prompt, max_new = str(cfg.captions.prompt), int(cfg.captions.max_new_tokens)
    frames_before = counters["frames"]["total"]
    res.index_s, _ = timed(lambda: cap.schema_index(CaptionFields), cap.device)
    one = [crops[:1]]
    res.first_s, _ = timed(lambda: cap.generate(one, prompt, CaptionFields, max_new, batch_size=1), cap.device)
    for _ in range(3):
        res.warm.append(timed(lambda: cap.generate(one, prompt, CaptionFields, max_new, batch_size=1), cap.device)[0])
    items = [[im] for im in crops]
    for _ in range(repeats):  # interleaved, so a busy machine slows every batch size alike
        for bs in BATCHES:
            seconds, texts = timed(lambda b=bs: cap.generate(items, prompt, CaptionFields, max_new, b), cap.device)
            res.batch_s[bs] = min(seconds, res.batch_s.get(bs, float("inf")))
            res.texts[bs] = texts  # type: ignore[assignment]
    res.compiled_frames = counters["frames"]["total"] - frames_before
    return res


def parses(texts: list[str]) -> int:
    ok = 0
    for text in texts:
        try:
            parse_fields(text)
            ok += 1
        except SchemaError:
            pass
    return ok


def report(res: Result, n: int) -> bool:
    """Print one captioner's numbers; True when the goals are met."""
    base = res.batch_s[1]
    warm = statistics.median(res.warm)
    print(f"\n[{res.label}]")
    if res.build_s is not None:
        print(f"1. model: built in {res.build_s:.1f} s (cold cache), loaded from the cache in {res.load_s:.1f} s "
              "(fresh process)")  # fmt: skip
    else:
        print(f"1. model: loaded in {res.load_s:.1f} s")
    print(f"2. one crop: schema index compiled in {res.index_s:.2f} s; first generate {res.first_s:.2f} s, warm "
          f"{warm:.2f} s (median of {len(res.warm)}): first/warm x{res.first_s / warm:.1f}; "
          f"TorchDynamo frames compiled: {res.compiled_frames} (goal 0)")  # fmt: skip
    print(f"3. {n} crops, CaptionFields, greedy, constrained:")
    ok = res.compiled_frames == 0
    for bs in BATCHES:
        same = sum(a == b for a, b in zip(res.texts[bs], res.texts[1], strict=True))
        chars = statistics.mean(len(t) for t in res.texts[bs])
        ratio = base / res.batch_s[bs]
        print(f"  batch_size {bs}: {res.batch_s[bs]:6.2f} s, {n / res.batch_s[bs]:6.2f} captions/s, "
              f"{res.batch_s[bs] / n:6.3f} s/caption, x{ratio:.2f} vs batch 1; identical to batch 1: {same}/{n}; "
              f"schema-valid {parses(res.texts[bs])}/{n}; mean {chars:.0f} chars")  # fmt: skip
        ok &= same == n
    met = base / res.batch_s[4] >= GOAL
    print(f"  speed-up batch 4 / batch 1: x{base / res.batch_s[4]:.2f} (goal >= x{GOAL}: {'met' if met else 'MISSED'})")
    return ok and met


def fresh_load_s() -> float:
    """Seconds of ``load_captioner`` (tiny, cached) in a new process, as a flow or the ML backend pays it."""
    script = (
        "import time; from castlab.config import load_config; from castlab.models.captioner import load_captioner\n"
        "start = time.perf_counter(); load_captioner(load_config(profile='tiny')); print(time.perf_counter() - start)"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def run_tiny(crops: list[Image.Image], repeats: int) -> Result:
    cfg = load_config(profile="tiny")
    res = Result("tiny profile, CPU: Qwen2VLForConditionalGeneration, 2 layers, random weights")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        captioner_module._build_tiny(Path(tmp) / "model", int(cfg.seed))
        res.build_s = time.perf_counter() - start
    captioner_module.tiny_model_dir(int(cfg.seed))  # the cached copy exists before load is timed
    res.load_s = fresh_load_s()
    return measure(res, load_captioner(cfg), crops, cfg, repeats)


def run_full(crops: list[Image.Image], repeats: int, config: list[str]) -> Result | None:
    if not torch.cuda.is_available():
        print("\n[full profile] skipped: CUDA is not available (a 7B VLM on CPU is not worth timing)")
        return None
    cfg = load_config(config, profile="full")
    try:
        load_s, cap = timed(lambda: load_captioner(cfg), "cuda")
    except ConfigError as exc:
        print(f"\n[full profile] skipped: {exc}")
        return None
    res = Result(f"full profile, {cap.device}: {cap.model_version}, {cap.model.dtype}", load_s=load_s)
    return measure(res, cap, crops, cfg, repeats)  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="crops captioned per batch size (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per batch size, best kept (default 2)")
    parser.add_argument("--full", action="store_true", help="also run the full profile's model on CUDA")
    parser.add_argument("--config", action="append", default=[], help="per-title YAML for --full (repeatable)")
    args = parser.parse_args()
    if args.n < max(BATCHES) or args.repeats < 1:
        parser.error(f"need --n >= {max(BATCHES)} and --repeats >= 1")

    began = time.perf_counter()
    crops = bench_crops(args.n)
    gpu = f", CUDA: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", CUDA: not available"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}){gpu}; TorchDynamo "
          f"{'DISABLED by TORCHDYNAMO_DISABLE' if os.environ.get('TORCHDYNAMO_DISABLE') else 'enabled'}")  # fmt: skip
    print(f"{args.n} Big Buck Bunny crops ({min(c.width for c in crops)}-{max(c.width for c in crops)} px); "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    ok = report(run_tiny(crops, args.repeats), args.n)
    if args.full:
        try:
            full = run_full(crops, args.repeats, args.config)
        except CastlabError as exc:
            print(f"\n[full profile] failed: {exc}")
            full, ok = None, False
        if full is not None:
            ok &= report(full, args.n)
    print(f"\n{time.perf_counter() - began:.0f} s in all; load average at the end {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
