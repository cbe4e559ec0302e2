"""trainers.loss: noise sampling, zero terminal SNR, loss weightings and masked losses at sd-scripts parity."""

import logging
import math

import pytest
import torch
from diffusers import DDPMScheduler

from trainers.loss import (
    LossSettings,
    NoiseSettings,
    apply_zero_terminal_snr,
    huber_threshold,
    mask_to_latent,
    multires_noise,
    noisy_latents,
    prediction_target,
    sample_noise,
    sample_noisy_latents,
    sample_timesteps,
    training_loss,
    training_schedule,
)

# Computed once by running sd-scripts' own functions (library/custom_train_functions.py at commit 48d368f:
# prepare_scheduler_for_custom_training, apply_snr_weight, scale_v_prediction_loss_like_noise_prediction,
# add_v_prediction_like_loss, apply_debiased_estimation, fix_noise_scheduler_betas_for_zero_terminal_snr) on its
# training scheduler (DDPM scaled_linear 0.00085-0.012, 1000 steps) with a per-image loss of 1.
TIMESTEPS = [0, 1, 10, 100, 250, 500, 750, 999]
SD_SNR = [1175.44, 585.862, 103.507, 8.45387, 2.06553, 0.38185, 0.0595126, 0.00468191]
SD_MIN_SNR5_EPS = [0.00425372, 0.00853443, 0.0483057, 0.591445, 1, 1, 1, 1]
SD_MIN_SNR5_V = [0.00425011, 0.00851989, 0.0478435, 0.528884, 0.673792, 0.276332, 0.0561698, 0.00466009]
SD_SCALE_V = [0.999001, 0.998296, 0.990431, 0.894223, 0.673792, 0.276332, 0.0561698, 0.00466009]
SD_V_LIKE_01 = [1.1001, 1.10017, 1.10097, 1.11183, 1.14841, 1.36188, 2.78032, 22.4588]
SD_DEBIASED_EPS = [0.0316228, 0.0413145, 0.0982911, 0.343932, 0.695799, 1.61828, 4.09917, 14.6146]
SD_DEBIASED_V = [0.000999001, 0.00170398, 0.00956869, 0.105777, 0.326208, 0.723668, 0.94383, 0.99534]
SD_ZTSNR_ALPHAS_CUMPROD = [0.99915, 0.998233, 0.989794, 0.886761, 0.652457, 0.241019, 0.0327991, 0.0]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unit_loss(settings: LossSettings, timesteps=TIMESTEPS, **kwargs) -> torch.Tensor:
    """Per-image losses of a prediction off by 1 everywhere (per-pixel l2 loss 1) after the weightings."""
    ts = torch.tensor(timesteps)
    target = torch.zeros(len(timesteps), 4, 4, 4)
    _, per_image = training_loss(target + 1, target, ts, training_schedule(), settings, **kwargs)
    return per_image


def close(actual: torch.Tensor, expected: list[float], rel: float = 1e-4) -> bool:
    return torch.allclose(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=rel, atol=1e-7)


# ---------------------------------------------------------------------------------------------- schedule and SNR


def test_training_schedule_snr_matches_sd_scripts():
    schedule = training_schedule()
    assert schedule.num_train_timesteps == 1000
    assert close(schedule.snr[TIMESTEPS], SD_SNR)


def test_min_snr_weight_is_the_closed_form_for_epsilon_and_v():
    snr = training_schedule().snr[TIMESTEPS].double()
    eps = unit_loss(LossSettings(min_snr_gamma=5.0))
    v = unit_loss(LossSettings(min_snr_gamma=5.0, v_parameterization=True))
    assert torch.allclose(eps.double(), torch.clamp(snr, max=5.0) / snr, rtol=1e-5)
    assert torch.allclose(v.double(), torch.clamp(snr, max=5.0) / (snr + 1), rtol=1e-5)
    assert close(eps, SD_MIN_SNR5_EPS) and close(v, SD_MIN_SNR5_V)
    assert torch.equal(unit_loss(LossSettings(min_snr_gamma=0.0)), torch.ones(len(TIMESTEPS)))  # 0 = off


