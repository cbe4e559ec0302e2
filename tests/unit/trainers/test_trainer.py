import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from castlab.config import load_config
from castlab.dataset.assemble import assemble_character
from castlab.errors import ConfigError, InputError
from castlab.models.diffusion import encode_prompts, load_base_pipeline
from castlab.models.kohya import load_lora_into_pipeline, read_kohya_lora
from trainers.lora import read_training_config, run_training, train_lora

RANK, ALPHA, STEPS = 8, 3.0, 4  # alpha != rank: the exported .alpha tensors must carry the real alpha


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny", extra={
        "dataset": {"resolution": 128, "val_fraction": 0.0},
        "training": {"kohya": {"network_dim": RANK, "network_alpha": ALPHA, "max_train_steps": STEPS,
                               "save_every_n_steps": 2, "learning_rate": 1e-2, "train_batch_size": 2}},
    })


@pytest.fixture(scope="module")
def dataset(models_workspace, cfg, tmp_path_factory) -> dict:
    """Four generated RGBA crops over two shots → assembled dataset + training TOML."""
    folder = tmp_path_factory.mktemp("crops")
    rows = []
    for i in range(4):
        yy, xx = np.mgrid[:48, :32]
        crop = np.zeros((48, 32, 4), np.uint8)
        crop[..., i % 3] = 255
        crop[..., 3] = (((xx - 16) / 14) ** 2 + ((yy - 24) / 22) ** 2 < 1) * 255
        Image.fromarray(crop, "RGBA").save(folder / f"c{i}.png")
        rows.append({"row_id": f"inst:v:{i}:0", "crop_path": str(folder / f"c{i}.png"),
                     "shot_id": f"s{i // 2}", "video_id": "v", "identity": "hero", "run": "runs/r"})
    return assemble_character("hero", rows, tmp_path_factory.mktemp("ds") / "dataset", cfg)


@pytest.fixture(scope="module")
def trained(dataset, cfg):
    return run_training(Path(dataset["training_toml"]), cfg, progress=False)


def unet_out(pipe, prompt: str = "cstlb character, 3d animated character") -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    latent = torch.randn(1, 4, 32, 32, generator=gen)
    with torch.no_grad():
        hidden = encode_prompts(pipe, [prompt], 2)
        return pipe.unet(latent, torch.tensor([437]), hidden).sample


def test_training_writes_kohya_checkpoints(trained, dataset):
    assert len(trained.losses) == STEPS and all(np.isfinite(trained.losses))
    names = [p.name for p in trained.checkpoints]
    assert names == ["castlab_hero-step00000002.safetensors", "castlab_hero.safetensors"]  # kohya's names
    state, meta = read_kohya_lora(trained.checkpoints[-1])
    assert state and all(k.startswith("lora_unet_") for k in state)
    modules = {k.split(".")[0] for k in state}
    for kind in ("attn1_to_q", "attn2_to_out_0", "proj_in", "proj_out", "ff_net_0_proj", "ff_net_2"):
        assert any(m.endswith(kind) for m in modules), f"networks.lora puts LoRA on {kind} too"
    for key in ("ss_datasets", "ss_tag_frequency", "ss_dataset_dirs", "sshs_model_hash", "sshs_legacy_hash",
                "modelspec.architecture", "ss_optimizer", "ss_network_module", "ss_num_train_images"):
        assert meta.get(key), key
    assert json.loads(meta["ss_tag_frequency"])  # sd-scripts' JSON shapes
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    alphas = {k: v for k, v in state.items() if k.endswith(".alpha")}
    downs = [k for k in state if k.endswith(".lora_down.weight")]
    assert len(alphas) == len(downs) > 0
    assert all(float(v) == ALPHA for v in alphas.values())
    assert all(state[k].shape[0] == RANK for k in downs)
    assert meta["ss_network_dim"] == str(RANK) and float(meta["ss_network_alpha"]) == ALPHA
    assert meta["ss_steps"] == str(STEPS) and meta["ss_clip_skip"] == "2"
    assert meta["castlab_model_version"].startswith("tiny-lora-")
    assert meta["castlab_base_model_version"] == trained.base_version
    assert trained.base_version.startswith("tiny-")
    settings = read_training_config(Path(dataset["training_toml"]))
    assert meta["castlab_base_model"] == settings["pretrained_model_name_or_path"]
    assert meta["castlab_class_tokens"] == dataset["class_tokens"]  # evaluation prompts use the trained trigger
    log = json.loads((trained.checkpoints[-1].parent / "castlab_hero-training.json").read_text())
    assert log["losses"] == trained.losses and log["steps_per_second"] > 0
    folder = trained.checkpoints[-1].parent
    with Image.open(folder / "castlab_hero-loss.png") as curve:
        assert curve.size[0] > 300
    assert "castlab_hero: training loss" in (folder / "castlab_hero-training.md").read_text() or \
        "Training castlab_hero" in (folder / "castlab_hero-training.md").read_text()


