"""castlab's LoRA trainer vs a bare diffusers + peft loop on the same model, data, batch and LoRA modules.

Prints the step-time ratio (goal: castlab's overhead <= 5 %), peak memory of each (separate processes) and the
latent-cache reuse (second run's preparation time / first's). Each architecture trains at a small resolution, so
the ratio is that of the real UNet with little activation work:

- ``--arch tiny`` (default, about a minute): the tiny SD1.5 of the tiny profile.
- ``--arch sd15``: the full-size SD1.5 architecture with random weights (UNet 859.5 M parameters, VAE, CLIP ViT-L),
  built once as a ~4 GB diffusers folder ``<workspace>/models/sd15-full-random``.
- ``--arch sdxl``: the full-size SDXL architecture (stabilityai/stable-diffusion-xl-base-1.0's configs: UNet 2.57 B
  parameters, VAE, CLIP ViT-L + OpenCLIP bigG with projection) with random weights, built once in fp32 as a
  ~14 GB folder ``<workspace>/models/sdxl-full-random`` (in its own process, one component at a time); each
  training process peaks at ~15 GB RSS, mostly the memory-mapped weights. The bare loop conditions the UNet as
  castlab does: both encoders' penultimate hidden states, the pooled embedding and the size/crop time ids. On 2
  CPU cores: ~1.5 min to build, ~3.5 s a step at 64 px, batch 2; ~4 min in all for 10 steps.

The workspace is ``$CASTLAB_WORKSPACE`` when set (the built model is then reused across runs), else a new temp
folder ``/tmp/castlab-bench-train-*/workspace`` (printed; delete it afterwards).

    python benchmarks/bench_train.py [--arch tiny|sd15|sdxl] [--steps 20] [--resolution 64] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from castlab.models.architectures import CLIP_G, CLIP_L, SD15_UNET, SD_VAE, SDXL_UNET

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_pair(folder: Path, base_model: str, steps: int, resolution: int, batch: int) -> Path:
    import tomli_w
    from PIL import Image

    image_dir = folder / "img"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(8):
        rgba = rng.integers(0, 255, (resolution, resolution, 4), dtype=np.uint8)
        rgba[..., 3] = 255
        Image.fromarray(rgba, "RGBA").save(image_dir / f"i{k}.png")
        (image_dir / f"i{k}.txt").write_text(f"zorvik character, sample {k}\n")
    dataset = {"resolution": resolution, "batch_size": batch, "enable_bucket": False,
               "subsets": [{"image_dir": str(image_dir), "num_repeats": 1, "caption_extension": ".txt"}]}
    (folder / "dataset_config.toml").write_text(tomli_w.dumps({"general": {}, "datasets": [dataset]}))
    training = {"pretrained_model_name_or_path": base_model, "network_module": "networks.lora", "network_dim": 8,
                "network_alpha": 8, "network_train_unet_only": True, "learning_rate": 1e-4, "max_grad_norm": 1.0,
                "dataset_config": str(folder / "dataset_config.toml"), "resolution": str(resolution),
                "output_dir": str(folder / "out"), "output_name": "bench", "max_train_steps": steps,
                "train_batch_size": batch, "seed": 1}
    (folder / "training.toml").write_text(tomli_w.dumps(training))
    return folder / "training.toml"


def profile_config(arch: str, base: str | None):
    from castlab.config import load_config

    if arch == "tiny":
        return load_config(profile="tiny")
    return load_config(profile="full", extra={"models": {"full": {"base_model": {"arch": arch, "path": base}}}})


def build_full_sd15(folder: Path) -> None:
    """The real SD1.5 architecture (UNet 859.5 M parameters, VAE, CLIP ViT-L text encoder), random weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from castlab.models.tokenizers import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET)
    vae = AutoencoderKL(**SD_VAE)
    text = CLIPTextModel(CLIPTextConfig(**CLIP_L, projection_dim=768))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                           beta_end=0.012, clip_sample=False),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)


# stabilityai/stable-diffusion-xl-base-1.0's component configs: the shared architecture tables plus the values a
# saved pipeline carries beside them
SDXL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_CLIP_L = {**CLIP_L, "projection_dim": 768, "hidden_act": "quick_gelu"}
SDXL_CLIP_G = {**CLIP_G, "hidden_act": "gelu"}
SDXL_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1,
                  "timestep_spacing": "leading", "interpolation_type": "linear", "use_karras_sigmas": False}


