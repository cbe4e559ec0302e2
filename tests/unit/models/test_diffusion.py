import pytest
import torch

from castlab.config import load_config
from castlab.errors import ConfigError
from castlab.models.diffusion import (
    MARKER,
    base_model_source,
    encode_prompts,
    load_base_pipeline,
    tiny_model_id,
    training_resolution,
)


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


def test_tiny_pipeline_is_saved_once_and_reloaded_identically(models_workspace, cfg):
    version, folder = tiny_model_id(cfg)
    pipe, got = load_base_pipeline(cfg)
    assert got == version and version.startswith("tiny-sd15-")
    assert folder.parent == models_workspace / "models" and (folder / MARKER).is_file()
    assert list(folder.glob("unet/*.safetensors")) and not list(folder.rglob("*.bin"))
    assert base_model_source(cfg) == str(folder)
    stamp = (folder / "unet").stat().st_mtime_ns
    again, _ = load_base_pipeline(cfg)
    assert (folder / "unet").stat().st_mtime_ns == stamp
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_another_seed_is_another_model(models_workspace, cfg):
    other = load_config(profile="tiny", extra={"seed": int(cfg.seed) + 1})
    assert tiny_model_id(other)[0] != tiny_model_id(cfg)[0]


def test_render_and_clip_skip(models_workspace, cfg):
    pipe, _ = load_base_pipeline(cfg)
    size = training_resolution(cfg)
    assert size == cfg.models.tiny.base_model.resolution
    with torch.no_grad():
        last = encode_prompts(pipe, ["cstlb character"], 1)
        reference, _ = pipe.encode_prompt("cstlb character", "cpu", 1, False)
        assert torch.allclose(last, reference)
        penultimate = encode_prompts(pipe, ["cstlb character"], 2)
        assert penultimate.shape == last.shape and not torch.allclose(penultimate, last)
        image = pipe(prompt_embeds=penultimate, negative_prompt_embeds=encode_prompts(pipe, [""], 2),
                     height=size, width=size, num_inference_steps=2,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (size, size)
    with pytest.raises(ConfigError, match="clip_skip"):
        encode_prompts(pipe, ["x"], 99)


def test_full_profile_needs_a_base_model(tmp_path):
    with pytest.raises(ConfigError, match=r"models\.full\.base_model\.path"):
        load_base_pipeline(load_config(profile="full"))
    cfg = load_config(profile="full", extra={"models": {"full": {"base_model": {"path": str(tmp_path)}}}})
    with pytest.raises(ConfigError, match="not a diffusers folder"):
        load_base_pipeline(cfg)


def test_tiny_refuses_a_foreign_base_model(models_workspace, cfg):
    with pytest.raises(ConfigError, match="tiny profile's base model"):
        load_base_pipeline(cfg, source="runwayml/stable-diffusion-v1-5")


def test_tiny_sdxl_is_the_sdxl_architecture(models_workspace, cfg):
    from castlab.models.diffusion import encode_prompts_sdxl, is_sdxl, sdxl_time_ids

    version, folder = tiny_model_id(cfg, "sdxl-tiny")
    assert version.startswith("tiny-sdxl-") and folder.name.startswith("sdxl-tiny-")
    assert base_model_source(cfg, "sdxl-tiny") == str(folder) != base_model_source(cfg)
    pipe, got = load_base_pipeline(cfg, source=str(folder))  # a training TOML naming the tiny SDXL selects it
    assert got == version and is_sdxl(pipe) and type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.unet.config.addition_embed_type == "text_time"
    again, _ = load_base_pipeline(cfg, source=str(folder))
    a, b = pipe.unet.state_dict(), again.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    hidden, pooled = encode_prompts_sdxl(pipe, ["a cat", "a dog"])
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert hidden.shape == (2, 77, width) == (2, 77, pipe.unet.config.cross_attention_dim)
    assert pooled.shape == (2, pipe.text_encoder_2.config.projection_dim)
    assert not torch.allclose(hidden[0], hidden[1])
    ids = torch.stack([sdxl_time_ids((200, 100), (0, 4), (64, 64))] * 2)
    assert ids[0].tolist() == [100, 200, 4, 0, 64, 64]  # (h, w) order, as SDXL expects
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = pipe.unet(latents, torch.tensor([10, 500]), hidden,
                        added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
        other = pipe.unet(latents, torch.tensor([10, 500]), hidden,
                          added_cond_kwargs={"text_embeds": pooled, "time_ids": ids * 2}).sample
    assert out.shape == latents.shape and not torch.allclose(out, other)  # size conditioning reaches the UNet
    with pytest.raises(ConfigError, match="encode_prompts_sdxl"):
        encode_prompts(pipe, ["a cat"], 1)


def test_single_file_checkpoint_needs_a_config_offline(tmp_path):
    broken = tmp_path / "community_model.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(broken))
    cfg = load_config(profile="full", extra={"models": {"full": {"base_model": {"path": str(broken), "arch": "sdxl"}}}})
    with pytest.raises(ConfigError, match=r"(?s)single-file checkpoint .*as SDXL.*models\.full\.base_model\.config"):
        load_base_pipeline(cfg)
