"""One tiny run per dataset type through prepare → dataset → train → evaluate: the real tiny models (open_clip,
Qwen2-VL, SD1.5), the real trainer and the type's own evaluation suite; the trained LoRA changes what the base
model renders for the type's prompts (weight 1 against the base model, same seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from run_builder import character_run
from scene_run import scene_run

from castlab.config import CONFIGS_DIR, load_config
from castlab.dataset import run as build_datasets
from castlab.evaluate.stage import evaluate_checkpoints
from castlab.typed.stage import load_models, prepare
from trainers.lora import run_training


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny", extra={
        "dataset": {"resolution": 128, "val_fraction": 0.0},
        "backgrounds": {"max_character_score": 1.0},  # tiny open_clip scores noise: only the detectors look
        "models": {"tiny": {"embedder": {"max_similarity": 1.0}}},  # and finds every set alike
        "training": {"kohya": {"network_dim": 4, "network_alpha": 4, "max_train_steps": 6, "save_every_n_steps": 3,
                               "learning_rate": 2e-2, "train_batch_size": 2}},
        "evaluation": {"steps": 2, "seeds": [1, 2], "bootstrap": 30, "caption_prompts": 1, "lora_weights": [1.0],
                       "gates": {"max_drift": 1.0, "max_leakage_gain": 1.0, "max_memorisation": 1.0,
                                 "min_diversity_ratio": 0.0}},
    })


def source_run(run: Path, name: str) -> None:
    """Six candidates of type `name`: frames of two sets, or reviewed instances (with a face box for expression)."""
    if name in ("pose", "expression"):
        face = {"face_bbox": [100, 54, 156, 110]}
        character_run(run, [{"identity": "Bo", "box": (48, 176, 96, 160), "shot": f"s{k % 2}", "extra": face}
                            for k in range(6)], size=(192, 256), video=f"e2e-{name}")
    else:
        scene_run(run, scenes=2, per_scene=3, video=f"e2e-{name}")


@pytest.mark.parametrize("name", ["background", "style", "lighting", "pose", "expression"])
def test_prepare_dataset_train_evaluate(name, models_workspace, cfg, tmp_path):
    run = models_workspace / "runs" / f"e2e-{name}"
    source_run(run, name)
    prepared = prepare(run, cfg, name, load_models(cfg, name))
    assert prepared["ok"] == 6
    built = build_datasets([run], cfg, tmp_path / "datasets", dataset_type=name)["datasets"][name]
    meta = json.loads(Path(built["metadata"]).read_text())
    assert meta["type"] == name and meta["profile"] == "tiny"
    assert built["images"] >= (6 if name != "pose" else 1)  # pose balances its (random tiny) categories

    trained = run_training(Path(built["training_toml"]), cfg, progress=False)
    assert len(trained.checkpoints) == 2
    report = evaluate_checkpoints(trained.checkpoints, tmp_path / "eval", cfg)
    suite = yaml.safe_load((CONFIGS_DIR / "evaluation" / f"{name}.yaml").read_text())
    ids = {s["prompt_id"] for s in report["suite"]["prompts"]}
    assert {f"identity/{k}" for k in suite["identity"]} <= ids  # the type's own suite (evaluation.suite: auto)
    assert Path(report["suite"]["file"]).name == f"{name}.yaml"
    assert all(s["prompt"].startswith(meta["class_tokens"]) for s in report["suite"]["prompts"]
               if s["family"] == "identity")
    assert report["recommended"] in {Path(c).stem for c in trained.checkpoints}

    out = Path(report["out_dir"])
    final = Path(trained.checkpoints[-1]).stem
    diffs = []
    for render in (r for r in report["renders"] if r["row"].startswith(final) and r["family"] == "identity"):
        base = next(b for b in report["renders"] if b["row"] == "base" and b["prompt_id"] == render["prompt_id"]
                    and b["seed"] == render["seed"])
        a, b = (np.asarray(Image.open(out / x["file"]).convert("RGB"), np.float32) for x in (render, base))
        diffs.append(float(np.abs(a - b).mean()))
    assert diffs and min(diffs) > 1.0, diffs  # the LoRA at weight 1 changes every identity render
