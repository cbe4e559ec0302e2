"""networks.lora's module set as PEFT adapters (trainers/network.py) and the kohya codec (castlab/models/kohya.py).

Expected numbers and names come from kohya-ss/sd-scripts ``main`` @ 48d368fa (2026-02-16): networks/lora.py
``create_network`` run once (throwaway script, not part of castlab) on sd-scripts' own UNets
(library/original_unet.py for SD1.5, library/sdxl_original_unet.py for SDXL, meta device) and on CLIP-L / CLIP-bigG
text encoders, with and without ``conv_dim``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from castlab.config import load_config
from castlab.models.architectures import CLIP_G, CLIP_L, SD15_UNET, SDXL_UNET
from castlab.models.diffusion import load_base_pipeline
from castlab.models.kohya import (
    load_lora_into_pipeline,
    read_kohya_lora,
    save_kohya_lora,
    text_encoder_lora_name,
    to_kohya_state_dict,
    unet_lora_name,
)
from trainers.network import (
    NetworkSettings,
    _dropout_hook,
    add_lora,
    lora_state_dict,
    set_lora_enabled,
    text_encoder_target_modules,
    unet_conv_modules,
    unet_target_modules,
)

# sd-scripts' module counts: (without conv_dim, with conv_dim, the 3x3 convs among them) and per top-level block
SDSCRIPTS_COUNTS = {"sd15": (192, 278, 50), "sdxl": (722, 788, 38)}
SDSCRIPTS_BLOCKS = {
    "sd15": ({"down_blocks": 72, "mid_block": 12, "up_blocks": 108}, {"down_blocks": 101, "mid_block": 18,
                                                                      "up_blocks": 159}),
    "sdxl": ({"input_blocks": 248, "middle_block": 102, "output_blocks": 372},
             {"input_blocks": 270, "middle_block": 108, "output_blocks": 410}),
}
SDSCRIPTS_TEXT_ENCODER_COUNTS = {"clip_l": 72, "clip_g": 192}  # SD1.5: 72 (lora_te_); SDXL: 72 + 192
# diffusers module path → the name sd-scripts writes (all present in sd-scripts' module list)
SD15_NAMES = {
    "down_blocks.0.attentions.0.proj_in": "lora_unet_down_blocks_0_attentions_0_proj_in",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0":
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0",
    "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj":
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj",
    "down_blocks.1.resnets.0.conv_shortcut": "lora_unet_down_blocks_1_resnets_0_conv_shortcut",
    "down_blocks.0.downsamplers.0.conv": "lora_unet_down_blocks_0_downsamplers_0_conv",
    "up_blocks.0.upsamplers.0.conv": "lora_unet_up_blocks_0_upsamplers_0_conv",
    "up_blocks.0.resnets.2.time_emb_proj": "lora_unet_up_blocks_0_resnets_2_time_emb_proj",
}
SDXL_NAMES = {
    "down_blocks.1.attentions.0.proj_in": "lora_unet_input_blocks_4_1_proj_in",
    "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2":
        "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_q":
        "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q",
    "up_blocks.0.attentions.2.proj_out": "lora_unet_output_blocks_2_1_proj_out",
    "down_blocks.0.resnets.0.conv1": "lora_unet_input_blocks_1_0_in_layers_2",
    "down_blocks.0.downsamplers.0.conv": "lora_unet_input_blocks_3_0_op",
    "down_blocks.1.resnets.0.conv_shortcut": "lora_unet_input_blocks_4_0_skip_connection",
    "mid_block.resnets.1.time_emb_proj": "lora_unet_middle_block_2_emb_layers_1",
    "up_blocks.0.upsamplers.0.conv": "lora_unet_output_blocks_2_2_conv",
    "up_blocks.1.upsamplers.0.conv": "lora_unet_output_blocks_5_2_conv",
    "up_blocks.2.resnets.2.conv2": "lora_unet_output_blocks_8_0_out_layers_3",
}


def settings(**flat) -> NetworkSettings:
    return NetworkSettings.from_toml({"network_module": "networks.lora", **flat})


@pytest.fixture(scope="module")
def full_unets() -> dict[str, UNet2DConditionModel]:
    """The real SD1.5 and SDXL UNet architectures on the meta device (no weights allocated)."""
    with torch.device("meta"):
        return {"sd15": UNet2DConditionModel(**SD15_UNET), "sdxl": UNet2DConditionModel(**SDXL_UNET)}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_unet_module_set_matches_sd_scripts(full_unets, family):
    unet = full_unets[family]
    plain, with_conv, convs = SDSCRIPTS_COUNTS[family]
    names = unet_target_modules(unet)
    assert len(names) == len(set(names)) == plain
    conv_names = unet_target_modules(unet, conv_dim=4)
    assert len(conv_names) == with_conv and set(names) < set(conv_names)
    assert len(unet_conv_modules(unet, 4)) == convs and unet_conv_modules(unet, None) == []
    # conv_dim = 0: sd-scripts still adds the resnets' Linear/1x1 modules, only the 3x3 convs are skipped
    assert len(unet_target_modules(unet, conv_dim=0)) == with_conv - convs
    for modules, expected in zip((names, conv_names), SDSCRIPTS_BLOCKS[family], strict=True):
        kohya = [unet_lora_name(n, unet.config) for n in modules]
        assert {block: sum(k.startswith(f"lora_unet_{block}_") for k in kohya) for block in expected} == expected
        assert len(set(kohya)) == len(kohya)
    table = SD15_NAMES if family == "sd15" else SDXL_NAMES
    for path, kohya in table.items():
        assert path in conv_names and unet_lora_name(path, unet.config) == kohya


def test_text_encoder_module_set_matches_sd_scripts():
    with torch.device("meta"):
        clip_l = CLIPTextModel(CLIPTextConfig(**CLIP_L))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G))
    l_names, g_names = text_encoder_target_modules(clip_l), text_encoder_target_modules(clip_g)
    assert (len(l_names), len(g_names)) == (SDSCRIPTS_TEXT_ENCODER_COUNTS["clip_l"],
                                            SDSCRIPTS_TEXT_ENCODER_COUNTS["clip_g"])
    assert {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n in l_names} == {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"}
    q0 = next(n for n in l_names if n.endswith("layers.0.self_attn.q_proj"))
    assert text_encoder_lora_name(q0) == "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert text_encoder_lora_name(q0, 0, 2) == "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    fc2 = next(n for n in g_names if n.endswith("layers.31.mlp.fc2"))
    assert text_encoder_lora_name(fc2, 1, 2) == "lora_te2_text_model_encoder_layers_31_mlp_fc2"
    with pytest.raises(ValueError, match="not one networks.lora targets"):
        text_encoder_lora_name("text_projection", 1, 2)
    with pytest.raises(ValueError, match="not a CLIP text encoder"):
        text_encoder_target_modules(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------------- settings


def test_settings_defaults_and_values():
    s = settings()
    assert (s.network_dim, s.network_alpha, s.alpha, s.conv_dim, s.learning_rate) == (4, 1.0, 1.0, None, 2e-6)
    assert s.train_unet and s.train_text_encoder and s.conv_alpha_value is None
    s = settings(network_dim=16, network_alpha=0, network_args=["conv_dim=8"], network_train_unet_only=True,
                 learning_rate=1e-4, unet_lr=2e-4, text_encoder_lr=[5e-5, 5e-5], network_dropout=0.1)
    assert s.alpha == 16.0 and s.conv_alpha_value == 1.0 and not s.train_text_encoder and s.train_unet
    assert (s.unet_lr, s.text_encoder_lr, s.network_dropout) == (2e-4, 5e-5, 0.1)
    assert settings(network_args=["conv_dim=8", "conv_alpha=0"]).conv_alpha_value == 8.0
    assert settings(text_encoder_lr=[]).text_encoder_lr is None
    s = settings(network_args=["loraplus_lr_ratio=16", "loraplus_text_encoder_lr_ratio=4", "rank_dropout=0.2"])
    assert (s.loraplus_unet_lr_ratio, s.loraplus_text_encoder_lr_ratio, s.rank_dropout) == (16.0, 4.0, 0.2)
    meta = settings(network_dim=8, network_alpha=4, network_args=["conv_dim=4"]).metadata()
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == 8
    assert meta["ss_network_args"] == '{"conv_dim": "4", "dropout": null}'  # sd-scripts' json of its net kwargs


@pytest.mark.parametrize(("flat", "message"), [
    ({"network_module": "lycoris.kohya"}, "must be 'networks.lora'"),
    ({"network_module": None}, "must be 'networks.lora'"),
    ({"network_args": ["dora_wd=True"]}, "DoRA is not supported.*diffusers"),
    ({"network_args": ["block_dims=2,2"]}, "block-wise"),
    ({"network_args": ["conv_dims=4"]}, "'conv_dims' is not a networks.lora argument"),
    ({"network_args": "conv_dim=4"}, "network_args must be a list"),
    ({"network_args": ["conv_dim"]}, "key=value"),
    ({"network_args": ["conv_alpha=2"]}, "conv_alpha needs conv_dim"),
    ({"network_args": ["conv_dim=2.5"]}, "conv_dim must be an integer"),
    ({"network_args": ["rank_dropout=x"]}, "rank_dropout must be a number"),
    ({"network_args": ["module_dropout=1"]}, r"module_dropout must be in \[0.0, 1.0\)"),
    ({"learning_rate": "1e-4"}, "learning_rate must be a number"),
    ({"network_dim": 0}, "network_dim must be an integer >= 1"),
    ({"network_alpha": "x"}, "network_alpha must be a number"),
    ({"network_dropout": 1.0}, r"network_dropout must be in \[0.0, 1.0\)"),
    ({"network_train_unet_only": True, "network_train_text_encoder_only": True}, "exclude each other"),
    ({"network_train_unet_only": "yes"}, "must be true or false"),
    ({"text_encoder_lr": [1e-4, "x"]}, "text_encoder_lr must be a number"),
])
def test_settings_errors(flat, message):
    with pytest.raises(ValueError, match=message):
        NetworkSettings.from_toml({"network_module": "networks.lora", **flat})


def test_dora_is_refused_at_save_time_and_diffusers_drops_dora_scale(tmp_path):
    with pytest.raises(ValueError, match="DoRA.*diffusers"):
        to_kohya_state_dict({"a.lora_A.weight": torch.ones(1, 2), "a.lora_B.weight": torch.ones(2, 1),
                             "a.lora_magnitude_vector": torch.ones(2)}, 1.0)
    # why: diffusers' SD loader filters dora_scale out (the file would silently load as a plain LoRA)
    path = tmp_path / "dora.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{name}.lora_down.weight": torch.ones(2, 4, 1, 1), f"{name}.lora_up.weight": torch.ones(4, 2, 1, 1),
               f"{name}.alpha": torch.tensor(1.0), f"{name}.dora_scale": torch.ones(4, 1, 1, 1)}, str(path))
    state, _ = StableDiffusionPipeline.lora_state_dict(str(path))
    assert state and not any("magnitude" in k or "dora" in k for k in state)


# --------------------------------------------------------------------------------------------- small SDXL pieces


def small_sdxl(seed: int = 0) -> tuple[UNet2DConditionModel, CLIPTextModel, CLIPTextModelWithProjection]:
    """SDXL's UNet layout (text_time conditioning, linear projections, two transformer depths) and its two text
    encoders at small widths, random weights."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=[32, 64], layers_per_block=2, norm_num_groups=32,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        transformer_layers_per_block=[1, 2], attention_head_dim=[2, 4], use_linear_projection=True,
        cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32)
    te = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
          "vocab_size": 64, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**te, projection_dim=32))
    return unet, CLIPTextModel(CLIPTextConfig(**te)), te2


