"""Checkpoint evaluation end to end on the tiny profile: a character dataset (and a rival character's), a tiny LoRA
trained on it (untrained, early, final checkpoints), the suite rendered for the base model and every checkpoint at
two weights, scored, gated, ranked, and the outputs written."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lora_checkpoints import write_dataset
from PIL import Image
from safetensors.torch import load_file, save_file
from training_pairs import RES, concept_images, write_pair

from castlab.config import load_config
from castlab.errors import ConfigError, InputError
from castlab.evaluate.ranking import STATUSES
from castlab.evaluate.render import RenderSettings, render_suite
from castlab.evaluate.stage import COMPARISON_NAME, REPORT_NAME, evaluate_checkpoints, registry_entry
from castlab.evaluate.suite import PromptSpec, scoring_text, suite_prompts
from castlab.models.kohya import read_kohya_metadata

SMALL_SUITE = """
identity:
  front: "{trigger} {class_word}, front view"
  profile: "{trigger} {class_word}, side view"
editability:
  place: "{trigger} {class_word} on a beach"
leakage:
  class_word: "a {class_word}, front view"
"""


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    suite = tmp_path_factory.mktemp("suite") / "small.yaml"
    suite.write_text(SMALL_SUITE)
    return load_config(profile="tiny", extra={"evaluation": {
        "suite": str(suite), "steps": 2, "seeds": [1, 2], "bootstrap": 50, "caption_prompts": 1,
        "identity": {"region": "image"}}})


@pytest.fixture(scope="module")
def trained(models_workspace, cfg, tmp_path_factory):
    """(hero dataset folder, [untrained, early, final] checkpoints) trained on the hero's red discs."""
    from castlab.models.diffusion import base_model_source, load_base_pipeline

    load_base_pipeline(cfg)
    root = tmp_path_factory.mktemp("datasets")
    hero = write_dataset(root / "zorvik", "Zorvik", "zorvik", [i.convert("RGB") for i in concept_images(5)])
    blue = [Image.fromarray(np.asarray(i.convert("RGB"))[..., ::-1].copy()) for i in concept_images(5)]
    write_dataset(root / "blubo", "Blubo", "blubo", blue)
    toml = write_pair(hero, [i.convert("RGB") for i in concept_images(4)], "zorvik disc",
                      base_model=base_model_source(cfg), steps=20,
                      extra={"learning_rate": 1e-2, "network_alpha": 8, "save_every_n_steps": 10})
    from trainers.loop import run_training

    result = run_training(toml, cfg, progress=False)
    early, final = result.checkpoints
    state = load_file(str(final))
    meta = read_kohya_metadata(final)
    untrained = final.with_name("concept-untrained.safetensors")
    save_file({k: torch.zeros_like(v) if "lora_up" in k else v for k, v in state.items()},
              str(untrained), {**meta, "ss_steps": "0"})
    return hero, [untrained, early, final]


@pytest.fixture(scope="module")
def report(trained, cfg, tmp_path_factory):
    return evaluate_checkpoints(trained[1], tmp_path_factory.mktemp("eval") / "out", cfg)


def pixels(out: Path, render: dict) -> np.ndarray:
    return np.asarray(Image.open(out / render["file"]).convert("RGB"), np.int16)