def test_reloaded_checkpoint_reproduces_the_trained_unet(trained, cfg, tmp_path):
    expected = unet_out(trained.pipe)
    fresh, version = load_base_pipeline(cfg)
    assert version == trained.base_version
    base = unet_out(fresh)
    load_lora_into_pipeline(fresh, trained.checkpoints[-1])
    reloaded = unet_out(fresh)
    assert torch.allclose(reloaded, expected, atol=1e-5, rtol=1e-4)
    gap = (base - expected).abs().max().item()
    assert gap > 1e-3 and gap > 100 * (reloaded - expected).abs().max().item()

    # the alpha trap: alpha written as rank (what convert_state_dict_to_kohya does) reloads differently
    state, meta = read_kohya_lora(trained.checkpoints[-1])
    trap = {k: (torch.tensor(float(RANK)) if k.endswith(".alpha") else v) for k, v in state.items()}
    save_file(trap, str(tmp_path / "trap.safetensors"), metadata=meta)
    fresh.unload_lora_weights()
    assert torch.allclose(unet_out(fresh), base)
    load_lora_into_pipeline(fresh, tmp_path / "trap.safetensors")
    assert not torch.allclose(unet_out(fresh), expected, atol=1e-5, rtol=1e-4)


def test_training_is_seeded(trained, dataset, cfg, tmp_path):
    toml = Path(dataset["training_toml"])
    text = toml.read_text().replace(str(Path(dataset["out_dir"]) / "checkpoints"), str(tmp_path / "again"))
    (tmp_path / "training.toml").write_text(text)
    again = run_training(tmp_path / "training.toml", cfg, progress=False)
    assert again.losses == trained.losses
    a, b = load_file(str(trained.checkpoints[-1])), load_file(str(again.checkpoints[-1]))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_overwrite_checkpoints(trained, dataset, cfg):
    with pytest.raises(InputError, match="pass --force"):
        train_lora(Path(dataset["training_toml"]), cfg, progress=False)


def test_bad_training_toml(tmp_path, dataset, cfg):
    bad = tmp_path / "bad.toml"
    bad.write_text('[training_arguments]\noutput_name = "x"\n')
    with pytest.raises(InputError, match="lacks pretrained_model_name_or_path"):
        train_lora(bad, cfg)
    bad.write_text("not = [valid")
    with pytest.raises(InputError, match="not valid TOML"):
        train_lora(bad, cfg)
    with pytest.raises(InputError, match="does not exist"):
        train_lora(tmp_path / "missing.toml", cfg)
    foreign = tmp_path / "foreign.toml"
    text = Path(dataset["training_toml"]).read_text()
    base = read_training_config(Path(dataset["training_toml"]))["pretrained_model_name_or_path"]
    foreign.write_text(text.replace(base, "someone/other-model")
                       .replace(str(Path(dataset["out_dir"]) / "checkpoints"), str(tmp_path / "out")))
    with pytest.raises(ConfigError, match="base model"):
        train_lora(foreign, cfg)