def randomise_lora(*models: torch.nn.Module, seed: int = 1) -> None:
    """Non-zero lora_B (PEFT inits it to zeros) so a wrong reload shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in models:
            for name, p in model.named_parameters():
                if ".lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def lora_modules(model: torch.nn.Module, adapter: str) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer) and adapter in m.lora_A}


def test_add_lora_init_groups_and_rng():
    unet, te1, te2 = small_sdxl()
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    s = settings(network_dim=4, network_alpha=2, learning_rate=1e-3, unet_lr=2e-3, text_encoder_lr=[5e-4],
                 network_args=["conv_dim=2", "loraplus_unet_lr_ratio=8"])
    out = add_lora(unet, [te1, te2], s, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)  # the init does not consume the global RNG
    assert out["lr_descriptions"] == ["textencoder", "unet", "unet plus"]
    assert [g["lr"] for g in out["param_groups"]] == [5e-4, 2e-3, 2e-3 * 8]
    assert all(".lora_B." in n for n, p in unet.named_parameters() if any(p is q for q in out["param_groups"][2]
                                                                               ["params"]))
    trainable = {id(p) for m in (unet, te1, te2) for p in m.parameters() if p.requires_grad}
    assert trainable == {id(p) for g in out["param_groups"] for p in g["params"]}
    assert lora_modules(unet, "default") == set(out["unet_modules"]) == set(unet_target_modules(small_sdxl()[0], 2))
    assert [len(m) for m in out["text_encoder_modules"]] == [12, 12]
    state = lora_state_dict(unet)
    assert all(not v.any() for k, v in state.items() if k.endswith("lora_B.weight"))  # sd-scripts: lora_up zeros
    assert all(v.any() for k, v in state.items() if k.endswith("lora_A.weight"))
    conv = unet_conv_modules(small_sdxl()[0], 2)
    assert all(state[f"{n}.lora_A.weight"].shape[0] == (2 if n in conv else 4) for n in out["unet_modules"])
    again = small_sdxl()[0]
    add_lora(again, [], s, seed=7)  # no text encoders this time: the UNet's init is the same
    assert all(torch.equal(v, lora_state_dict(again)[k]) for k, v in state.items())
    assert not torch.equal(lora_state_dict(te1)["encoder.layers.0.mlp.fc1.lora_A.weight"],
                            lora_state_dict(te2)["text_model.encoder.layers.0.mlp.fc1.lora_A.weight"])


def test_add_lora_only_flags_and_zero_lr():
    unet, te1, te2 = small_sdxl()
    out = add_lora(unet, [te1, te2], settings(network_train_unet_only=True), seed=0)
    assert out["lr_descriptions"] == ["unet"] and not lora_modules(te1, "default") and out["text_encoder_modules"] == [
        [], []]
    unet, te1, te2 = small_sdxl()
    out = add_lora(unet, [te1, te2], settings(network_train_text_encoder_only=True, learning_rate=1e-4), seed=0)
    assert out["lr_descriptions"] == ["textencoder"] and not lora_modules(unet, "default")
    unet, te1, te2 = small_sdxl()
    out = add_lora(unet, [te1, te2], settings(text_encoder_lr=0, learning_rate=1e-4), seed=0)
    assert out["lr_descriptions"] == ["unet"]  # sd-scripts drops a group whose lr is 0
    assert lora_modules(te1, "default") and not any(p.requires_grad for p in te1.parameters())
    with pytest.raises(ValueError, match="nothing to train"):
        add_lora(*small_sdxl()[:1], [], settings(learning_rate=0), seed=0)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        unet_target_modules(unet)


def test_dropout_hook_follows_lora_module():
    layer = torch.nn.Linear(2, 2)
    lx = torch.ones(3, 5, 8)
    hook = _dropout_hook(None, 0.5, None)
    layer.eval()
    assert hook(layer, (), lx) is lx
    layer.train()
    torch.manual_seed(0)
    out = hook(layer, (), lx)
    assert set(out.unique().tolist()) == {0.0, 2.0}  # rank dropout: whole ranks dropped, scaled by 1 / (1 - p)
    assert torch.equal(out[:, 0], out[:, 1])  # the mask is per sample and rank, shared over tokens
    assert not _dropout_hook(None, None, 0.999999)(layer, (), lx).any()  # module dropout skips the LoRA
    conv = _dropout_hook(None, 0.5, None)(layer, (), torch.ones(2, 8, 3, 3))
    assert torch.equal(conv[..., 0, 0], conv[..., 2, 1])


# ------------------------------------------------------------------------------------ diffusers reload equality


def test_sdxl_file_reloads_in_diffusers(tmp_path):
    unet, te1, te2 = small_sdxl()
    base = copy.deepcopy((unet, te1, te2))
    s = settings(network_dim=4, network_alpha=3, network_args=["conv_dim=2", "conv_alpha=1.5"])
    add_lora(unet, [te1, te2], s, seed=0)
    randomise_lora(unet, te1, te2)
    path = save_kohya_lora(lora_state_dict(unet), tmp_path / "xl.safetensors", s.alpha, {"ss_network_dim": 4},
                           text_encoder_states=[lora_state_dict(te1), lora_state_dict(te2)],
                           conv_alpha=s.conv_alpha_value, unet_config=unet.config)
    state, _ = read_kohya_lora(path)
    modules = {k.rsplit(".", 2)[0] if ".lora_" in k else k.rsplit(".", 1)[0] for k in state}
    unet_names = {unet_lora_name(n, unet.config) for n in unet_target_modules(base[0], 2)}
    te_names = {text_encoder_lora_name(n, i, 2) for i, t in enumerate(base[1:]) for n in text_encoder_target_modules(t)}
    assert modules == unet_names | te_names and len(state) == 3 * len(modules)
    assert any(n.startswith("lora_unet_input_blocks_") for n in modules)  # SGM names, as sd-scripts writes SDXL
    assert {n[:9] for n in te_names} == {"lora_te1_", "lora_te2_"}
    # every key is one diffusers' SDXL kohya loader maps (it raises on any key it cannot rename)
    mapped, alphas = StableDiffusionXLPipeline.lora_state_dict(str(path), unet_config=base[0].config)
    assert len(mapped) == 2 * len(modules) and len(alphas) == len(modules)

    pipe = StableDiffusionXLPipeline(vae=None, text_encoder=base[1], text_encoder_2=base[2], tokenizer=None,
                                     tokenizer_2=None, unet=base[0], scheduler=None)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    load_lora_into_pipeline(pipe, path, adapter_name="x")
    assert lora_modules(pipe.unet, "x") == set(unet_target_modules(small_sdxl()[0], 2))
    assert len(lora_modules(pipe.text_encoder, "x")) == len(lora_modules(pipe.text_encoder_2, "x")) == 12
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 64, (2, 8), generator=gen)
    latents, cond = torch.randn(2, 4, 16, 16, generator=gen), {"time_ids": torch.randn(2, 6, generator=gen)}
    with torch.no_grad():
        for trained, loaded in ((te1, pipe.text_encoder), (te2, pipe.text_encoder_2)):
            assert torch.allclose(trained(ids).last_hidden_state, loaded(ids).last_hidden_state, atol=1e-5)
        hidden = torch.cat([te1(ids).last_hidden_state, te2(ids).last_hidden_state], dim=-1)
        cond["text_embeds"] = te2(ids).text_embeds
        expected = unet(latents, 500, hidden, added_cond_kwargs=cond).sample
        reloaded = pipe.unet(latents, 500, hidden, added_cond_kwargs=cond).sample
        set_lora_enabled([unet], False)
        plain = unet(latents, 500, hidden, added_cond_kwargs=cond).sample
    assert torch.allclose(reloaded, expected, atol=1e-5, rtol=1e-4)
    assert (plain - expected).abs().max() > 100 * (reloaded - expected).abs().max()


@pytest.fixture(scope="module")
def tiny_cfg():
    return load_config(profile="tiny")


def test_sd15_file_reloads_in_diffusers(models_workspace, tiny_cfg, tmp_path):
    pipe, _ = load_base_pipeline(tiny_cfg)
    fresh, _ = load_base_pipeline(tiny_cfg)
    s = settings(network_dim=4, network_alpha=3, network_args=["conv_dim=2", "conv_alpha=1.5"])
    out = add_lora(pipe.unet, [pipe.text_encoder], s, seed=0)
    assert any("proj_in" in n for n in out["unet_modules"]) and any("ff.net.2" in n for n in out["unet_modules"])
    randomise_lora(pipe.unet, pipe.text_encoder)
    path = save_kohya_lora(lora_state_dict(pipe.unet), tmp_path / "sd15.safetensors", s.alpha, s.metadata(),
                           text_encoder_states=[lora_state_dict(pipe.text_encoder)],
                           conv_alpha=s.conv_alpha_value, unet_config=pipe.unet.config)
    state, meta = read_kohya_lora(path)
    assert meta["ss_network_module"] == "networks.lora"
    conv = {unet_lora_name(n) for n in unet_conv_modules(fresh.unet, 2)}
    alphas = {k[: -len(".alpha")]: v.item() for k, v in state.items() if k.endswith(".alpha")}
    assert conv and conv < set(alphas) and all(alphas[n] == (1.5 if n in conv else 3.0) for n in alphas)
    assert {"lora_te_text_model_encoder_layers_0_self_attn_q_proj", "lora_unet_down_blocks_0_attentions_0_proj_in",
            "lora_unet_down_blocks_0_downsamplers_0_conv"} < set(alphas)

    load_lora_into_pipeline(fresh, path)
    assert lora_modules(fresh.unet, "sd15") == set(out["unet_modules"])
    assert lora_modules(fresh.text_encoder, "sd15") == set(out["text_encoder_modules"][0])
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49406, (2, 12), generator=gen)
    latents = torch.randn(2, 4, 16, 16, generator=gen)
    with torch.no_grad():
        hidden = pipe.text_encoder(ids).last_hidden_state
        assert torch.allclose(fresh.text_encoder(ids).last_hidden_state, hidden, atol=1e-5)
        expected = pipe.unet(latents, 300, hidden).sample
        reloaded = fresh.unet(latents, 300, fresh.text_encoder(ids).last_hidden_state).sample
        set_lora_enabled([pipe.unet, pipe.text_encoder], False)
        plain = pipe.unet(latents, 300, pipe.text_encoder(ids).last_hidden_state).sample
    assert torch.allclose(reloaded, expected, atol=1e-5, rtol=1e-4)
    assert (plain - expected).abs().max() > 100 * (reloaded - expected).abs().max()


def test_fp16_file_keeps_exact_float32_alphas(tmp_path):
    unet = small_sdxl()[0]
    add_lora(unet, [], settings(network_dim=4, network_alpha=0.1, network_args=["conv_dim=2", "conv_alpha=0.3"]), 0)
    path = save_kohya_lora(lora_state_dict(unet), tmp_path / "a.safetensors", 0.1, {}, "fp16", conv_alpha=0.3,
                           unet_config=unet.config)
    state = load_file(str(path))
    alphas = {k: v for k, v in state.items() if k.endswith(".alpha")}
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in alphas.values())
    assert alphas["lora_unet_input_blocks_3_0_op.alpha"] == torch.tensor(0.3)
    assert alphas["lora_unet_input_blocks_4_1_proj_in.alpha"] == torch.tensor(0.1)
    assert all(v.dtype == torch.float16 for k, v in state.items() if not k.endswith(".alpha"))


def test_codec_errors(tmp_path):
    conv = {"down_blocks.0.resnets.0.conv1.lora_A.weight": torch.ones(2, 4, 3, 3),
            "down_blocks.0.resnets.0.conv1.lora_B.weight": torch.ones(4, 2, 1, 1)}
    with pytest.raises(ValueError, match="pass conv_alpha"):
        to_kohya_state_dict(conv, 1.0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        to_kohya_state_dict(conv, 1.0, conv_alpha=0)
    with pytest.raises(ValueError, match="lacks lora_A or lora_B"):
        to_kohya_state_dict({"a.lora_A.weight": torch.ones(1, 2)}, 1.0)
    with pytest.raises(ValueError, match="not a PEFT LoRA tensor"):
        to_kohya_state_dict({"a.weight": torch.ones(1, 2)}, 1.0)
    with pytest.raises(ValueError, match="nothing to save"):
        to_kohya_state_dict({}, 1.0, text_encoder_states=[{}])
    with pytest.raises(ValueError, match="no SGM"):
        unet_lora_name("conv_in", {"addition_embed_type": "text_time", "layers_per_block": 2})
    assert unet_lora_name("conv_in") == "lora_unet_conv_in"  # SD1.x names are diffusers' paths
    # a text-encoder-only LoRA is still a kohya file the readers accept
    te = {"encoder.layers.0.mlp.fc1.lora_A.weight": torch.ones(1, 2), "encoder.layers.0.mlp.fc1.lora_B.weight":
          torch.ones(2, 1)}
    path = save_kohya_lora(None, tmp_path / "te.safetensors", 2.0, {}, text_encoder_states=[te])
    assert set(read_kohya_lora(Path(path))[0]) == {f"lora_te_text_model_encoder_layers_0_mlp_fc1.{k}"
                                                   for k in ("lora_down.weight", "lora_up.weight", "alpha")}
