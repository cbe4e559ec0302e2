"""The train flow under the Prefect runtime: a tiny SDXL LoRA end to end (the thin path covers SD1.5), with its
training report published as an artifact, and a resumed run that continues the same file names."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_pairs import concept_images, write_pair

pytestmark = pytest.mark.integration


def test_sdxl_lora_trains_and_resumes_under_prefect(prefect_runtime, workspace, monkeypatch):
    from prefect.client.orchestration import get_client

    from castlab.config import load_config
    from castlab.models.diffusion import base_model_source, load_base_pipeline
    from castlab.models.kohya import read_kohya_lora
    from flows.train import train

    monkeypatch.setenv("CASTLAB_PROFILE", "tiny")
    cfg = load_config(profile="tiny")
    source = base_model_source(cfg, "sdxl-tiny")
    load_base_pipeline(cfg, source=source)
    toml = write_pair(workspace / "sdxl", concept_images(4), "zorvik disc", base_model=source, steps=4,
                      extra={"save_every_n_steps": 2, "save_state": True},
                      dataset_extra={"bucket_reso_steps": 32, "min_bucket_reso": 32, "max_bucket_reso": 128})
    checkpoints = train(training_toml=str(toml), profile="tiny")
    assert [Path(c).name for c in checkpoints] == ["concept-step00000002.safetensors", "concept.safetensors"]
    _, meta = read_kohya_lora(Path(checkpoints[-1]))
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"

    import asyncio

    async def artifact_keys() -> set[str]:
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    assert "training-report" in asyncio.run(artifact_keys())
    state = Path(checkpoints[0]).parent / "concept-step00000002-state"
    again = train(training_toml=str(toml), resume=str(state), profile="tiny")  # resumes, no --force needed
    assert [Path(c).name for c in again] == ["concept.safetensors"]