def test_v_pred_scaling_v_like_loss_and_debiased_match_sd_scripts():
    assert close(unit_loss(LossSettings(v_parameterization=True, scale_v_pred_loss_like_noise_pred=True)),
                 SD_SCALE_V)
    assert close(unit_loss(LossSettings(v_pred_like_loss=0.1)), SD_V_LIKE_01)
    assert close(unit_loss(LossSettings(debiased_estimation_loss=True)), SD_DEBIASED_EPS)
    assert close(unit_loss(LossSettings(debiased_estimation_loss=True, v_parameterization=True)), SD_DEBIASED_V)


def test_weightings_apply_in_order_after_per_image_weights():
    settings = LossSettings(min_snr_gamma=5.0, debiased_estimation_loss=True)
    weights = torch.linspace(0.5, 2.0, len(TIMESTEPS))
    expected = [w * a * b for w, a, b in zip(weights.tolist(), SD_MIN_SNR5_EPS, SD_DEBIASED_EPS, strict=True)]
    assert close(unit_loss(settings, weights=weights), expected)


def test_zero_terminal_snr_rescales_like_sd_scripts_and_diffusers():
    base = training_schedule().scheduler
    before = base.alphas_cumprod.clone()
    fixed = apply_zero_terminal_snr(base)
    assert fixed.alphas_cumprod[-1].item() == 0.0 and fixed.betas[-1].item() == pytest.approx(1.0)
    assert fixed.alphas_cumprod[0].item() == pytest.approx(before[0].item(), rel=1e-6)
    assert close(fixed.alphas_cumprod[TIMESTEPS], SD_ZTSNR_ALPHAS_CUMPROD, rel=1e-5)
    assert torch.equal(base.alphas_cumprod, before)  # the input scheduler is left alone
    reference = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, rescale_betas_zero_snr=True)
    assert torch.allclose(fixed.betas, reference.betas, atol=1e-7)


def test_zero_terminal_snr_keeps_the_original_snr_for_weighting(caplog):
    plain = training_schedule()
    with caplog.at_level(logging.WARNING, logger="trainers.loss"):
        fixed = training_schedule(zero_terminal_snr=True, v_parameterization=True)
    assert not caplog.records
    assert fixed.scheduler.alphas_cumprod[-1] == 0
    assert torch.equal(fixed.snr, plain.snr)  # sd-scripts computes all_snr before the fix: weights stay finite
    per_image = unit_loss(LossSettings(min_snr_gamma=5.0), timesteps=[999])
    assert torch.isfinite(per_image).all()
    with caplog.at_level(logging.WARNING, logger="trainers.loss"):
        training_schedule(zero_terminal_snr=True, v_parameterization=False)
    assert "zero_terminal_snr" in caplog.text and "v_parameterization" in caplog.text


def test_prediction_target_epsilon_and_velocity():
    scheduler = training_schedule().scheduler
    latents, noise = torch.randn(2, 4, 3, 3, generator=gen(1)), torch.randn(2, 4, 3, 3, generator=gen(2))
    ts = torch.tensor([10, 900])
    assert prediction_target(scheduler, latents, noise, ts, False) is noise
    ac = scheduler.alphas_cumprod[ts].view(-1, 1, 1, 1)
    expected = ac.sqrt() * noise - (1 - ac).sqrt() * latents
    assert torch.allclose(prediction_target(scheduler, latents, noise, ts, True), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------- noise


def test_noise_offset_adds_a_per_channel_constant_of_the_given_std():
    latents = torch.zeros(256, 4, 8, 8)
    plain = sample_noise(latents, NoiseSettings(), gen(3))
    offset = sample_noise(latents, NoiseSettings(noise_offset=0.1), gen(3))
    diff = offset - plain  # the base noise is the first draw, so it is identical
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff), atol=1e-6)
    assert diff[:, :, 0, 0].std().item() == pytest.approx(0.1, rel=0.1)
    assert torch.equal(sample_noise(latents, NoiseSettings(noise_offset=0.0), gen(3)), plain)  # 0 = off


