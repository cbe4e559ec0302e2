"""Noise sampling and the training loss of castlab's LoRA trainer, at parity with kohya sd-scripts.

sd-scripts references: ``train_network.py`` (``get_noise_scheduler``, ``process_batch``, ``post_process_loss``),
``library/train_util.py`` (``get_noise_noisy_latents_and_timesteps``, ``get_timesteps``,
``get_huber_threshold_if_needed``, ``conditional_loss``) and ``library/custom_train_functions.py`` (noise offset,
pyramid noise, zero terminal SNR, SNR weightings, masked loss).

Unlike sd-scripts, which draws from the global torch/python RNGs, every random draw here takes an explicit
``torch.Generator`` and is made on that generator's device (then moved to the latents' device), so a run is exactly
reproducible and resumable from the generator's state. :func:`sample_noisy_latents` makes the draws in sd-scripts'
order: noise, noise-offset strength, offset, multires noise, timesteps, input-perturbation strength and noise.

castlab extensions (all off by default, i.e. sd-scripts behaviour), for images with a mask (the alpha mask):

- ``castlab_unmasked_weight`` w: pixels outside the mask count with weight w instead of 0;
- ``castlab_prior_outside_mask``: outside the mask the target is the base model's prediction (``prior_pred``);
- ``castlab_masked_loss_normalise``: each image's loss is the weighted *average* over its weighted area.

With m the mask resized to the latent size (area interpolation, as sd-scripts), e_in = loss(pred, target) and
e_out = loss(pred, prior_pred) if the prior is used else e_in, the per-pixel loss is
``m * e_in + w * (1 - m) * e_out``; the image's loss is its mean over C, H, W (sd-scripts) or, normalised, that mean
divided by ``mean_HW(m + w * (1 - m))`` (an image whose weights are all 0 then has loss 0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

logger = logging.getLogger(__name__)

# sd-scripts' training scheduler for SD 1.x/2.x/SDXL (train_network.py get_noise_scheduler)
SD_BETA_START, SD_BETA_END, NUM_TRAIN_TIMESTEPS = 0.00085, 0.012, 1000
SNR_CLIP = 1000.0  # sd-scripts clips the SNR to 1000 in the v-pred scale and debiased weights (t = 0 would be huge)
LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")
_NORMALISE_EPS = 1e-12


# ---------------------------------------------------------------------------------------------- settings parsing


def _float(flat: Mapping[str, Any], key: str, default: float | None, minimum: float | None = None) -> float | None:
    value = flat.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value!r}")
    return float(value)


def _int(flat: Mapping[str, Any], key: str, default: int | None, minimum: int = 0) -> int | None:
    value = flat.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value!r}")
    return value


def _bool(flat: Mapping[str, Any], key: str) -> bool:
    value = flat.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _choice(flat: Mapping[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = flat.get(key)
    if value is None:
        return default
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class NoiseSettings:
    """How noise and timesteps are drawn (sd-scripts argument names and defaults; 0/None/False = off)."""

    noise_offset: float | None = None
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int | None = None
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float | None = None
    ip_noise_gamma_random_strength: bool = False
    min_timestep: int | None = None
    max_timestep: int | None = None
    zero_terminal_snr: bool = False

    def __post_init__(self) -> None:
        if self.adaptive_noise_scale is not None and not self.noise_offset:
            raise ValueError("adaptive_noise_scale requires a non-zero noise_offset")
        if self.min_timestep is not None and self.max_timestep is not None and self.min_timestep > self.max_timestep:
            raise ValueError(f"min_timestep ({self.min_timestep}) must not exceed max_timestep ({self.max_timestep})")

    @classmethod
    def from_config(cls, flat: Mapping[str, Any]) -> NoiseSettings:
        """The settings in a flattened training TOML (unrelated keys are ignored)."""
        return cls(
            noise_offset=_float(flat, "noise_offset", None, 0.0),
            noise_offset_random_strength=_bool(flat, "noise_offset_random_strength"),
            adaptive_noise_scale=_float(flat, "adaptive_noise_scale", None),
            multires_noise_iterations=_int(flat, "multires_noise_iterations", None),
            multires_noise_discount=_float(flat, "multires_noise_discount", 0.3, 0.0),
            ip_noise_gamma=_float(flat, "ip_noise_gamma", None, 0.0),
            ip_noise_gamma_random_strength=_bool(flat, "ip_noise_gamma_random_strength"),
            min_timestep=_int(flat, "min_timestep", None),
            max_timestep=_int(flat, "max_timestep", None),
            zero_terminal_snr=_bool(flat, "zero_terminal_snr"),
        )


@dataclass(frozen=True)
class LossSettings:
    """How the loss is computed and weighted (sd-scripts argument names and defaults, plus ``castlab_*`` options)."""

    v_parameterization: bool = False
    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    huber_scale: float = 1.0
    min_snr_gamma: float | None = None
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: float | None = None
    debiased_estimation_loss: bool = False
    masked_loss: bool = False  # recorded only: masking happens whenever training_loss gets a mask (as sd-scripts)
    castlab_masked_loss_normalise: bool = False
    castlab_unmasked_weight: float = 0.0
    castlab_prior_outside_mask: bool = False

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        if self.huber_schedule not in HUBER_SCHEDULES:
            raise ValueError(f"huber_schedule must be one of {', '.join(HUBER_SCHEDULES)}, got {self.huber_schedule!r}")
        if self.huber_c <= 0:
            raise ValueError(f"huber_c must be > 0, got {self.huber_c}")
        if self.scale_v_pred_loss_like_noise_pred and not self.v_parameterization:
            raise ValueError("scale_v_pred_loss_like_noise_pred can be enabled only with v_parameterization")
        if self.v_pred_like_loss and self.v_parameterization:
            raise ValueError("v_pred_like_loss cannot be enabled with v_parameterization")
        if self.castlab_unmasked_weight < 0:
            raise ValueError(f"castlab_unmasked_weight must be >= 0, got {self.castlab_unmasked_weight}")
        if self.castlab_prior_outside_mask and self.castlab_unmasked_weight == 0:
            raise ValueError("castlab_prior_outside_mask needs castlab_unmasked_weight > 0 (the weight of the "
                             "prior-matching loss outside the mask); with 0 the prior would have no effect")

    @classmethod
    def from_config(cls, flat: Mapping[str, Any]) -> LossSettings:
        """The settings in a flattened training TOML (unrelated keys are ignored)."""
        defaults = {f.name: f.default for f in fields(cls)}
        return cls(
            v_parameterization=_bool(flat, "v_parameterization"),
            loss_type=_choice(flat, "loss_type", defaults["loss_type"], LOSS_TYPES),
            huber_schedule=_choice(flat, "huber_schedule", defaults["huber_schedule"], HUBER_SCHEDULES),
            huber_c=_float(flat, "huber_c", defaults["huber_c"]),
            huber_scale=_float(flat, "huber_scale", defaults["huber_scale"]),
            min_snr_gamma=_float(flat, "min_snr_gamma", None, 0.0),
            scale_v_pred_loss_like_noise_pred=_bool(flat, "scale_v_pred_loss_like_noise_pred"),
            v_pred_like_loss=_float(flat, "v_pred_like_loss", None),
            debiased_estimation_loss=_bool(flat, "debiased_estimation_loss"),
            masked_loss=_bool(flat, "masked_loss"),
            castlab_masked_loss_normalise=_bool(flat, "castlab_masked_loss_normalise"),
            castlab_unmasked_weight=_float(flat, "castlab_unmasked_weight", 0.0, 0.0),
            castlab_prior_outside_mask=_bool(flat, "castlab_prior_outside_mask"),
        )


# ---------------------------------------------------------------------------------------------- scheduler


def snr_table(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) of every timestep (sd-scripts' ``all_snr``)."""
    return alphas_cumprod / (1.0 - alphas_cumprod)