def test_outputs_and_every_image_scored(report, trained, cfg):
    out = Path(report["out_dir"])
    specs = report["suite"]["prompts"]
    families = {s["family"] for s in specs}
    assert families == {"identity", "editability", "leakage", "caption"}
    per_state = len(specs) * len(cfg.evaluation.seeds)
    assert len(report["renders"]) == per_state * (1 + 3 * 2)  # base + 3 checkpoints x 2 weights
    assert len(list((out / "base").glob("*.png"))) == per_state
    for name in ("concept-untrained", "concept-step00000010", "concept"):
        for weight in ("1.0", "0.7"):
            assert len(list((out / name / f"w{weight}").glob("*.png"))) == per_state
    for name in [f"grid_{f}.png" for f in families] + ["metrics_by_step.png", "comparison.png"]:
        with Image.open(out / name) as im:
            assert im.width > 200 and im.height > 100
    saved = json.loads((out / REPORT_NAME).read_text())
    assert saved["note"].startswith("tiny profile") and saved["profile"] == "tiny"
    assert saved["dataset"] == str(trained[0].resolve()) and saved["character"] == "Zorvik"  # via castlab_dataset
    assert set(saved["references"]["crops"]) == {"Zorvik", "Blubo"}  # the rival is the sibling dataset
    for render in saved["renders"]:
        assert isinstance(render["identity_margin"], float) and isinstance(render["clip_t"], float)
        assert isinstance(render["memorisation"], float)
        assert (render["drift"] is not None) == (render["family"] == "leakage")
        assert "zorvik" not in render["scoring_prompt"]  # CLIP-T reads the class word, not the trigger
    base_leak = [r for r in saved["renders"] if r["checkpoint"] == "base" and r["family"] == "leakage"]
    assert base_leak and all(r["drift"] == 0.0 for r in base_leak)
    comparison = json.loads((out / COMPARISON_NAME).read_text())
    assert set(comparison["checkpoints"]) == {"concept-untrained", "concept-step00000010", "concept"}
    for row in comparison["checkpoints"].values():
        assert row["status"] in STATUSES and row["reasons"]
    assert report["recommended"] in (comparison["front"] or [None])
    assert saved["aggregates"]["concept"]["weights"]["1.0"]["identity"]["low"] <= \
        saved["aggregates"]["concept"]["weights"]["1.0"]["identity"]["mean"]


def test_the_lora_is_applied_at_its_weight_and_removed_after(report):
    out = Path(report["out_dir"])
    renders = {(r["checkpoint"], r["weight"], r["prompt_id"], r["seed"]): r for r in report["renders"]}
    key = ("identity/front", 1)
    base = pixels(out, renders[("base", None, *key)])
    # a LoRA of zeros renders the base model's image; the trained one changes it, more at weight 1 than 0.7
    assert np.array_equal(pixels(out, renders[("concept-untrained", 1.0, *key)]), base)
    full = np.abs(pixels(out, renders[("concept", 1.0, *key)]) - base).mean()
    part = np.abs(pixels(out, renders[("concept", 0.7, *key)]) - base).mean()
    assert full > part > 0
    untrained = [r for r in report["renders"] if r["checkpoint"] == "concept-untrained" and r["family"] == "leakage"]
    assert all(r["drift"] < 1e-5 for r in untrained)  # no drift from the base model


