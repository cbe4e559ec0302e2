"""The generate flow under the Prefect runtime, as `castlab generate` runs it: a registered character LoRA on the
tiny SD1.5, a prompt file with a bad line (reported, the rest made), the summary published as an artifact."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from lora_checkpoints import character_datasets, random_lora
from PIL import Image

pytestmark = pytest.mark.integration


def test_generate_flow_with_a_registered_lora(prefect_runtime, workspace, monkeypatch, capsys):
    from prefect.client.orchestration import get_client

    from castlab.config import load_config
    from castlab.evaluate.registry import register_lora
    from castlab.models.diffusion import base_model_source, load_base_pipeline
    from flows.cli import main

    monkeypatch.setenv("CASTLAB_PROFILE", "tiny")
    cfg = load_config(profile="tiny")
    pipe, version = load_base_pipeline(cfg)
    hero = character_datasets(workspace / "datasets")
    lora = random_lora(pipe, workspace / "castlab_zorvik.safetensors", hero, seed=1, steps=10)
    register_lora({"name": "castlab_zorvik", "character": "Zorvik", "trigger": "zorvik", "class_word": "disc",
                   "base_model": version, "arch": "sd15", "file": str(lora), "metrics": {}, "chosen_by": "castlab",
                   "evaluation": str(workspace), "type": "character", "dataset": str(hero),
                   "base_model_source": base_model_source(cfg)}, cfg)
    settings = workspace / "generate.yaml"
    settings.write_text("evaluation:\n  identity:\n    region: image\ngeneration:\n  consistency:\n"
                        "    threshold: 0.0\n  presets:\n    draft: {steps: 2, sampler: euler_a, guidance_scale: 5,"
                        " size_scale: 1.0}\n")
    prompts = workspace / "prompts.txt"
    prompts.write_text("zorvik disc on a beach --d 3\nzorvik disc at night --w nope\na disc in snow --s 2\n")
    reference = workspace / "reference.png"
    Image.new("RGB", (64, 64), (200, 120, 40)).save(reference)
    code = main(["generate", "--lora", "castlab_zorvik:0.8", "--prompt-file", str(prompts), "--quality", "draft",
                 "--images", "2", "--out", str(workspace / "gen"), "--config", str(settings), "--profile", "tiny",
                 "--control", f"depth={reference}", "--control-scale", "0.5"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["counts"]["images"] == 4 and result["counts"]["passed_first_time"] == 4
    assert [b["source"].rsplit(":", 1)[-1] for b in result["bad_lines"]] == ["2"]
    assert len(list((workspace / "gen" / "images").glob("*.png"))) == 4
    assert result["control"]["kind"] == "depth" and result["control"]["scale"] == 0.5
    assert result["control"]["how"].startswith("tiny-dpt")

    async def artifact_keys() -> set[str]:
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    assert "generation" in asyncio.run(artifact_keys())
    assert "zorvik" in (workspace / "gen" / "generation.md").read_text()
    assert Path(result["out_dir"]) == workspace / "gen"
