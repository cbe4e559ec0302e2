"""LoRA training for Stable Diffusion 1.x with diffusers + peft, configured by a kohya-style training TOML.

Reads the TOML (sections flattened as kohya does) and its ``dataset_config``; trains a PEFT LoRA on the
UNet attention projections with the standard noise-prediction MSE loss; writes kohya-format checkpoints
``<output_dir>/<output_name>-step<NNNNNNNN>.safetensors`` every ``save_every_n_steps`` and at the end, plus
``<output_name>-training.json`` (losses, timing, model versions).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from castlab.config import Config
from castlab.dataset.kohya import flatten_toml, tomllib
from castlab.errors import InputError
from castlab.models.kohya import save_kohya_lora
from castlab.workspace import write_json_atomic

REQUIRED = (
    "pretrained_model_name_or_path", "dataset_config", "output_dir", "output_name", "network_dim",
    "network_alpha", "learning_rate", "max_train_steps", "train_batch_size", "resolution", "seed",
)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # UNet attention projections (kohya's lora_unet_*attn*)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class Sample:
    image: Path
    caption: str


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, "TOML file does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"is not valid TOML ({exc})") from exc


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def read_training_config(training_toml: Path) -> dict[str, Any]:
    """Flattened training settings with required keys checked and paths resolved against the TOML's folder."""
    training_toml = Path(training_toml).resolve()
    flat = flatten_toml(_read_toml(training_toml))
    missing = [k for k in REQUIRED if flat.get(k) in (None, "")]
    if missing:
        raise InputError(training_toml, f"training TOML lacks {', '.join(missing)}")
    unfilled = [k for k, v in flat.items() if isinstance(v, str) and v.startswith("${")]
    if unfilled:
        raise InputError(training_toml, f"template placeholders left unfilled: {', '.join(unfilled)}")
    flat["dataset_config"] = _resolve(training_toml.parent, str(flat["dataset_config"]))
    flat["output_dir"] = _resolve(training_toml.parent, str(flat["output_dir"]))
    flat["resolution"] = _parse_resolution(flat["resolution"], training_toml)
    if flat.get("color_aug"):
        raise InputError(training_toml, "color_aug = true is not supported (latents are encoded once)")
    return flat


def _parse_resolution(value: Any, path: Path) -> tuple[int, int]:
    try:
        parts = [int(p) for p in str(value).replace("x", ",").split(",") if p.strip()]
    except ValueError as exc:
        raise InputError(path, f"resolution {value!r} is not 'N' or 'W,H'") from exc
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 8 or any(p % 8 for p in parts):
        raise InputError(path, f"resolution {value!r} must be one or two multiples of 8")
    return parts[0], parts[1]


def read_dataset_samples(dataset_config: Path, caption_extension: str = ".txt") -> list[Sample]:
    """(image, caption) pairs of every kohya subset, each repeated ``num_repeats`` times."""
    data = _read_toml(dataset_config)
    general = data.get("general", {})
    samples: list[Sample] = []
    for dataset in data.get("datasets") or []:
        for subset in dataset.get("subsets") or []:
            if "image_dir" not in subset:
                raise InputError(dataset_config, "a [[datasets.subsets]] entry lacks image_dir")
            image_dir = _resolve(dataset_config.parent, str(subset["image_dir"]))
            if not image_dir.is_dir():
                raise InputError(image_dir, "subset image_dir does not exist")
            ext = subset.get("caption_extension", general.get("caption_extension", caption_extension))
            class_tokens = str(subset.get("class_tokens", ""))
            repeats = int(subset.get("num_repeats", 1))
            for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                caption_file = image.with_suffix(ext)
                caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
                samples.extend([Sample(image, caption or class_tokens)] * repeats)
    if not samples:
        raise InputError(dataset_config, "the dataset config lists no training images")
    return samples


def dataset_class_tokens(dataset_config: Path) -> str:
    """The subsets' ``class_tokens`` ("<trigger> <class word>"), joined by " | " when they differ."""
    data = _read_toml(dataset_config)
    tokens = {str(s["class_tokens"]) for d in data.get("datasets") or [] for s in d.get("subsets") or []
              if s.get("class_tokens")}
    return " | ".join(sorted(tokens))


