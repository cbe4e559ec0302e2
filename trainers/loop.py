"""The LoRA training loop: SD1.x and SDXL from the kohya pair, buckets, masked loss, exact resume.

Order of work: read the plan (:mod:`trainers.config`), load the base model, place every image in its bucket
(:mod:`trainers.data`), encode latents once (cache reused across runs, :mod:`trainers.latents`), attach kohya's
LoRA module set (:mod:`trainers.network`), then train: each optimizer step draws its noise and timesteps from a
generator seeded by (seed, step) and its captions from (seed, epoch, batch), so an interrupted run resumed from a
saved state (:mod:`trainers.state`) ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from castlab.config import Config
from castlab.errors import InputError
from castlab.workspace import workspace_root, write_json_atomic
from trainers import loss as losses
from trainers.captions import process_caption
from trainers.config import TrainingPlan, read_plan
from trainers.data import Item, build_items, dataset_summary, epoch_batches, static_captions, validation_items
from trainers.latents import ImageJob, LatentCache, weights_fingerprint
from trainers.report import write_training_report
from trainers.sampling import read_prompts, render_samples
from trainers.state import Position, load_state, save_state


@dataclass
class TrainingResult:
    checkpoints: list[Path]
    losses: list[float]
    pipe: Any
    base_version: str
    states: list[Path] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False


def _lora_version(name: str, step: int, base_version: str) -> str:
    tiny = "tiny-" if base_version.startswith("tiny-") else ""
    return f"{tiny}lora-{name}-step{step:08d}@{base_version}"


def _castlab_dataset(args: dict[str, Any]) -> str:
    """The castlab dataset folder the training pair belongs to (its ``metadata.json`` beside the dataset config),
    for the evaluation's references; "" for other pairs."""
    folder = Path(str(args.get("dataset_config") or ".")).resolve().parent
    return str(folder) if (folder / "metadata.json").is_file() else ""


def _fingerprint(plan: TrainingPlan, items: list[Item], base_version: str) -> str:
    """What a saved state must agree with to be resumed: settings (output paths aside), images, base model."""
    args = {k: str(v) for k, v in sorted(plan.args.items()) if k not in ("output_dir", "save_state", "resume")}
    images = [(i.key, i.caption, i.repeats, i.placement.bucket) for i in items]
    return hashlib.sha256(json.dumps([args, images, base_version]).encode()).hexdigest()[:24]


def _step_generator(seed: int, step: int, device: str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) % (2**63))


def _jobs(item: Item, flip: bool) -> ImageJob:
    p = item.placement
    return ImageJob(item.image, p.resized, p.crop_offset, p.bucket, flip)


def _check_steps_for_model(plan: TrainingPlan, sdxl: bool) -> None:
    divisor = 32 if sdxl else 64
    for spec in plan.datasets:
        if spec.values.get("enable_bucket") and int(spec.values["bucket_reso_steps"]) % divisor:
            steps = spec.values["bucket_reso_steps"]
            raise InputError(plan.args["dataset_config"], f"bucket_reso_steps {steps} must be divisible by "
                             f"{divisor} for {'SDXL' if sdxl else 'SD1.x'} (sd-scripts asserts it)")