def test_noise_offset_random_strength_and_adaptive_scale():
    latents = torch.zeros(256, 4, 4, 4)
    stds = []
    for seed in range(20):
        plain = sample_noise(latents, NoiseSettings(), gen(seed))
        random = sample_noise(latents, NoiseSettings(noise_offset=0.1, noise_offset_random_strength=True), gen(seed))
        stds.append((random - plain)[:, :, 0, 0].std().item())
    assert max(stds) < 0.1 * 1.15 and min(stds) < 0.05  # U(0, 1) * 0.1 per batch
    bright = torch.full((256, 4, 4, 4), -10.0)  # |mean| 10: adaptive 0.1 adds 1.0 to the offset's std
    plain = sample_noise(bright, NoiseSettings(), gen(4))
    adaptive = sample_noise(bright, NoiseSettings(noise_offset=0.01, adaptive_noise_scale=0.1), gen(4))
    assert (adaptive - plain)[:, :, 0, 0].std().item() == pytest.approx(1.01, rel=0.1)


def _neighbour_correlation(x: torch.Tensor) -> float:
    a, b = x[..., :, :-1].flatten(), x[..., :, 1:].flatten()
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def test_multires_noise_shape_std_and_low_frequencies():
    latents = torch.zeros(8, 4, 32, 32)
    white = sample_noise(latents, NoiseSettings(), gen(5))
    pyramid = sample_noise(latents, NoiseSettings(multires_noise_iterations=6, multires_noise_discount=0.8), gen(5))
    assert pyramid.shape == latents.shape
    assert pyramid.std().item() == pytest.approx(1.0, abs=1e-5)  # rescaled to unit std over the batch
    assert abs(_neighbour_correlation(white)) < 0.05 and _neighbour_correlation(pyramid) > 0.15
    # per image and channel means: white noise has std 1/32; the coarse levels add much more
    assert pyramid.mean(dim=(2, 3)).std().item() > 5 * white.mean(dim=(2, 3)).std().item()
    # discount 0 keeps only level 0 (another full-size white noise): still white, unit std
    flat = multires_noise(white, 6, 0.0, gen(6))
    assert flat.std().item() == pytest.approx(1.0, abs=1e-5) and abs(_neighbour_correlation(flat)) < 0.05


def test_multires_noise_levels_are_discounted_and_stop_at_one_pixel():
    """Replays the documented algorithm: level i is randn(H / r**i, W / r**i) upsampled, times discount**i."""
    noise = torch.randn(2, 3, 16, 24, generator=gen(20))
    out = multires_noise(noise, 10, 0.5, gen(21))
    g, expected, levels = gen(21), noise.clone(), 0
    for i in range(10):
        r = torch.rand(1, generator=g).item() * 2 + 2
        h, w = max(1, int(16 / r**i)), max(1, int(24 / r**i))
        level = torch.randn(2, 3, h, w, generator=g)
        expected += torch.nn.functional.interpolate(level, size=(16, 24), mode="bilinear") * 0.5**i
        levels += 1
        if h == 1 or w == 1:
            break
    assert levels < 10  # 16 rows shrink to 1 within 10 levels of r >= 2
    assert torch.allclose(out, expected / expected.std(), atol=1e-6)