def test_rerun_reuses_images_rendered_with_the_same_settings(report, trained, cfg):
    out = Path(report["out_dir"])
    with pytest.raises(InputError, match="pass --force"):
        evaluate_checkpoints(trained[1], out, cfg)
    first = {p: p.stat().st_mtime_ns for p in out.glob("*/w1.0/*.png")}
    again = evaluate_checkpoints(trained[1], out, cfg, force=True)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/w1.0/*.png")} == first  # resumed, not re-rendered
    assert again["recommended"] == report["recommended"]
    assert [r["identity_margin"] for r in again["renders"]] == [r["identity_margin"] for r in report["renders"]]


def test_a_batch_renders_what_single_images_render(models_workspace, cfg, tmp_path):
    from castlab.models.diffusion import load_base_pipeline

    pipe, _ = load_base_pipeline(cfg)
    spec = [PromptSpec("identity", "identity/front", "zorvik disc, front", "disc, front")]
    images = {}
    for batch in (1, 3):
        settings = RenderSettings((1, 2, 3), 2, 5.0, RES, RES, batch, 1)
        records = render_suite(pipe, spec, settings, tmp_path / f"b{batch}", {"test": 1})
        images[batch] = [np.asarray(Image.open(r["path"])) for r in records]
    for single, batched in zip(images[1], images[3], strict=True):  # batched kernels round a few pixels apart
        difference = np.abs(single.astype(np.int16) - batched)
        assert difference.max() <= 1 and difference.mean() < 0.01
    assert not np.array_equal(images[1][0], images[1][1])  # seeds differ


def test_registry_entry_of_the_recommendation(report):
    if report["recommended"] is None:
        pytest.skip("nothing recommended in this tiny run")
    entry = registry_entry(report, report["recommended"], "castlab")
    assert entry["character"] == "Zorvik" and entry["trigger"] == "zorvik" and entry["arch"] == "sd15"
    assert Path(entry["file"]).is_file() and entry["metrics"]["identity"] is not None


def test_suite_prompts_and_their_errors(cfg, tmp_path):
    character = cfg.with_overrides({"evaluation": {"suite": "character", "caption_prompts": 2}})
    specs = suite_prompts(character, "zkx", "rabbit", ["zkx rabbit, jumping", "zkx rabbit, sitting", "no trigger"])
    assert {s.family for s in specs} == {"identity", "editability", "leakage", "caption"}
    assert [s.family for s in specs].count("caption") == 2 and all("zkx" in s.prompt for s in specs
                                                                   if s.family != "leakage")
    assert all("zkx" not in s.prompt for s in specs if s.family == "leakage")
    assert scoring_text("zkx rabbit, portrait", "zkx", "rabbit") == "rabbit, portrait"
    empty = tmp_path / "empty.yaml"
    empty.write_text("identity: {}\n")
    with pytest.raises(InputError, match=r"empty\.yaml.*no identity prompts"):
        suite_prompts(cfg.with_overrides({"evaluation": {"suite": str(empty)}}), "zkx", "rabbit")
    leaky = tmp_path / "leaky.yaml"
    leaky.write_text("identity: {a: '{trigger} {class_word}'}\nleakage: {b: '{trigger} at the beach'}\n")
    with pytest.raises(ConfigError, match="leakage/b must not use"):
        suite_prompts(cfg.with_overrides({"evaluation": {"suite": str(leaky)}}), "zkx", "rabbit")
    with pytest.raises(ConfigError, match="no suite file"):
        suite_prompts(cfg.with_overrides({"evaluation": {"suite": "nope"}}), "zkx", "rabbit")


def test_bad_inputs_are_named(trained, cfg, tmp_path):
    hero, checkpoints = trained
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(InputError, match="foreign"):
        evaluate_checkpoints([foreign], tmp_path / "a", cfg, dataset=hero)
    sdxl = tmp_path / "xl.safetensors"
    meta = read_kohya_metadata(checkpoints[-1])
    save_file(load_file(str(checkpoints[-1])), str(sdxl),
              {**meta, "modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    with pytest.raises(InputError, match=r"xl\.safetensors.*stable-diffusion-xl.*base model is SD1"):
        evaluate_checkpoints([sdxl], tmp_path / "b", cfg, dataset=hero)
    with pytest.raises(InputError, match="not a castlab dataset"):
        evaluate_checkpoints(checkpoints[-1:], tmp_path / "c", cfg, dataset=tmp_path)
    orphan = tmp_path / "orphan.safetensors"
    save_file(load_file(str(checkpoints[-1])), str(orphan), {**meta, "castlab_dataset": ""})
    with pytest.raises(InputError, match="no reference set"):
        evaluate_checkpoints([orphan], tmp_path / "d", cfg)


def test_an_sdxl_base_and_its_loras(trained, cfg, tmp_path):
    from castlab.models.diffusion import base_model_source, load_base_pipeline
    from trainers.loop import run_training

    xl = cfg.with_overrides({"models": {"tiny": {"base_model": {"arch": "sdxl-tiny"}}},
                             "evaluation": {"lora_weights": [1.0], "caption_prompts": 0}})
    load_base_pipeline(xl)
    hero = write_dataset(tmp_path / "zorvik", "Zorvik", "zorvik", [i.convert("RGB") for i in concept_images(3)])
    toml = write_pair(hero, [i.convert("RGB") for i in concept_images(2)], "zorvik disc",
                      base_model=base_model_source(xl), steps=2, dataset_extra={"bucket_reso_steps": 32})
    final = run_training(toml, xl, progress=False).checkpoints[-1]
    report = evaluate_checkpoints([final], tmp_path / "eval", xl)
    assert report["model_versions"]["base_model"].startswith("tiny-sdxl-")
    assert len(report["renders"]) == 2 * 4 * 2  # (base + 1 checkpoint) x 4 prompts x 2 seeds
    assert report["ranking"]["checkpoints"]["concept"]["status"] in STATUSES
    with pytest.raises(InputError, match="stable-diffusion-v1.*base model is SDXL"):  # an SD1.5 LoRA, SDXL base
        evaluate_checkpoints(trained[1][-1:], tmp_path / "eval2", xl)