def build_full_sdxl(folder: Path) -> None:
    """The real SDXL architecture with random weights in fp32, one component at a time (each saved and freed
    before the next: the UNet alone is ~10.3 GB); ``model_index.json`` is written last, so it marks a complete
    folder."""
    import gc

    import diffusers
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from castlab.models.tokenizers import clip_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    builders = {
        "unet": lambda: UNet2DConditionModel(**SDXL_UNET),
        "vae": lambda: AutoencoderKL(**SDXL_VAE),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**SDXL_CLIP_L)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_CLIP_G)),
    }
    index: dict = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": diffusers.__version__,
                   "force_zeros_for_empty_prompt": True, "feature_extractor": [None, None],
                   "image_encoder": [None, None]}
    for name, build in builders.items():
        module = build()
        module.save_pretrained(str(folder / name), safe_serialization=True)
        index[name] = [type(module).__module__.split(".")[0], type(module).__name__]
        del module
        gc.collect()
    for name in ("tokenizer", "tokenizer_2"):
        tokenizer = clip_tokenizer()
        tokenizer.save_pretrained(str(folder / name))
        index[name] = ["transformers", type(tokenizer).__name__]
    EulerDiscreteScheduler(**SDXL_SCHEDULER).save_pretrained(str(folder / "scheduler"))
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def step_stats(seconds: list[float]) -> dict:
    """Median and fastest step, the first excluded (it pays one-off allocations in both loops); the fastest is the
    one to compare when other processes share the CPUs (one busy core can slow a 2-thread torch step manyfold)."""
    rest = seconds[1:]
    return {"step_s": float(np.median(rest)), "step_min_s": float(min(rest)), "steps_s": [round(t, 3) for t in seconds]}


def run_castlab(toml: Path, arch: str, base: str | None) -> dict:
    from trainers.loop import run_training

    result = run_training(toml, profile_config(arch, base), progress=False, force=True)
    return {**step_stats(result.report["step_seconds"]),
            "prepare_s": result.report["prepare_seconds"], "cache": result.report["latent_cache"]}