def test_identical_generators_give_identical_draws_and_resume_from_state():
    scheduler = training_schedule().scheduler
    settings = NoiseSettings(noise_offset=0.05, noise_offset_random_strength=True, multires_noise_iterations=4,
                             ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True)
    latents = torch.randn(2, 4, 16, 16, generator=gen(7))
    a = sample_noisy_latents(scheduler, latents, settings, gen(8))
    b = sample_noisy_latents(scheduler, latents, settings, gen(8))
    c = sample_noisy_latents(scheduler, latents, settings, gen(9))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    g = gen(10)
    sample_noisy_latents(scheduler, latents, settings, g)
    state = g.get_state()
    second = sample_noisy_latents(scheduler, latents, settings, g)
    resumed = torch.Generator().set_state(state)
    assert all(torch.equal(x, y) for x, y in zip(second, sample_noisy_latents(scheduler, latents, settings, resumed),
                                                 strict=True))
    torch.manual_seed(0)  # the global RNG plays no part
    first = sample_noise(latents, settings, gen(11))
    torch.manual_seed(1)
    assert torch.equal(first, sample_noise(latents, settings, gen(11)))


def test_timesteps_range_fixed_value_and_errors():
    ts = sample_timesteps(4096, NoiseSettings(min_timestep=100, max_timestep=200), 1000, gen(12))
    assert ts.dtype == torch.long and ts.min().item() == 100 and ts.max().item() == 199  # max is exclusive
    full = sample_timesteps(4096, NoiseSettings(), 1000, gen(12))
    assert full.min().item() == 0 and full.max().item() == 999
    assert torch.equal(sample_timesteps(3, NoiseSettings(min_timestep=500, max_timestep=500), 1000, gen(0)),
                       torch.full((3,), 500))
    with pytest.raises(ValueError, match="max_timestep"):
        sample_timesteps(2, NoiseSettings(max_timestep=1001), 1000, gen(0))
    with pytest.raises(ValueError, match="min_timestep"):
        sample_timesteps(2, NoiseSettings(min_timestep=1001), 1000, gen(0))
    with pytest.raises(ValueError, match="min_timestep"):
        NoiseSettings(min_timestep=600, max_timestep=500)


def test_input_perturbation_noises_the_input_but_not_the_target():
    scheduler = training_schedule().scheduler
    latents = torch.randn(64, 4, 16, 16, generator=gen(13))
    noise = sample_noise(latents, NoiseSettings(), gen(14))
    ts = torch.full((64,), 500)
    clean = noisy_latents(scheduler, latents, noise, ts, NoiseSettings(), gen(15))
    assert torch.equal(clean, scheduler.add_noise(latents, noise, ts))
    perturbed = noisy_latents(scheduler, latents, noise, ts, NoiseSettings(ip_noise_gamma=0.1), gen(15))
    sigma = (1 - scheduler.alphas_cumprod[500]).sqrt().item()
    assert (perturbed - clean).std().item() == pytest.approx(0.1 * sigma, rel=0.05)
    # sample_noisy_latents returns the unperturbed noise, from which the target is built
    n1, x1, t1 = sample_noisy_latents(scheduler, latents, NoiseSettings(ip_noise_gamma=0.1), gen(16))
    n0, x0, t0 = sample_noisy_latents(scheduler, latents, NoiseSettings(), gen(16))
    assert torch.equal(n1, n0) and torch.equal(t1, t0) and not torch.equal(x1, x0)


def test_noise_keeps_the_latents_dtype():
    latents = torch.zeros(2, 4, 8, 8, dtype=torch.float16)
    assert sample_noise(latents, NoiseSettings(noise_offset=0.1), gen(0)).dtype == torch.float16
    with pytest.raises(ValueError, match="latents"):
        sample_noise(torch.zeros(4, 8, 8), NoiseSettings(), gen(0))


# ---------------------------------------------------------------------------------------------- masked loss


def masked_case(fraction_rows: int, inside_error: float = 1.0, outside_error: float = 0.0):
    """Latents 8x8, image mask 64x64 whose top `fraction_rows` latent rows are 1 (area = rows / 8)."""
    mask = torch.zeros(1, 64, 64)
    mask[:, : fraction_rows * 8] = 1.0
    target = torch.zeros(1, 4, 8, 8)
    pred = torch.full_like(target, math.sqrt(outside_error))
    pred[:, :, :fraction_rows] = math.sqrt(inside_error)
    return pred, target, mask