def zero_terminal_snr_betas(betas: torch.Tensor) -> torch.Tensor:
    """Betas rescaled so the last timestep has SNR 0 and the first keeps its SNR (arXiv 2305.08891, Algorithm 1).

    sqrt(alpha_bar) is shifted so its last value is 0, then scaled so its first value is unchanged.
    """
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alphas_bar = root**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


def apply_zero_terminal_snr(scheduler: DDPMScheduler) -> DDPMScheduler:
    """A copy of `scheduler` whose betas/alphas/alphas_cumprod enforce zero terminal SNR (``alphas_cumprod[-1] == 0``).

    sd-scripts' ``fix_noise_scheduler_betas_for_zero_terminal_snr``; the same numbers as diffusers'
    ``rescale_betas_zero_snr=True`` (the copy's config does not record it).
    """
    fixed = DDPMScheduler.from_config(scheduler.config)
    fixed.betas = zero_terminal_snr_betas(scheduler.betas.cpu())
    fixed.alphas = 1.0 - fixed.betas
    fixed.alphas_cumprod = torch.cumprod(fixed.alphas, dim=0)
    return fixed


@dataclass(frozen=True)
class TrainingSchedule:
    """The scheduler that noises latents and makes v targets, and the SNR table the loss weightings read.

    As in sd-scripts (``prepare_scheduler_for_custom_training`` runs before the zero-terminal-SNR fix), ``snr`` is
    always that of the original schedule, so the weightings stay finite at the last timestep.
    """

    scheduler: DDPMScheduler
    snr: torch.Tensor

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)