def run_bare(toml: Path, arch: str, base: str | None, steps: int) -> dict:
    """The same work written directly with diffusers + peft: latents and text conditioning (SDXL: also the pooled
    embedding and the size/crop time ids) computed once, AdamW, MSE."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from PIL import Image

    from castlab.models.diffusion import encode_prompts, encode_prompts_sdxl, is_sdxl, load_base_pipeline, sdxl_time_ids
    from trainers.config import read_plan
    from trainers.network import unet_target_modules

    plan = read_plan(toml)
    cfg = profile_config(arch, base)
    pipe, _ = load_base_pipeline(cfg, source=str(plan.args["pretrained_model_name_or_path"]))
    sdxl = is_sdxl(pipe)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, *([pipe.text_encoder_2] if sdxl else [])):
        module.requires_grad_(False)
    images = plan.datasets[0].subsets[0].images
    batch = int(plan.args["train_batch_size"])
    scaling = float(pipe.vae.config.scaling_factor)
    with torch.no_grad():
        rgb = [np.asarray(Image.open(p).convert("RGB"), np.float32) for p in images]
        pixels = torch.stack([torch.from_numpy(a / 127.5 - 1).permute(2, 0, 1) for a in rgb])
        dist = pipe.vae.encode(pixels).latent_dist
        captions = [p.with_suffix(".txt").read_text().strip() for p in images]
        if sdxl:  # the images are used whole: original size = target size, no crop
            hidden, pooled = encode_prompts_sdxl(pipe, captions)
            time_ids = torch.stack([sdxl_time_ids((a.shape[1], a.shape[0]), (0, 0), (a.shape[1], a.shape[0]))
                                    for a in rgb])
        else:
            hidden = encode_prompts(pipe, captions, 1)
    torch.manual_seed(1)
    pipe.unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=unet_target_modules(pipe.unet)))
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    gen = torch.Generator().manual_seed(1)
    pipe.unet.train()
    times = []
    for step in range(steps):
        start = time.perf_counter()
        index = torch.tensor([(step * batch + k) % len(images) for k in range(batch)])
        latents = (dist.mean[index] + dist.std[index] * torch.randn(dist.mean[index].shape, generator=gen)) * scaling
        noise = torch.randn(latents.shape, generator=gen)
        timesteps = torch.randint(0, 1000, (batch,), generator=gen)
        extra = ({"added_cond_kwargs": {"text_embeds": pooled[index], "time_ids": time_ids[index]}} if sdxl else {})
        pred = pipe.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, hidden[index], **extra).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return step_stats(times)


def child(kind: str, toml: str, arch: str, base: str | None, steps: int) -> None:
    if kind == "build":  # its own process: the building's memory is gone before training starts
        (build_full_sdxl if arch == "sdxl" else build_full_sd15)(Path(toml))
        return
    if kind.startswith("castlab"):
        result = run_castlab(Path(toml), arch, base)
    else:
        result = run_bare(Path(toml), arch, base, steps)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print("RESULT " + json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", choices=["tiny", "sd15", "sdxl"], default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is left out of the step times)")
    if args.child:
        child(args.child[0], args.child[1], args.arch, args.base, args.steps)
        return 0
    from castlab.config import load_config
    from castlab.models.diffusion import base_model_source, load_base_pipeline
    from castlab.runtime import setup_runtime
    from castlab.workspace import workspace_root

    setup_runtime()
    work = Path(tempfile.mkdtemp(prefix="castlab-bench-train-"))
    os.environ.setdefault("CASTLAB_WORKSPACE", str(work / "workspace"))
    if args.arch == "tiny":
        cfg = load_config(profile="tiny")
        load_base_pipeline(cfg)
        base = base_model_source(cfg)
    else:
        folder = workspace_root() / "models" / f"{args.arch}-full-random"
        if not (folder / "model_index.json").is_file():
            print(f"building the full-size {args.arch.upper()} architecture with random weights in {folder} ...",
                  flush=True)
            shutil.rmtree(folder, ignore_errors=True)  # an interrupted build
            built = subprocess.run([sys.executable, __file__, "--arch", args.arch, "--child", "build", str(folder)],
                                   env=os.environ.copy(), check=False)
            if built.returncode:
                return 1
        base = str(folder)
    print(f"workspace {workspace_root()}, data {work / 'data'}", flush=True)
    toml = make_pair(work / "data", base, args.steps, args.resolution, args.batch)
    results = {}
    shutil.rmtree(workspace_root() / "cache" / "latents", ignore_errors=True)  # the first run encodes everything
    for kind in ("bare", "castlab", "castlab-again"):  # separate processes: own peak memory, a cold memory cache
        cmd = [sys.executable, __file__, "--arch", args.arch, "--steps", str(args.steps), "--child", kind, str(toml),
               "--base", base]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=False)
        line = next((s for s in out.stdout.splitlines() if s.startswith("RESULT ")), None)
        if line is None:
            print(out.stdout[-2000:], out.stderr[-4000:])
            return 1
        results[kind] = json.loads(line[len("RESULT "):])
    bare, ours, again = results["bare"], results["castlab"], results["castlab-again"]
    print(f"arch {args.arch}, {args.resolution}px, batch {args.batch}, {args.steps} steps, LoRA rank 8 on kohya's "
          "UNet module set")
    print(f"  step time: bare diffusers+peft {bare['step_s'] * 1000:.1f} ms, castlab {ours['step_s'] * 1000:.1f} ms"
          f" -> castlab / bare = {ours['step_s'] / bare['step_s']:.3f} (goal <= 1.05; median step, first excluded)")
    print(f"  fastest step: bare {bare['step_min_s'] * 1000:.1f} ms, castlab {ours['step_min_s'] * 1000:.1f} ms"
          f" -> castlab / bare = {ours['step_min_s'] / bare['step_min_s']:.3f} (castlab again:"
          f" {again['step_s'] * 1000:.1f} ms median, {again['step_min_s'] * 1000:.1f} ms fastest)")
    for kind, result in results.items():
        print(f"  {kind} step times (s): {' '.join(f'{t:.2f}' for t in result['steps_s'])}")
    print(f"  peak RSS: bare {bare['peak_rss_gb']:.2f} GB, castlab {ours['peak_rss_gb']:.2f} GB"
          f" -> ratio {ours['peak_rss_gb'] / bare['peak_rss_gb']:.2f}")
    print(f"  latent preparation: first run {ours['prepare_s']:.2f} s, second run {again['prepare_s']:.2f}"
          f" s -> second / first = {again['prepare_s'] / max(ours['prepare_s'], 1e-9):.3f}"
          f" (second run's cache {again['cache']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