def loss_of(pred, target, mask, settings, prior_pred=None) -> float:
    loss, _ = training_loss(pred, target, torch.tensor([300]), training_schedule(), settings, mask=mask,
                            prior_pred=prior_pred)
    return loss.item()


def test_error_only_outside_the_mask_gives_zero_loss():
    pred, target, mask = masked_case(3, inside_error=0.0, outside_error=4.0)
    assert loss_of(pred, target, mask, LossSettings()) == 0.0
    assert loss_of(pred, target, mask, LossSettings(castlab_masked_loss_normalise=True)) == 0.0
    assert loss_of(pred, target, None, LossSettings()) == pytest.approx(4.0 * 5 / 8)


def test_area_normalised_loss_is_invariant_to_mask_area():
    settings = LossSettings(castlab_masked_loss_normalise=True)
    for rows in (1, 2, 4, 8):
        pred, target, mask = masked_case(rows, inside_error=2.0)
        assert loss_of(pred, target, mask, LossSettings()) == pytest.approx(2.0 * rows / 8)  # sd-scripts scales
        assert loss_of(pred, target, mask, settings) == pytest.approx(2.0)
    pred, target, _ = masked_case(2, inside_error=2.0)
    assert loss_of(pred, target, torch.zeros(1, 64, 64), settings) == 0.0  # empty mask: 0, not NaN


def test_unmasked_weight_blends_inside_and_outside():
    a, b, w, f = 2.0, 3.0, 0.25, 3 / 8
    pred, target, mask = masked_case(3, inside_error=a, outside_error=b)
    blended = f * a + w * (1 - f) * b
    assert loss_of(pred, target, mask, LossSettings(castlab_unmasked_weight=w)) == pytest.approx(blended)
    normalised = LossSettings(castlab_unmasked_weight=w, castlab_masked_loss_normalise=True)
    assert loss_of(pred, target, mask, normalised) == pytest.approx(blended / (f + w * (1 - f)))
    assert loss_of(pred, target, mask, LossSettings(castlab_unmasked_weight=1.0)) == pytest.approx(f * a + (1 - f) * b)


def test_prior_prediction_is_the_target_outside_the_mask():
    settings = LossSettings(castlab_prior_outside_mask=True, castlab_unmasked_weight=0.5)
    _, target, mask = masked_case(2)
    prior = torch.full_like(target, 3.0)
    # matches the target inside and the prior outside: no loss
    pred = torch.where(mask_to_latent(mask, (8, 8)).bool().expand_as(target), target, prior)
    assert loss_of(pred, target, mask, settings, prior_pred=prior) == 0.0
    # matches the target everywhere: outside it is 3 away from the prior
    assert loss_of(target.clone(), target, mask, settings, prior_pred=prior) == pytest.approx(0.5 * (6 / 8) * 9.0)


def test_prior_settings_are_checked():
    pred, target, mask = masked_case(2)
    with pytest.raises(ValueError, match="prior_pred"):
        loss_of(pred, target, mask, LossSettings(castlab_prior_outside_mask=True, castlab_unmasked_weight=1.0))
    with pytest.raises(ValueError, match="castlab_prior_outside_mask"):
        loss_of(pred, target, mask, LossSettings(), prior_pred=target)
    with pytest.raises(ValueError, match="castlab_unmasked_weight"):
        LossSettings(castlab_prior_outside_mask=True)


def test_mask_is_area_averaged_to_latent_size():
    mask = torch.zeros(1, 64, 64)
    mask[:, ::2, ::2] = 1.0  # a quarter of every 8x8 block
    latent_mask = mask_to_latent(mask, (8, 8))
    assert latent_mask.shape == (1, 1, 8, 8) and torch.allclose(latent_mask, torch.full_like(latent_mask, 0.25))
    target = torch.zeros(1, 4, 8, 8)
    assert loss_of(target + 1, target, mask, LossSettings()) == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------------- loss types


