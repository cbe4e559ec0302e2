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
