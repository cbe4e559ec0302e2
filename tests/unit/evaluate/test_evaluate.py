import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from castlab.config import load_config
from castlab.errors import InputError
from castlab.evaluate.stage import (
    GRID_NAME,
    REPORT_NAME,
    evaluate_checkpoints,
    evaluation_prompts,
    with_trained_trigger,
)
from castlab.models.diffusion import load_base_pipeline
from castlab.models.kohya import save_kohya_lora


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny", extra={"evaluation": {"steps": 2}})


def random_lora(cfg, path: Path, seed: int, strength: float) -> Path:
    """A kohya LoRA with random (non-zero) weights on the tiny base UNet: no training needed."""
    pipe, version = load_base_pipeline(cfg)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    state = {k: torch.randn_like(v) * strength for k, v in get_peft_model_state_dict(pipe.unet).items()}
    meta = {"ss_network_dim": 4, "ss_network_alpha": 2.0, "ss_steps": seed, "ss_clip_skip": 2,
            "castlab_profile": "tiny", "castlab_model_version": f"tiny-lora-test-{seed}@{version}",
            "castlab_base_model_version": version}
    return save_kohya_lora(state, path, 2.0, meta)


@pytest.fixture(scope="module")
def checkpoints(models_workspace, cfg, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    return [random_lora(cfg, folder / "lora-a.safetensors", 1, 0.5),
            random_lora(cfg, folder / "lora-b.safetensors", 2, 0.5)]


@pytest.fixture(scope="module")
def report(checkpoints, cfg, tmp_path_factory) -> dict:
    return evaluate_checkpoints(checkpoints, tmp_path_factory.mktemp("eval") / "out", cfg)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_report_and_files(report, cfg):
    out = Path(report["out_dir"])
    saved = json.loads((out / REPORT_NAME).read_text())
    prompts, seeds = evaluation_prompts(cfg), cfg.evaluation.seeds
    assert saved["prompts"] == prompts and saved["seeds"] == seeds
    assert all("cstlb character" in p and "{" not in p for p in prompts)
    assert saved["profile"] == "tiny"
    assert all(v.startswith("tiny-") for v in saved["model_versions"].values())
    rows = [saved["baseline"]] + saved["checkpoints"]
    assert [r["name"] for r in rows] == ["base", "lora-a", "lora-b"]
    for row in rows:
        assert len(row["images"]) == len(prompts) * len(seeds)
        scores = [im["clip_t"] for im in row["images"]]
        assert row["clip_t_mean"] == pytest.approx(float(np.mean(scores)))
        for im in row["images"]:
            assert im["file"] == f"{row['name']}/{im['prompt_index']}_{im['seed']}.png"
            assert pixels(out / im["file"]).shape == (64, 64, 3)
    for row in saved["checkpoints"]:
        assert row["model_version"].startswith("tiny-lora-")
    means = {r["name"]: r["clip_t_mean"] for r in saved["checkpoints"]}
    assert saved["ranking"] == sorted(means, key=lambda n: -means[n])
    assert [r["rank"] for r in sorted(saved["checkpoints"], key=lambda r: r["rank"])] == [1, 2]
    assert Path(saved["best"]).stem == saved["ranking"][0]
    grid = Image.open(out / GRID_NAME)
    assert grid.width > 4 * 128 and grid.height > 3 * 128


def test_same_seed_same_checkpoint_same_image(report, checkpoints, cfg, tmp_path):
    again = evaluate_checkpoints(checkpoints[:1], tmp_path / "again", cfg)
    first, second = Path(report["out_dir"]), Path(again["out_dir"])
    for row in ("base", "lora-a"):
        for png in sorted((first / row).glob("*.png")):
            assert np.array_equal(pixels(png), pixels(second / row / png.name)), png.name
    # different seed, or different LoRA → different image
    assert not np.array_equal(pixels(first / "lora-a" / "0_1.png"), pixels(first / "lora-a" / "0_2.png"))
    assert not np.array_equal(pixels(first / "lora-a" / "0_1.png"), pixels(first / "base" / "0_1.png"))
    assert not np.array_equal(pixels(first / "lora-a" / "0_1.png"), pixels(first / "lora-b" / "0_1.png"))
    assert again["checkpoints"][0]["clip_t_mean"] == report["checkpoints"][0]["clip_t_mean"]


def test_refuses_to_overwrite_and_bad_checkpoints(report, checkpoints, cfg, tmp_path):
    with pytest.raises(InputError, match="pass --force"):
        evaluate_checkpoints(checkpoints, Path(report["out_dir"]), cfg)
    with pytest.raises(InputError, match="no checkpoints"):
        evaluate_checkpoints([], tmp_path / "none", cfg)
    with pytest.raises(InputError, match="LoRA checkpoint does not exist"):
        evaluate_checkpoints([tmp_path / "missing.safetensors"], tmp_path / "x", cfg)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable safetensors"):
        evaluate_checkpoints([junk], tmp_path / "y", cfg)
    with pytest.raises(InputError, match="unique"):
        evaluate_checkpoints([checkpoints[0], checkpoints[0]], tmp_path / "z", cfg)
    with pytest.raises(InputError, match="tiny profile"):
        evaluate_checkpoints(checkpoints, tmp_path / "full", load_config(profile="full"))


def test_prompts_use_the_trigger_the_checkpoints_were_trained_with(cfg):
    trained = with_trained_trigger(cfg, [{"castlab_class_tokens": "godum rabbit"}] * 2)
    assert all(p.startswith("godum rabbit, ") for p in evaluation_prompts(trained))
    assert "checkpoint metadata" in trained.origin("dataset.trigger_token")
    for metas in ([{}], [{"castlab_class_tokens": "a x"}, {"castlab_class_tokens": "b x"}],
                  [{"castlab_class_tokens": "a x | b y"}], [{"castlab_class_tokens": "lonely"}]):
        assert evaluation_prompts(with_trained_trigger(cfg, metas)) == evaluation_prompts(cfg)