def test_l1_huber_and_smooth_l1():
    target = torch.zeros(2, 1, 2, 2)
    pred = torch.full_like(target, 0.5)
    ts = torch.tensor([0, 999])
    schedule = training_schedule()
    l1, _ = training_loss(pred, target, ts, schedule, LossSettings(loss_type="l1"))
    assert l1.item() == pytest.approx(0.5)
    c = 0.1
    huber, _ = training_loss(pred, target, ts, schedule, LossSettings(loss_type="huber", huber_schedule="constant"))
    assert huber.item() == pytest.approx(2 * c * (math.sqrt(0.25 + c * c) - c), rel=1e-5)
    smooth, _ = training_loss(pred, target, ts, schedule,
                              LossSettings(loss_type="smooth_l1", huber_schedule="constant"))
    assert smooth.item() == pytest.approx(2 * (math.sqrt(0.25 + c * c) - c), rel=1e-5)


def test_huber_schedules():
    schedule = training_schedule()
    ts = torch.tensor([0, 500, 1000 - 1])
    exp = huber_threshold(ts, schedule, LossSettings(loss_type="huber", huber_schedule="exponential", huber_scale=2.0))
    assert exp.tolist() == pytest.approx([2.0 * 0.1 ** (t / 1000) for t in ts.tolist()], rel=1e-5)
    snr = huber_threshold(ts, schedule, LossSettings(loss_type="huber"))
    sigmas = ((1 - schedule.scheduler.alphas_cumprod[ts]) / schedule.scheduler.alphas_cumprod[ts]).sqrt()
    assert snr.tolist() == pytest.approx((0.9 / (1 + sigmas) ** 2 + 0.1).tolist(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- settings


def test_settings_from_flattened_toml():
    assert NoiseSettings.from_config({"noise_offset": 0.0, "output_name": "x"}) == NoiseSettings(noise_offset=0.0)
    noise = NoiseSettings.from_config({"noise_offset": 0.05, "multires_noise_iterations": 6, "ip_noise_gamma": 0.1,
                                       "min_timestep": 10, "max_timestep": 900, "zero_terminal_snr": True})
    assert (noise.noise_offset, noise.multires_noise_iterations, noise.multires_noise_discount) == (0.05, 6, 0.3)
    assert (noise.min_timestep, noise.max_timestep, noise.zero_terminal_snr) == (10, 900, True)
    loss = LossSettings.from_config({"v_parameterization": True, "min_snr_gamma": 5, "loss_type": "huber",
                                     "castlab_masked_loss_normalise": True, "castlab_unmasked_weight": 0.1})
    assert loss == LossSettings(v_parameterization=True, min_snr_gamma=5.0, loss_type="huber",
                                castlab_masked_loss_normalise=True, castlab_unmasked_weight=0.1)
    assert LossSettings.from_config({}) == LossSettings()


@pytest.mark.parametrize(("cls", "flat", "key"), [
    (NoiseSettings, {"noise_offset": "0.1"}, "noise_offset"),
    (NoiseSettings, {"noise_offset": -0.1}, "noise_offset"),
    (NoiseSettings, {"multires_noise_iterations": 6.5}, "multires_noise_iterations"),
    (NoiseSettings, {"zero_terminal_snr": 1}, "zero_terminal_snr"),
    (NoiseSettings, {"adaptive_noise_scale": 0.01}, "adaptive_noise_scale"),
    (LossSettings, {"loss_type": "l3"}, "loss_type"),
    (LossSettings, {"huber_schedule": "cosine"}, "huber_schedule"),
    (LossSettings, {"scale_v_pred_loss_like_noise_pred": True}, "scale_v_pred_loss_like_noise_pred"),
    (LossSettings, {"v_pred_like_loss": 0.1, "v_parameterization": True}, "v_pred_like_loss"),
    (LossSettings, {"castlab_unmasked_weight": -1}, "castlab_unmasked_weight"),
])
def test_bad_settings_name_the_key(cls, flat, key):
    with pytest.raises(ValueError, match=key):
        cls.from_config(flat)