class TextEncoding:
    """Caption → UNet conditioning (SD1.x: hidden states with clip_skip; SDXL: hidden states + pooled), cached
    per caption text when the text encoders are frozen."""

    def __init__(self, pipe: Any, sdxl: bool, clip_skip: int, cache: bool) -> None:
        self.pipe, self.sdxl, self.clip_skip, self.cache = pipe, sdxl, clip_skip, cache
        self.memory: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        from castlab.models.diffusion import encode_prompts, encode_prompts_sdxl

        if not self.cache:  # text encoders trained (or captions that vary): encode every step, with gradients
            if self.sdxl:
                return encode_prompts_sdxl(self.pipe, captions)
            return encode_prompts(self.pipe, captions, self.clip_skip), None
        missing = [c for c in dict.fromkeys(captions) if c not in self.memory]
        if missing:
            with torch.no_grad():
                if self.sdxl:
                    hidden, pooled = encode_prompts_sdxl(self.pipe, missing)
                else:
                    hidden, pooled = encode_prompts(self.pipe, missing, self.clip_skip), None
            self.memory.update({c: (hidden[i], None if pooled is None else pooled[i]) for i, c in enumerate(missing)})
        return self._stack([self.memory[c] for c in captions])

    @staticmethod
    def _stack(pairs: list[tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = torch.stack([h for h, _ in pairs])
        pooled = None if pairs[0][1] is None else torch.stack([p for _, p in pairs])
        return hidden, pooled


def run_training(
    training_toml: Path, cfg: Config, device: str = "cpu", progress: bool = True, force: bool = False,
    resume: Path | None = None, stop_after_steps: int | None = None,
) -> TrainingResult:
    """Train the LoRA `training_toml` describes (see the module docstring).

    `resume`: a state folder saved by an earlier run of the same TOML. `stop_after_steps`: save a state and stop
    after that many optimizer steps (an interruption on purpose; also what ``save_state`` does on a real one).
    Existing checkpoints of the same ``output_name`` are an error unless `force` or `resume`.
    """
    from castlab.models.diffusion import is_sdxl, load_base_pipeline, sdxl_time_ids
    from castlab.models.kohya import to_kohya_state_dict
    from trainers import network, optim, saving

    plan = read_plan(Path(training_toml))
    args = plan.args
    out_dir, name = Path(args["output_dir"]), str(args["output_name"])
    old = saving.existing_checkpoints(out_dir, name)
    if old and not (force or resume):
        raise InputError(out_dir, f"already holds {len(old)} checkpoint(s) named {name} (pass --force)")
    seed = int(args["seed"])
    pipe, base_version = load_base_pipeline(cfg, device, source=str(args["pretrained_model_name_or_path"]))
    sdxl = is_sdxl(pipe)
    _check_steps_for_model(plan, sdxl)
    items, notes = build_items(plan)
    summary = dataset_summary(plan, items)
    text_encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if sdxl else [])
    for module in (pipe.unet, pipe.vae, *text_encoders):
        module.requires_grad_(False)
    pipe.vae.eval()
    for encoder in text_encoders:
        encoder.eval()
    if not resume:
        for path in old:  # --force: checkpoints of an earlier run would mix with this one's
            path.unlink()

    noise_settings = losses.NoiseSettings.from_config(args)
    loss_settings = losses.LossSettings.from_config(args)
    schedule = losses.training_schedule(noise_settings.zero_terminal_snr, loss_settings.v_parameterization)

    # latents once, before training (sd-scripts' cache_latents), reused across runs from the disk cache
    vae_version = f"{base_version}@{weights_fingerprint(pipe.vae)}"
    latents = LatentCache(pipe.vae, vae_version, workspace_root() / "cache" / "latents", device)
    prepare_start = time.perf_counter()
    for item in tqdm(items, desc="cache latents", unit="img", disable=not progress):
        for flip in ((False, True) if item.flip_aug else (False,)):
            latents.get(_jobs(item, flip))
    val_items = validation_items(plan)
    for item in val_items:
        latents.get(_jobs(item, False))
    prepare_seconds = time.perf_counter() - prepare_start
    scaling = float(pipe.vae.config.scaling_factor)

    net = network.NetworkSettings.from_toml(args)
    attached = network.add_lora(pipe.unet, text_encoders, net, seed)
    modules = {"unet": pipe.unet, **{f"text_encoder_{i}": e for i, e in enumerate(text_encoders)}}
    train_text = any(p.requires_grad for e in text_encoders for p in e.parameters())
    text = TextEncoding(pipe, sdxl, int(args.get("clip_skip") or (2 if sdxl else 1)),
                        cache=not train_text and static_captions(items))
    if args.get("gradient_checkpointing"):
        pipe.unet.enable_gradient_checkpointing()
    pipe.unet.train()

    accumulation = max(1, int(args.get("gradient_accumulation_steps") or 1))
    batches_per_epoch = len(epoch_batches(items, seed, 1)[0])
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation)
    if args.get("max_train_epochs"):
        max_steps = int(args["max_train_epochs"]) * steps_per_epoch
    else:
        max_steps = int(args["max_train_steps"])
    optimizer = optim.build_optimizer(attached["param_groups"], args)
    lr_scheduler = optim.build_scheduler(optimizer, args, max_steps, accumulation)
    use_cuda = str(device).startswith("cuda")
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(str(args.get("mixed_precision", "no")))
    amp = amp if use_cuda else None  # CPU trains in fp32
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    params = [p for group in attached["param_groups"] for p in group["params"]]
    max_grad_norm = float(args.get("max_grad_norm") or 0.0)
    fingerprint = _fingerprint(plan, items, vae_version)

    position = Position()
    if resume:
        position = load_state(Path(resume), modules, optimizer, lr_scheduler, scaler, fingerprint)
    result = TrainingResult([], [], pipe, base_version)
    started_at = time.time()
    castlab_meta = {"castlab_profile": cfg.profile, "castlab_base_model_version": base_version,
                    "castlab_base_model": str(args["pretrained_model_name_or_path"]),
                    "castlab_dataset": _castlab_dataset(args),
                    "castlab_class_tokens": " | ".join(sorted({str(s.get("class_tokens")) for d in plan.datasets
                                                               for s in d.subsets if s.get("class_tokens")}))}

    def ss_epoch(epoch: int | None, final: bool) -> int:
        """sd-scripts' ss_epoch: the epochs completed at an epoch save and at the end (the loop has moved on to the
        next epoch by then), else the 0-based epoch being trained."""
        if epoch is not None:
            return epoch
        return math.ceil(position.step / steps_per_epoch) if final else position.epoch - 1

    def save(epoch: int | None, step: int | None, final: bool = False) -> None:
        path = out_dir / saving.checkpoint_name(name, epoch=epoch, step=step)
        meta = saving.training_metadata(
            args, summary, sdxl=sdxl, optimizer=optim.optimizer_label(optimizer, args), max_train_steps=max_steps,
            num_batches_per_epoch=batches_per_epoch, epoch=ss_epoch(epoch, final),
            step=position.step, session_id=seed, training_started_at=started_at, saved_at=time.time())
        meta.update(castlab_meta)
        meta["castlab_model_version"] = _lora_version(name, position.step, base_version)
        state = to_kohya_state_dict(
            network.lora_state_dict(pipe.unet) if attached["unet_modules"] else None, net.alpha,
            saving.SAVE_DTYPES[str(args.get("save_precision") or "float")],
            text_encoder_states=[network.lora_state_dict(e) if m else None
                                 for e, m in zip(text_encoders, attached["text_encoder_modules"], strict=True)],
            conv_alpha=net.conv_alpha_value, unet_config=pipe.unet.config)
        saving.write_checkpoint(path, state, meta)
        result.checkpoints.append(path)
        if not final:
            saving.prune_checkpoints(out_dir, name, args, epoch=epoch, step=step)

    def store_state(tag_epoch: int | None, tag_step: int | None) -> Path:
        folder = out_dir / saving.state_dir_name(name, epoch=tag_epoch, step=tag_step)
        result.states.append(save_state(folder, modules, optimizer, lr_scheduler, scaler, position, fingerprint))
        return folder

    def conditioning(batch: list[Item], flips: list[bool], captions: list[str]) -> tuple[torch.Tensor, dict]:
        hidden, pooled = text(captions)
        extra: dict[str, Any] = {}
        if sdxl:
            crops = [(i.placement.crop_top_left_flipped if f else i.placement.crop_top_left)[::-1]
                     for i, f in zip(batch, flips, strict=True)]
            time_ids = torch.stack([sdxl_time_ids(i.placement.original, c, i.placement.bucket)
                                    for i, c in zip(batch, crops, strict=True)]).to(device)
            extra["added_cond_kwargs"] = {"text_embeds": pooled.to(device), "time_ids": time_ids}
        return hidden.to(device), extra

    def validate() -> float | None:
        """Mean loss over the validation images with fixed noise and timesteps (the same at every call)."""
        if not val_items:
            return None
        pipe.unet.eval()
        values = []
        with torch.no_grad():
            for k, item in enumerate(val_items):
                gen = torch.Generator(device=device).manual_seed(seed + 7919 * (k + 1))
                encoded = latents.get(_jobs(item, False))
                x0 = encoded.mean[None].to(device) * scaling
                noise, noisy, timesteps = losses.sample_noisy_latents(schedule.scheduler, x0, noise_settings, gen)
                target = losses.prediction_target(schedule.scheduler, x0, noise, timesteps,
                                                  loss_settings.v_parameterization)
                hidden, extra = conditioning([item], [False], [item.caption])
                pred = pipe.unet(noisy, timesteps, hidden, **extra).sample
                mask = encoded.alpha[None] if item.alpha_mask and encoded.alpha is not None else None
                value, _ = losses.training_loss(pred, target, timesteps, schedule, loss_settings, mask=mask)
                values.append(float(value))
        pipe.unet.train()
        return sum(values) / len(values)

    prompts = read_prompts(Path(args["sample_prompts"])) if args.get("sample_prompts") else []
    sample_every_steps = int(args.get("sample_every_n_steps") or 0) if prompts else 0
    sample_every_epochs = int(args.get("sample_every_n_epochs") or 0) if prompts else 0
    result.report["samples"] = []

    def sample(step: int) -> None:
        size = plan.datasets[0].resolution
        result.report["samples"] += [str(p) for p in render_samples(
            pipe, prompts, out_dir, name, step, size, int(args.get("clip_skip") or 1), device)]

    if prompts and args.get("sample_at_first") and position.step == 0:
        sample(0)
    validate_every = int(args.get("validate_every_n_steps") or 0)
    result.report.update(validation=[], validation_images=len(val_items))
    save_every_steps = int(args.get("save_every_n_steps") or 0)
    save_every_epochs = int(args.get("save_every_n_epochs") or 0)
    bar = tqdm(total=max_steps, initial=position.step, desc="train lora", unit="step", disable=not progress)
    loop_start = step_start = time.perf_counter()
    step_seconds: list[float] = []
    result.report["step_seconds"] = step_seconds
    micro = 0
    while position.step < max_steps:
        batches, _ = epoch_batches(items, seed, position.epoch)
        while position.batch < len(batches) and position.step < max_steps:
            batch = batches[position.batch]
            gen = _step_generator(seed, position.step * accumulation + micro, device)
            flips = [item.flip_aug and bool(torch.rand((), generator=gen) < 0.5) for item in batch]
            encoded = [latents.get(_jobs(item, flip)) for item, flip in zip(batch, flips, strict=True)]
            mean = torch.stack([e.mean for e in encoded]).to(device)
            std = torch.stack([e.std for e in encoded]).to(device)
            x0 = (mean + std * torch.randn(mean.shape, generator=gen, device=device)) * scaling
            rng = random.Random(f"{seed}:{position.epoch}:{position.batch}")
            captions = [process_caption(i.caption, i.captions, rng, position.epoch, step=position.step,
                                        max_train_steps=max_steps) for i in batch]
            hidden, extra = conditioning(batch, flips, captions)
            noise, noisy, timesteps = losses.sample_noisy_latents(schedule.scheduler, x0, noise_settings, gen)
            target = losses.prediction_target(schedule.scheduler, x0, noise, timesteps,
                                              loss_settings.v_parameterization)
            with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
                pred = pipe.unet(noisy, timesteps, hidden, **extra).sample
            mask = None
            if any(i.alpha_mask for i in batch):
                # a flipped job's cached alpha is already flipped with its pixels (latents.load_pixels)
                mask = torch.stack([e.alpha if (e.alpha is not None and i.alpha_mask) else
                                    torch.ones(1, *reversed(i.placement.bucket)) for e, i in
                                    zip(encoded, batch, strict=True)])
            prior = None
            if loss_settings.castlab_prior_outside_mask and mask is not None:
                network.set_lora_enabled([pipe.unet], False)  # the base model's prediction: the target outside
                try:
                    with torch.no_grad():
                        prior = pipe.unet(noisy, timesteps, hidden, **extra).sample
                finally:
                    network.set_lora_enabled([pipe.unet], True)
            loss, _ = losses.training_loss(pred, target, timesteps, schedule, loss_settings, mask=mask,
                                           prior_pred=prior)
            if not torch.isfinite(loss):
                kept = result.checkpoints[-1] if result.checkpoints else None
                raise FloatingPointError(f"training loss became {loss.item()} at step {position.step + 1} "
                                         f"(epoch {position.epoch}); last good checkpoint: {kept}")
            scaler.scale(loss / accumulation).backward()
            micro += 1
            position.batch += 1
            if micro < accumulation and position.batch < len(batches):
                continue
            micro = 0
            if max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            position.step += 1
            result.losses.append(float(loss.item()))
            step_seconds.append(time.perf_counter() - step_start)
            bar.update(1)
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}",
                            epoch=position.epoch)
            if validate_every and (position.step % validate_every == 0 or position.step == max_steps):
                value = validate()
                if value is not None:
                    result.report["validation"].append({"step": position.step, "loss": value})
                    bar.set_postfix(loss=f"{result.losses[-1]:.4f}", val=f"{value:.4f}", epoch=position.epoch)
            if sample_every_steps and position.step % sample_every_steps == 0:
                sample(position.step)
            if save_every_steps and position.step % save_every_steps == 0 and position.step < max_steps:
                save(None, position.step)
                if args.get("save_state"):
                    store_state(None, position.step)
            step_start = time.perf_counter()  # the next step's time excludes this one's saving and sampling
            if stop_after_steps is not None and position.step >= stop_after_steps and position.step < max_steps:
                store_state(None, position.step)
                result.interrupted = True
                bar.close()
                return _finish(result, plan, args, out_dir, name, summary, notes, latents, prepare_seconds,
                               loop_start, position, max_steps, cfg)
        if position.batch >= len(batches):
            if sample_every_epochs and position.epoch % sample_every_epochs == 0:
                sample(position.step)
            if save_every_epochs and position.epoch % save_every_epochs == 0 and position.step < max_steps:
                save(position.epoch, None)
                if args.get("save_state"):
                    store_state(position.epoch, None)
            position.epoch += 1
            position.batch = 0
    bar.close()
    save(None, None, final=True)
    if args.get("save_state") or args.get("save_state_on_train_end"):
        store_state(None, None)
    pipe.unet.eval()
    return _finish(result, plan, args, out_dir, name, summary, notes, latents, prepare_seconds, loop_start,
                   position, max_steps, cfg)


