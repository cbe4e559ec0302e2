"""Single-file base checkpoints (original LDM/SGM layout) load into the pipeline castlab trains on.

The layout written by tests/helpers/ldm_checkpoint.py is checked against kohya-ss/sd-scripts ``main`` @ 48d368fa
(2026-02-16): its diffusers → original converters (library/model_util.py ``convert_unet_state_dict_to_sd`` and
``convert_vae_state_dict``, library/sdxl_model_util.py ``convert_diffusers_unet_state_dict_to_sdxl`` and
``convert_text_encoder_2_state_dict_to_sdxl``), run once (throwaway script, not part of castlab) on the real SD1.5 /
SDXL architectures on the meta device; the tensor counts and the names/shapes below are its output. (sd-scripts saves
``text_projection`` untransposed; open_clip, the real sd_xl_base_1.0 file and diffusers' loader use the transpose,
which is what the helper writes.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from ldm_checkpoint import (
    CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    open_clip_ldm_state,
    unet_ldm_key,
    unet_ldm_state,
    vae_ldm_key,
    vae_ldm_state,
    write_ldm_checkpoint,
)
from safetensors.torch import load_file
from training_pairs import concept_images, write_pair
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from castlab.config import load_config
from castlab.models.architectures import CLIP_G, SD15_UNET, SD_VAE, SDXL_UNET
from castlab.models.diffusion import load_base_pipeline, tiny_model_id
from trainers.loop import run_training

# sd-scripts' converters: tensor counts and sample (name → shape)
SDSCRIPTS_COUNTS = {"sd15_unet": 686, "sdxl_unet": 1680, "vae": 248, "clip_g": 389}
SDSCRIPTS_SHAPES = {
    "sd15_unet": {
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),  # upsampler of an up block without attention
        "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
        "output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "time_embed.2.bias": (1280,),
        "out.2.weight": (4, 320, 3, 3),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    },
    "sdxl_unet": {
        "label_emb.0.0.weight": (1280, 2816),
        "input_blocks.8.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
        "output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "input_blocks.6.0.op.weight": (640, 640, 3, 3),
        "middle_block.2.emb_layers.1.weight": (1280, 1280),
        "output_blocks.8.0.out_layers.3.weight": (320, 320, 3, 3),
    },
    "vae": {
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),  # LDM's attention projections are 1x1 convs
        "decoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
        "encoder.norm_out.weight": (512,),
    },
    "clip_g": {
        "transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "transformer.resblocks.0.mlp.c_fc.weight": (5120, 1280),
        "positional_embedding": (77, 1280),
        "ln_final.weight": (1280,),
        "text_projection": (1280, 1280),
    },
}


@pytest.fixture(scope="module")
def tiny_cfg():
    return load_config(profile="tiny")


@pytest.fixture(scope="module")
def sd15(models_workspace, tiny_cfg, tmp_path_factory):
    """The tiny SD1.5, its diffusers folder and its single-file checkpoint."""
    pipe, _ = load_base_pipeline(tiny_cfg)
    path = write_ldm_checkpoint(pipe, tmp_path_factory.mktemp("ckpt") / "tiny-sd15-pruned.safetensors")
    return pipe, tiny_model_id(tiny_cfg)[1], path


def full_cfg(path: Path, arch: str, config: Path):
    return load_config(profile="full", extra={"models": {"full": {"base_model": {
        "arch": arch, "path": str(path), "config": str(config), "local_files_only": True}}}})


def assert_same_weights(expected, got, components: tuple[str, ...]) -> None:
    for name in components:
        want, have = getattr(expected, name).state_dict(), getattr(got, name).state_dict()
        assert want.keys() == have.keys(), name
        different = [k for k in want if not torch.equal(want[k], have[k])]
        assert not different, f"{name}: {different[:5]}"


def public_config(component) -> dict:
    return {k: v for k, v in dict(component.config).items() if not k.startswith("_")}


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_layout_matches_sd_scripts_conversion():
    with torch.device("meta"):
        unets = {"sd15_unet": UNet2DConditionModel(**SD15_UNET), "sdxl_unet": UNet2DConditionModel(**SDXL_UNET)}
        vae = AutoencoderKL(**SD_VAE)
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G))
    ours = {name: {k.removeprefix(UNET_PREFIX): v for k, v in shapes(unet_ldm_state(u)).items()}
            for name, u in unets.items()}
    ours["vae"] = {k.removeprefix(VAE_PREFIX): v for k, v in shapes(vae_ldm_state(vae)).items()}
    ours["clip_g"] = shapes(open_clip_ldm_state(clip_g.state_dict(), ""))
    assert {name: len(v) for name, v in ours.items()} == SDSCRIPTS_COUNTS
    for name, table in SDSCRIPTS_SHAPES.items():
        assert {k: ours[name].get(k) for k in table} == table, name
    with pytest.raises(ValueError, match="int layers_per_block"):
        unet_ldm_key("conv_in.weight", {**SD15_UNET, "layers_per_block": [2, 2, 2, 2]})
    with pytest.raises(ValueError, match="no LDM name"):
        vae_ldm_key("encoder.mid_block.attentions.1.to_q.weight", 4)


def test_sd15_checkpoint_loads_identically(sd15):
    pipe, folder, path = sd15
    state = load_file(str(path))
    # the tiny config (down: attention, plain; up: plain, attention; one layer per block) in the LDM numbering
    names = {UNET_PREFIX + n for n in ("input_blocks.2.0.op.weight", "output_blocks.1.1.conv.weight",
                                        "output_blocks.3.1.proj_out.weight", "middle_block.2.in_layers.2.weight")}
    assert names | {CLIP_PREFIX + "text_model.encoder.layers.3.mlp.fc2.weight"} <= set(state)
    assert state[VAE_PREFIX + "decoder.mid.attn_1.k.weight"].shape == (64, 64, 1, 1)
    assert len(state) == sum(len(getattr(pipe, c).state_dict()) for c in ("unet", "vae", "text_encoder"))
    assert all(k.startswith((UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)) for k in state)

    loaded, version = load_base_pipeline(full_cfg(path, "sd15", folder))
    assert isinstance(loaded, StableDiffusionPipeline) and not isinstance(loaded, StableDiffusionXLPipeline)
    assert version == "sd15-tiny-sd15-pruned"  # load_base_pipeline: ``<family>-<file stem>``
    assert_same_weights(pipe, loaded, ("unet", "vae", "text_encoder"))
    # component configs come from the `config` folder, not diffusers' SD1.5 defaults (the tiny VAE's scaling_factor)
    for name in ("unet", "vae", "scheduler"):
        assert public_config(getattr(loaded, name)) == public_config(getattr(pipe, name)), name


def test_a_checkpoint_without_a_component_is_named(sd15, tmp_path):
    from safetensors.torch import save_file

    from castlab.errors import ConfigError

    _, folder, path = sd15
    partial = tmp_path / "no-vae.safetensors"
    save_file({k: v.contiguous() for k, v in load_file(str(path)).items() if not k.startswith(VAE_PREFIX)},
              str(partial))
    with pytest.raises(ConfigError, match=r"(?s)no-vae\.safetensors.*(no weights for vae|missing)"):
        load_base_pipeline(full_cfg(partial, "sd15", folder))


def test_sdxl_checkpoint_loads_identically(models_workspace, tiny_cfg, tmp_path):
    # diffusers' single-file loader tells SDXL's two text encoders apart by width (768 vs 1280): the tiny SDXL's
    # are both 32 wide, so here the second one (and the UNet's cross-attention / pooled inputs) is made wider
    tiny, _ = load_base_pipeline(tiny_cfg, source=str(tiny_model_id(tiny_cfg, "sdxl-tiny")[1]))
    width = 2 * int(tiny.text_encoder.config.hidden_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(
            {**tiny.text_encoder_2.config.to_dict(), "hidden_size": width, "projection_dim": width}))
        unet_config = dict(tiny.unet.config)
        unet = UNet2DConditionModel.from_config({
            **unet_config, "cross_attention_dim": int(tiny.text_encoder.config.hidden_size) + width,
            "projection_class_embeddings_input_dim": 6 * int(unet_config["addition_time_embed_dim"]) + width})
    pipe = StableDiffusionXLPipeline(vae=tiny.vae, text_encoder=tiny.text_encoder, text_encoder_2=encoder_2,
                                     tokenizer=tiny.tokenizer, tokenizer_2=tiny.tokenizer_2, unet=unet,
                                     scheduler=tiny.scheduler)
    pipe.save_pretrained(str(tmp_path / "config"), safe_serialization=True)
    path = write_ldm_checkpoint(pipe, tmp_path / "tiny_xl_base.safetensors")
    state = load_file(str(path))
    projection = "conditioner.embedders.1.model.text_projection"
    assert torch.equal(state[projection], encoder_2.text_projection.weight.T)  # open_clip applies x @ P
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in state
    assert "model.diffusion_model.label_emb.0.2.bias" in state

    loaded, version = load_base_pipeline(full_cfg(path, "sdxl", tmp_path / "config"))
    assert isinstance(loaded, StableDiffusionXLPipeline) and version == "sdxl-tiny_xl_base"
    assert_same_weights(pipe, loaded, ("unet", "vae", "text_encoder", "text_encoder_2"))


def test_training_from_a_single_file(sd15, tmp_path):
    _, folder, path = sd15
    cfg = full_cfg(path, "sd15", folder)
    toml = write_pair(tmp_path / "pair", concept_images(2), "zorvik disc", base_model=str(path), steps=2)
    result = run_training(toml, cfg, progress=False)
    assert result.base_version == "sd15-tiny-sd15-pruned" and len(result.losses) == 2
    assert all(torch.isfinite(torch.tensor(result.losses)))
    final = result.checkpoints[-1]
    assert final.name == "concept.safetensors" and final.is_file()
    lora = load_file(str(final))
    assert "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight" in lora
    assert any(k.startswith("lora_te_") for k in lora)