def _load_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"training image is not readable ({exc})") from exc
    if image.size != size:  # no aspect-ratio buckets yet: centre crop to the training aspect, then resize
        image = ImageOps.fit(image, size, Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def _existing_checkpoints(output_dir: Path, output_name: str) -> list[Path]:
    return sorted(output_dir.glob(f"{output_name}-step*.safetensors")) if output_dir.is_dir() else []


@dataclass
class TrainingResult:
    pipe: Any  # the base pipeline with the trained LoRA adapter active on its UNet
    base_version: str
    checkpoints: list[Path]
    losses: list[float]
    steps_per_second: float | None


def train_lora(
    training_toml: Path, cfg: Config, device: str = "cpu", progress: bool = True, force: bool = False
) -> list[Path]:
    """Train a UNet LoRA as `training_toml` says; returns the checkpoint paths (last = final).

    Existing checkpoints of the same ``output_name`` are an error unless `force`.
    """
    return run_training(training_toml, cfg, device, progress, force).checkpoints


def run_training(
    training_toml: Path, cfg: Config, device: str = "cpu", progress: bool = True, force: bool = False
) -> TrainingResult:
    """:func:`train_lora`, returning the trained pipeline and losses as well."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from castlab.models.diffusion import encode_prompts, load_base_pipeline

    training_toml = Path(training_toml).resolve()
    tc = read_training_config(training_toml)
    output_dir: Path = tc["output_dir"]
    name = str(tc["output_name"])
    old = _existing_checkpoints(output_dir, name)
    if old and not force:
        raise InputError(output_dir, f"already holds {len(old)} checkpoint(s) named {name} (pass --force)")
    samples = read_dataset_samples(tc["dataset_config"], str(tc.get("caption_extension", ".txt")))

    rank, alpha = int(tc["network_dim"]), float(tc["network_alpha"])
    max_steps, batch_size = int(tc["max_train_steps"]), int(tc["train_batch_size"])
    save_every = int(tc.get("save_every_n_steps") or 0)
    clip_skip = int(tc.get("clip_skip") or 1)
    seed = int(tc["seed"])
    if rank < 1 or alpha <= 0 or max_steps < 1 or batch_size < 1:
        raise InputError(
            training_toml, "network_dim, network_alpha, max_train_steps and train_batch_size must be > 0"
        )

    pipe, base_version = load_base_pipeline(cfg, device, source=str(tc["pretrained_model_name_or_path"]))
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    vae.eval()
    text_encoder.eval()
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for path in old:  # --force: checkpoints of an earlier run would mix with this one's
        path.unlink()
    use_cuda = str(device).startswith("cuda")
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(str(tc.get("mixed_precision", "no")))
    amp_dtype = amp_dtype if use_cuda else None  # CPU trains in fp32

    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                    target_modules=LORA_TARGETS))
        params = [p for p in unet.parameters() if p.requires_grad]
        if tc.get("gradient_checkpointing"):
            unet.enable_gradient_checkpointing()
        unet.train()
        optimizer = torch.optim.AdamW(params, lr=float(tc["learning_rate"]))
        lr_scheduler = get_scheduler(
            str(tc.get("lr_scheduler", "constant")), optimizer,
            num_warmup_steps=int(tc.get("lr_warmup_steps") or 0), num_training_steps=max_steps,
        )
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        gen = torch.Generator(device=device).manual_seed(seed)

        # frozen encoders: encode each image (latent mean/std) and caption once
        size = tc["resolution"]
        with torch.no_grad():
            unique_images = sorted({s.image for s in samples})
            flips = (False, True) if tc.get("flip_aug") else (False,)
            latent_stats = {}
            for path in unique_images:
                pixels = _load_image(path, size)
                for flip in flips:
                    batch_px = (pixels.flip(-1) if flip else pixels)[None].to(device)
                    dist = vae.encode(batch_px).latent_dist
                    latent_stats[path, flip] = (dist.mean[0], dist.std[0])
            captions = sorted({s.caption for s in samples})
            embeds = dict(zip(captions, encode_prompts(pipe, captions, clip_skip), strict=True))
        scaling = float(vae.config.scaling_factor)
        noise_offset = float(tc.get("noise_offset") or 0.0)
        max_grad_norm = float(tc.get("max_grad_norm") or 0.0)
        prediction = noise_scheduler.config.prediction_type

        order_rng = random.Random(seed)
        order: list[int] = []
        losses: list[float] = []
        checkpoints: list[Path] = []
        meta = _metadata(tc, cfg, base_version, len(unique_images), len(samples),
                         dataset_class_tokens(tc["dataset_config"]))
        bar = tqdm(range(1, max_steps + 1), desc="train lora", unit="step", disable=not progress)
        loop_start = time.perf_counter()
        for step in bar:
            if len(order) < batch_size:
                epoch = list(range(len(samples)))
                order_rng.shuffle(epoch)
                order.extend(epoch)
            batch = [samples[order.pop(0)] for _ in range(batch_size)]
            keys = [(s.image, len(flips) > 1 and order_rng.random() < 0.5) for s in batch]
            mean = torch.stack([latent_stats[k][0] for k in keys])
            std = torch.stack([latent_stats[k][1] for k in keys])
            latents = (mean + std * torch.randn(mean.shape, generator=gen, device=device)) * scaling
            noise = torch.randn(latents.shape, generator=gen, device=device)
            if noise_offset:
                noise = noise + noise_offset * torch.randn(
                    (latents.shape[0], latents.shape[1], 1, 1), generator=gen, device=device
                )
            n_timesteps = noise_scheduler.config.num_train_timesteps
            timesteps = torch.randint(0, n_timesteps, (latents.shape[0],), generator=gen, device=device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            if prediction == "epsilon":
                target = noise
            else:
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            hidden = torch.stack([embeds[s.caption] for s in batch])
            with torch.autocast("cuda", dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = unet(noisy, timesteps, hidden).sample
            loss = F.mse_loss(pred.float(), target.float())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"LoRA training loss became {loss.item()} at step {step}")
            scaler.scale(loss).backward()
            if max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.item()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if step == max_steps or (save_every and step % save_every == 0):
                path = output_dir / f"{name}-step{step:08d}.safetensors"
                state = get_peft_model_state_dict(unet)
                version = _lora_version(name, step, base_version)
                step_meta = {**meta, "ss_steps": step, "castlab_model_version": version}
                save_kohya_lora(state, path, alpha, step_meta, str(tc.get("save_precision", "float")))
                checkpoints.append(path)
        loop_seconds = time.perf_counter() - loop_start

    unet.eval()
    steps_per_second = max_steps / loop_seconds if loop_seconds > 0 else None
    write_json_atomic(output_dir / f"{name}-training.json", {
        "training_toml": str(training_toml),
        "profile": cfg.profile,
        "base_model_version": base_version,
        "steps": max_steps,
        "batch_size": batch_size,
        "losses": losses,
        "steps_per_second": steps_per_second,
        "seconds_total": time.perf_counter() - started,
        "checkpoints": [str(p) for p in checkpoints],
        "device": str(device),
    })
    return TrainingResult(pipe, base_version, checkpoints, losses, steps_per_second)


def _lora_version(name: str, step: int, base_version: str) -> str:
    tiny = "tiny-" if base_version.startswith("tiny-") else ""
    return f"{tiny}lora-{name}-step{step:08d}@{base_version}"


def _metadata(
    tc: dict[str, Any], cfg: Config, base_version: str, n_images: int, n_samples: int, class_tokens: str
) -> dict[str, Any]:
    """kohya ``ss_*`` fields readers look for, plus castlab's provenance stamps."""
    width, height = tc["resolution"]
    return {
        "ss_network_module": tc.get("network_module", "networks.lora"),
        "ss_network_dim": int(tc["network_dim"]),
        "ss_network_alpha": float(tc["network_alpha"]),
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": Path(str(tc["pretrained_model_name_or_path"])).name,
        "ss_output_name": tc["output_name"],
        "ss_max_train_steps": int(tc["max_train_steps"]),
        "ss_learning_rate": float(tc["learning_rate"]),
        "ss_lr_scheduler": tc.get("lr_scheduler", "constant"),
        "ss_batch_size_per_device": int(tc["train_batch_size"]),
        "ss_clip_skip": int(tc.get("clip_skip") or 1),
        "ss_seed": int(tc["seed"]),
        "ss_resolution": f"({width}, {height})",
        "ss_num_train_images": n_samples,
        "ss_mixed_precision": tc.get("mixed_precision", "no"),
        "ss_flip_aug": bool(tc.get("flip_aug", False)),
        "ss_color_aug": bool(tc.get("color_aug", False)),
        "ss_epoch": math.ceil(int(tc["max_train_steps"]) * int(tc["train_batch_size"]) / max(1, n_samples)),
        "castlab_profile": cfg.profile,
        "castlab_base_model": str(tc["pretrained_model_name_or_path"]),
        "castlab_base_model_version": base_version,
        "castlab_unique_images": n_images,
        "castlab_lora_targets": ",".join(LORA_TARGETS),
        "castlab_class_tokens": class_tokens,
    }