def training_schedule(zero_terminal_snr: bool = False, v_parameterization: bool = False) -> TrainingSchedule:
    """sd-scripts' training scheduler: DDPM, scaled_linear betas 0.00085–0.012, 1000 steps, no sample clipping."""
    base = DDPMScheduler(beta_start=SD_BETA_START, beta_end=SD_BETA_END, beta_schedule="scaled_linear",
                         num_train_timesteps=NUM_TRAIN_TIMESTEPS, clip_sample=False)
    snr = snr_table(base.alphas_cumprod)
    if not zero_terminal_snr:
        return TrainingSchedule(base, snr)
    if not v_parameterization:
        logger.warning("zero_terminal_snr is enabled without v_parameterization: at the last timestep the latents "
                       "are pure noise and an epsilon target is trivial; training results will be unexpected")
    return TrainingSchedule(apply_zero_terminal_snr(base), snr)


def prediction_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
    v_parameterization: bool,
) -> torch.Tensor:
    """What the UNet learns to predict: the velocity (v-parameterization) or the noise (epsilon).

    `noise` is the noise returned by :func:`sample_noise`, without the input perturbation (sd-scripts).
    """
    if v_parameterization:
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


# ---------------------------------------------------------------------------------------------- noise


def _randn(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)


def _rand_scalar(generator: torch.Generator) -> float:
    return float(torch.rand(1, generator=generator, device=generator.device).item())


def _check_latents(latents: torch.Tensor) -> None:
    if latents.ndim != 4:
        raise ValueError(f"latents must be (batch, channels, height, width), got shape {tuple(latents.shape)}")


def noise_offset(
    latents: torch.Tensor, noise: torch.Tensor, settings: NoiseSettings, generator: torch.Generator
) -> torch.Tensor:
    """`noise` plus a random constant per image and channel, of std ``noise_offset`` (crosslabs' offset noise).

    With ``noise_offset_random_strength`` the std is ``U(0, 1) * noise_offset`` (one draw per batch); with
    ``adaptive_noise_scale`` s, ``s * |mean_HW(latents)|`` is added to it per image and channel, clipped at 0.
    """
    if not settings.noise_offset:
        return noise
    offset: float | torch.Tensor = settings.noise_offset
    if settings.noise_offset_random_strength:
        offset = _rand_scalar(generator) * settings.noise_offset
    if settings.adaptive_noise_scale is not None:
        latent_mean = latents.float().mean(dim=(2, 3), keepdim=True).abs()
        offset = (offset + settings.adaptive_noise_scale * latent_mean).clamp(min=0.0)
    return noise + offset * _randn((latents.shape[0], latents.shape[1], 1, 1), generator, noise.device)


