"""Evaluation split for workers: render groups (the base model, each checkpoint at every weight) rendered and
scored apart, in any order, rank exactly as one pass does (tiny profile, random LoRAs, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lora_checkpoints import SMALL_SUITE, character_datasets, random_lora

from castlab.config import load_config
from castlab.evaluate.stage import (
    REPORT_NAME,
    SCORING_DIR,
    evaluate_checkpoints,
    finish_evaluation,
    load_models,
    plan_evaluation,
    reference_embeddings,
    render_group,
    state_groups,
)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    suite = tmp_path_factory.mktemp("suite") / "small.yaml"
    suite.write_text(SMALL_SUITE)
    return load_config(profile="tiny", extra={"evaluation": {
        "suite": str(suite), "steps": 2, "seeds": [1, 2], "bootstrap": 50, "caption_prompts": 0,
        "lora_weights": [1.0, 0.7], "identity": {"region": "face"}}})


@pytest.fixture(scope="module")
def checkpoints(models_workspace, cfg, tmp_path_factory) -> list[Path]:
    from castlab.models.diffusion import load_base_pipeline

    pipe, _ = load_base_pipeline(cfg)
    root = tmp_path_factory.mktemp("inputs")
    hero = character_datasets(root / "datasets")
    return [random_lora(pipe, root / f"concept-{k}.safetensors", hero, seed=k, steps=10 * k, scale=0.1 * k)
            for k in (1, 2)]


def test_groups_rendered_apart_rank_as_one_pass(checkpoints, cfg, tmp_path):
    one = evaluate_checkpoints(checkpoints, tmp_path / "one", cfg)

    plan = plan_evaluation(checkpoints, tmp_path / "apart", cfg)
    json.dumps(plan)  # plain data: it goes to workers
    groups = state_groups(plan)
    assert [[s["row"] for s in g] for g in groups] == [
        ["base"], ["concept-1@1.0", "concept-1@0.7"], ["concept-2@1.0", "concept-2@0.7"]]
    models = load_models(cfg)
    references = reference_embeddings(plan, cfg, models)
    done = {i: render_group(plan, g, references["file"], cfg, models)
            for i, g in reversed(list(enumerate(groups)))}  # workers finish in any order
    json.dumps(done)  # paths and per-image numbers come back, no arrays
    assert all(r["drift"] is None for part in done.values() for r in part["rows"])  # needs the base model's images
    apart = finish_evaluation(plan, references, [done[i] for i in range(len(groups))], cfg)

    saved = [json.loads((tmp_path / name / REPORT_NAME).read_text()) for name in ("one", "apart")]
    assert saved[0] == saved[1]
    assert apart["recommended"] == one["recommended"] and apart["ranking"] == one["ranking"]
    leak = [r for r in apart["renders"] if r["family"] == "leakage"]
    assert leak and all(isinstance(r["drift"], float) for r in leak)
    assert not (tmp_path / "apart" / SCORING_DIR).exists()  # intermediate embeddings are cleaned up