def _finish(result: TrainingResult, plan: TrainingPlan, args: dict[str, Any], out_dir: Path, name: str,
            summary: dict[str, Any], notes: list[str], latents: LatentCache, prepare_seconds: float,
            loop_start: float, position: Position, max_steps: int, cfg: Config) -> TrainingResult:
    seconds = time.perf_counter() - loop_start
    result.report = {
        "step_seconds": result.report.get("step_seconds", []),
        "samples": result.report.get("samples", []),
        "validation": result.report.get("validation", []),
        "validation_images": result.report.get("validation_images", 0),
        "training_toml": str(plan.training_toml), "profile": cfg.profile, "base_model_version": result.base_version,
        "steps": position.step, "max_steps": max_steps, "epoch": position.epoch, "interrupted": result.interrupted,
        "losses": result.losses, "seconds_loop": seconds,
        "steps_per_second": len(result.losses) / seconds if seconds > 0 and result.losses else None,
        "prepare_seconds": prepare_seconds, "latent_cache": dict(latents.hits),
        "checkpoints": [str(p) for p in result.checkpoints], "states": [str(p) for p in result.states],
        "buckets": [d["bucket_info"] for d in summary["datasets"]], "notes": notes + plan.notes,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()},
    }
    result.report["pictures"] = write_training_report(out_dir, name, result.report)
    write_json_atomic(out_dir / f"{name}-training.json", result.report)
    return result