def multires_noise(
    noise: torch.Tensor, iterations: int, discount: float, generator: torch.Generator
) -> torch.Tensor:
    """Pyramid (multi-resolution) noise: `noise` plus upsampled noise at shrinking random scales, unit std overall.

    Level i (from 0) adds bilinear-upsampled N(0, 1) noise of size (H, W) / r**i, r ~ U(2, 4), times discount**i;
    it stops after a level 1 pixel high or wide. The sum is divided by its std over the whole batch (sd-scripts'
    ``pyramid_noise_like``).
    """
    batch, channels, height, width = noise.shape
    out = noise.clone()
    for i in range(iterations):
        r = _rand_scalar(generator) * 2 + 2
        h, w = max(1, int(height / r**i)), max(1, int(width / r**i))
        level = _randn((batch, channels, h, w), generator, noise.device)
        out = out + F.interpolate(level, size=(height, width), mode="bilinear", align_corners=False) * discount**i
        if h == 1 or w == 1:
            break
    return out / out.std()


def sample_noise(latents: torch.Tensor, settings: NoiseSettings, generator: torch.Generator) -> torch.Tensor:
    """Training noise for `latents` (float32 maths, returned in the latents' dtype and device)."""
    _check_latents(latents)
    noise = _randn(tuple(latents.shape), generator, latents.device)
    noise = noise_offset(latents, noise, settings, generator)
    if settings.multires_noise_iterations:
        noise = multires_noise(noise, settings.multires_noise_iterations, settings.multires_noise_discount, generator)
    return noise.to(latents.dtype)


