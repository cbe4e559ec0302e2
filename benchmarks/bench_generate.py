"""castlab generate vs a plain diffusers loop on the same model, LoRA, prompts, seeds, steps and batch size.

Both sides load the tiny SD1.5 (or, with ``--arch sdxl``, the tiny SDXL) once, load the same random kohya LoRA at
weight 0.8 and make ``--images`` images in batches of ``--batch`` with the same sampler: the plain loop calls the
diffusers pipeline with the prompt strings; castlab's path is ``castlab.generate.stage.Generator`` + ``run_jobs``
(its prompt encoding, scheduler per sampler, per-image seeded generators, the PNG written with its parameters, no
consistency check). Prints images/s of each (best of ``--repeats``) and castlab's overhead. Goal: overhead <= 5 %.
On CPU the tiny models make the pipeline call cheap, so the ratio is an upper bound of castlab's overhead on a
real model, whose UNet steps dominate; ``--device cuda`` measures on a GPU.

    .venv/bin/python benchmarks/bench_generate.py [--arch sd15|sdxl] [--images 16] [--batch 4] [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

GOAL = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("CASTLAB_WORKSPACE", tempfile.mkdtemp(prefix="castlab-bench-generate-"))
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from castlab.config import load_config
    from castlab.generate.loras import LoraUse, apply_loras
    from castlab.generate.prompts import parse_line
    from castlab.generate.stage import Generator, plan_jobs, run_jobs
    from castlab.models.diffusion import base_model_source, load_base_pipeline, training_resolution

    cfg = load_config(profile="tiny", extra={"generation": {"batch_size": args.batch, "preset": "bench", "presets": {
        "bench": {"steps": args.steps, "sampler": "euler", "guidance_scale": 5.0, "size_scale": 1.0}}}})
    source = base_model_source(cfg, "sdxl-tiny" if args.arch == "sdxl" else None)
    pipe, version = load_base_pipeline(cfg, args.device, source)
    lora = make_lora(pipe, Path(os.environ["CASTLAB_WORKSPACE"]) / "bench_lora.safetensors")
    uses = [LoraUse("bench", 0.8, {"file": str(lora), "trigger": "zk", "class_word": "thing", "file_hash": "x"})]
    apply_loras(pipe, uses)
    lines = [parse_line(f"zk thing, picture {k}") for k in range(args.images)]
    jobs = plan_jobs(lines, uses, cfg, "bench", 1, 1, training_resolution(cfg))
    generator = Generator(pipe, version, uses, cfg, args.device)
    out = Path(tempfile.mkdtemp(prefix="castlab-bench-out-"))
    (out / "images").mkdir()

    from castlab.generate.samplers import scheduler_for

    plain_scheduler = scheduler_for(pipe, "euler")

    def plain() -> None:
        pipe.scheduler = plain_scheduler
        for start in range(0, len(jobs), args.batch):
            batch = jobs[start:start + args.batch]
            pipe(prompt=[j.prompt for j in batch], negative_prompt=[j.negative_prompt for j in batch],
                 width=batch[0].width, height=batch[0].height, num_inference_steps=args.steps, guidance_scale=5.0,
                 generator=[torch.Generator(device="cpu").manual_seed(j.seed) for j in batch])

    def castlab() -> None:
        run_jobs(generator, jobs, out, None, 0)

    timings = {"plain diffusers loop": best(plain, args.repeats), "castlab generate": best(castlab, args.repeats)}
    rates = {k: args.images / v for k, v in timings.items()}
    overhead = timings["castlab generate"] / timings["plain diffusers loop"] - 1.0
    print(f"{args.arch} tiny on {args.device}: {args.images} images, batch {args.batch}, {args.steps} steps")
    for name, rate in rates.items():
        print(f"  {name:<22} {rate:7.2f} images/s   ({timings[name]:.2f} s)")
    print(f"  castlab overhead: {overhead:+.1%} (goal <= {GOAL:.0%}): {'ok' if overhead <= GOAL else 'MISSED'}")
    return 0 if overhead <= GOAL else 1


def best(work, repeats: int) -> float:
    work()  # warm-up: schedulers, kernels, first allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def make_lora(pipe, path: Path) -> Path:
    """A random kohya LoRA of the pipeline's UNet (rank 4), as training would write it."""
    import copy

    from castlab.models.kohya import save_kohya_lora
    from trainers.network import NetworkSettings, add_lora, lora_state_dict

    unet = copy.deepcopy(pipe.unet)
    settings = NetworkSettings.from_toml({"network_module": "networks.lora", "network_dim": 4, "network_alpha": 4})
    add_lora(unet, [], settings, seed=0)
    state = {k: torch.randn_like(v) * 0.1 if "lora_B" in k else v for k, v in lora_state_dict(unet).items()}
    return save_kohya_lora(state, path, settings.alpha, {**settings.metadata()}, unet_config=unet.config)


if __name__ == "__main__":
    raise SystemExit(main())