def sample_timesteps(
    batch: int, settings: NoiseSettings, num_train_timesteps: int, generator: torch.Generator,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One timestep per image, uniform in [min_timestep, max_timestep) (defaults 0 and `num_train_timesteps`).

    min_timestep == max_timestep gives that timestep for every image (sd-scripts). Long tensor on `device`
    (default: the generator's device).
    """
    low = 0 if settings.min_timestep is None else settings.min_timestep
    high = num_train_timesteps if settings.max_timestep is None else settings.max_timestep
    if high > num_train_timesteps:
        raise ValueError(f"max_timestep ({high}) must be <= the scheduler's {num_train_timesteps} timesteps")
    if low > high:
        raise ValueError(f"min_timestep ({low}) must not exceed max_timestep ({high})")
    if low == high:
        if high >= num_train_timesteps:
            raise ValueError(f"min_timestep = max_timestep = {high} is not a timestep (0..{num_train_timesteps - 1})")
        timesteps = torch.full((batch,), high, dtype=torch.long, device=generator.device)
    else:
        timesteps = torch.randint(low, high, (batch,), generator=generator, device=generator.device)
    return timesteps.to(device if device is not None else generator.device)


def noisy_latents(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
    settings: NoiseSettings, generator: torch.Generator,
) -> torch.Tensor:
    """The forward diffusion of `latents` to `timesteps`.

    With ``ip_noise_gamma`` g (input perturbation, arXiv 2301.11706) the latents are noised with
    ``noise + g * N(0, 1)`` (g ~ U(0, 1) * ip_noise_gamma per batch with ``ip_noise_gamma_random_strength``), while
    the target stays built from `noise` alone (sd-scripts).
    """
    if settings.ip_noise_gamma:
        strength = settings.ip_noise_gamma
        if settings.ip_noise_gamma_random_strength:
            strength = _rand_scalar(generator) * settings.ip_noise_gamma
        perturbation = _randn(tuple(latents.shape), generator, latents.device).to(noise.dtype)
        noise = noise + strength * perturbation
    return scheduler.add_noise(latents, noise, timesteps.to(latents.device))


def sample_noisy_latents(
    scheduler: DDPMScheduler, latents: torch.Tensor, settings: NoiseSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noise, noisy latents, timesteps) drawn in sd-scripts' order (``get_noise_noisy_latents_and_timesteps``)."""
    noise = sample_noise(latents, settings, generator)
    timesteps = sample_timesteps(latents.shape[0], settings, int(scheduler.config.num_train_timesteps), generator,
                                 latents.device)
    return noise, noisy_latents(scheduler, latents, noise, timesteps, settings, generator), timesteps


# ---------------------------------------------------------------------------------------------- loss weightings


def min_snr_weight(snr: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR-gamma weight (arXiv 2303.09556): min(snr, gamma) / snr, or / (snr + 1) for v-prediction."""
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if v_prediction else clipped / snr


def v_pred_scale(snr: torch.Tensor) -> torch.Tensor:
    """snr / (snr + 1) with snr clipped to 1000: scales a v loss like an epsilon loss (sd-scripts' get_snr_scale)."""
    snr = torch.clamp(snr, max=SNR_CLIP)
    return snr / (snr + 1)


def debiased_weight(snr: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """Debiased estimation weight (arXiv 2310.08442): 1 / sqrt(snr), or 1 / (snr + 1) for v; snr clipped to 1000."""
    snr = torch.clamp(snr, max=SNR_CLIP)
    return 1 / (snr + 1) if v_prediction else 1 / torch.sqrt(snr)


def weight_per_image_loss(
    loss: torch.Tensor, timesteps: torch.Tensor, snr: torch.Tensor, settings: LossSettings
) -> torch.Tensor:
    """sd-scripts' ``post_process_loss`` on per-image losses: min-SNR, v-pred scaling, v-pred-like, debiased."""
    snr_t = snr.to(device=loss.device, dtype=torch.float32)[timesteps.to(loss.device)]
    if settings.min_snr_gamma:
        loss = loss * min_snr_weight(snr_t, settings.min_snr_gamma, settings.v_parameterization)
    if settings.scale_v_pred_loss_like_noise_pred:
        loss = loss * v_pred_scale(snr_t)
    if settings.v_pred_like_loss:
        loss = loss + loss / v_pred_scale(snr_t) * settings.v_pred_like_loss
    if settings.debiased_estimation_loss:
        loss = loss * debiased_weight(snr_t, settings.v_parameterization)
    return loss


# ---------------------------------------------------------------------------------------------- loss


def huber_threshold(timesteps: torch.Tensor, schedule: TrainingSchedule, settings: LossSettings) -> torch.Tensor:
    """Per-image huber_c for the huber/smooth_l1 losses (sd-scripts' ``get_huber_threshold_if_needed``).

    constant: huber_c * huber_scale; exponential: huber_scale * huber_c ** (t / T); snr: (1 - huber_c) /
    (1 + sigma_t)**2 + huber_c with sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) (huber_scale unused, as there).
    """
    if settings.huber_schedule == "constant":
        return torch.full(timesteps.shape, settings.huber_c * settings.huber_scale, device=timesteps.device)
    if settings.huber_schedule == "exponential":
        rate = -math.log(settings.huber_c) / schedule.num_train_timesteps
        return torch.exp(-rate * timesteps.float()) * settings.huber_scale
    alphas_cumprod = schedule.scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
    return (1 - settings.huber_c) / (1 + sigmas) ** 2 + settings.huber_c


def elementwise_loss(
    pred: torch.Tensor, target: torch.Tensor, loss_type: str, huber_c: torch.Tensor | None = None
) -> torch.Tensor:
    """Unreduced loss (sd-scripts' ``conditional_loss(..., reduction="none")``); huber_c is per image."""
    if loss_type == "l2":
        return (pred - target) ** 2
    if loss_type == "l1":
        return (pred - target).abs()
    if loss_type not in ("huber", "smooth_l1"):
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    if huber_c is None:
        raise ValueError(f"loss_type {loss_type} needs a per-image huber_c")
    c = huber_c.view(-1, *([1] * (pred.ndim - 1)))
    smooth = torch.sqrt((pred - target) ** 2 + c**2) - c
    return 2 * c * smooth if loss_type == "huber" else 2 * smooth


def mask_to_latent(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B, H, W) or (B, 1, H, W) mask in [0, 1] resized to `size` by area averaging (as sd-scripts), (B, 1, h, w)."""
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (batch, height, width) or (batch, 1, height, width), got {tuple(mask.shape)}")
    return F.interpolate(mask.float(), size=size, mode="area")


def training_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    schedule: TrainingSchedule,
    settings: LossSettings,
    mask: torch.Tensor | None = None,
    prior_pred: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch loss, per-image losses) as sd-scripts' ``process_batch`` computes them, in float32.

    Per-pixel loss (``loss_type``), the mask (see the module docstring), mean per image, the per-image `weights`
    (sd-scripts' ``loss_weights``, e.g. ``prior_loss_weight`` for regularisation images), then the SNR weightings.
    The batch loss is the mean of the returned per-image losses. `prior_pred` (the base model's prediction) is
    required with ``castlab_prior_outside_mask`` and a mask, and refused otherwise.
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must be equal 4-D shapes")
    batch = pred.shape[0]
    if timesteps.shape != (batch,):
        raise ValueError(f"timesteps must have shape ({batch},), got {tuple(timesteps.shape)}")
    use_prior = settings.castlab_prior_outside_mask and mask is not None
    if use_prior and prior_pred is None:
        raise ValueError("castlab_prior_outside_mask needs prior_pred (the base model's prediction)")
    if prior_pred is not None and not use_prior:
        raise ValueError("prior_pred is only used with castlab_prior_outside_mask and a mask")
    if prior_pred is not None and prior_pred.shape != pred.shape:
        raise ValueError(f"prior_pred {tuple(prior_pred.shape)} must have pred's shape {tuple(pred.shape)}")

    pred, target = pred.float(), target.float()
    huber_c = None
    if settings.loss_type in ("huber", "smooth_l1"):
        huber_c = huber_threshold(timesteps.to(pred.device), schedule, settings)
    loss = elementwise_loss(pred, target, settings.loss_type, huber_c)

    if mask is not None:
        if mask.shape[0] != batch:
            raise ValueError(f"mask has {mask.shape[0]} images, pred has {batch}")
        m = mask_to_latent(mask.to(pred.device), (pred.shape[2], pred.shape[3]))
        weight = m
        if settings.castlab_unmasked_weight:
            outside = elementwise_loss(pred, prior_pred.float(), settings.loss_type, huber_c) if use_prior else loss
            loss = m * loss + settings.castlab_unmasked_weight * (1 - m) * outside
            weight = m + settings.castlab_unmasked_weight * (1 - m)
        else:
            loss = m * loss
        per_image = loss.mean(dim=(1, 2, 3))
        if settings.castlab_masked_loss_normalise:
            per_image = per_image / weight.mean(dim=(1, 2, 3)).clamp(min=_NORMALISE_EPS)
    else:
        per_image = loss.mean(dim=(1, 2, 3))

    if weights is not None:
        if weights.shape != (batch,):
            raise ValueError(f"weights must have shape ({batch},), got {tuple(weights.shape)}")
        per_image = per_image * weights.to(per_image.device, torch.float32)
    per_image = weight_per_image_loss(per_image, timesteps, schedule.snr, settings)
    return per_image.mean(), per_image
