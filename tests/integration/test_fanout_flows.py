"""caption and evaluate under a real Prefect runtime (thread runner), without Label Studio: the chunks and the
render groups really are mapped tasks, and the outputs are those of one pass in this process."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from lora_checkpoints import SMALL_SUITE, character_datasets, random_lora
from run_builder import instance_run

from castlab.config import load_config
from castlab.manifest import Manifest
from castlab.orchestration import clear_worker_models

pytestmark = pytest.mark.integration
CAPTION_COLUMNS = ("caption_pred", "caption_status", "caption_error", "caption_flags", "caption_priority",
                   "caption_tokens", "caption_clip_score")


@pytest.fixture(autouse=True)
def _forget_models():
    """The thread runner keeps each stage's models in this process: let them go after each test."""
    yield
    clear_worker_models()


def task_runs(state: Any, expected: dict[str, int], timeout: float = 30.0) -> Counter:
    """Task runs of a flow run by task name (the API records them asynchronously: wait for `expected`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            counts = Counter(r.name.rsplit("-", 1)[0] for r in client.read_task_runs(flow_run_filter=flow_filter))
            if all(counts[k] >= n for k, n in expected.items()) or time.monotonic() > deadline:
                return counts
            time.sleep(0.5)


def _caption_run(workspace: Path, name: str) -> Path:
    run = workspace / "runs" / name
    instance_run(run, 6, "c", seed=7, size=(96, 128), box=(8, 90, 20, 100), fields=lambda f: {
        "identity": "Bunny" if f % 2 else "Squirrel", "identity_state": "reviewed" if f != 5 else "unreviewed",
        "video_id": "c", "shot_id": f"s{f // 3}"})
    return run


def _captions(run: Path) -> tuple[str, str, dict]:
    manifest = Manifest.for_run(run)
    columns = {r["row_id"]: {k: r.get(k) for k in CAPTION_COLUMNS} for r in manifest.rows(kind="instance")}
    return ((run / "captions" / "captions.jsonl").read_text(), (run / "captions" / "cluster_labels.json").read_text(),
            columns)


def test_caption_chunks_are_mapped_and_match_one_pass(prefect_runtime, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    from castlab.captions.stage import run as caption_in_process
    from flows.caption import caption

    workspace = tmp_path / "workspace"
    monkeypatch.setenv("CASTLAB_WORKSPACE", str(workspace))
    override = tmp_path / "chunks.yaml"
    override.write_text("captions:\n  chunk_size: 2\n  batch_size: 2\n")
    flow_run, one_run = _caption_run(workspace, "flow"), _caption_run(workspace, "one")

    state = caption(run_dir=str(flow_run), push=False, config_files=[str(override)], return_state=True)
    summary = state.result()
    assert summary["chunks"] == 3 and summary["captioned_now"] == 5  # 5 identified instances, 2 at a time
    assert task_runs(state, {"caption-chunk": 3})["caption-chunk"] == 3
    one = caption_in_process(one_run, load_config(extra={"captions": {"chunk_size": 64, "batch_size": 2}}))
    assert one["chunks"] == 1 and one["status"] == summary["status"]
    assert _captions(flow_run) == _captions(one_run)  # captions.jsonl, cluster labels, manifest columns

    again = caption(run_dir=str(flow_run), push=False, config_files=[str(override)])
    assert again["captioned_now"] == 0 and again["chunks"] == 0 and again["reused"] == summary["status"]["ok"]


def test_evaluate_renders_each_checkpoint_in_its_own_task(prefect_runtime, models_workspace, tmp_path: Path):
    from castlab.evaluate.stage import REPORT_NAME, evaluate_checkpoints
    from castlab.models.diffusion import load_base_pipeline
    from flows.evaluate import evaluate

    suite = tmp_path / "small.yaml"
    suite.write_text(SMALL_SUITE)
    override = tmp_path / "evaluation.yaml"
    override.write_text(f"evaluation:\n  suite: {suite}\n  steps: 2\n  seeds: [1, 2]\n  bootstrap: 50\n"
                        "  caption_prompts: 0\n  lora_weights: [1.0]\n  identity:\n    region: image\n")
    cfg = load_config(overrides=[str(override)])
    pipe, _ = load_base_pipeline(cfg)
    hero = character_datasets(tmp_path / "datasets")
    checkpoints = [str(random_lora(pipe, tmp_path / f"concept-{k}.safetensors", hero, seed=k, steps=10 * k,
                                   scale=0.1 * k)) for k in (1, 2)]

    state = evaluate(checkpoints=checkpoints, out_dir=str(tmp_path / "flow"), push=False, register=False,
                     config_files=[str(override)], return_state=True)
    report = state.result()
    assert task_runs(state, {"render-checkpoint": 3})["render-checkpoint"] == 3  # the base model + 2 checkpoints
    one = evaluate_checkpoints([Path(c) for c in checkpoints], tmp_path / "one", cfg)
    flow_saved, one_saved = (json.loads((tmp_path / d / REPORT_NAME).read_text()) for d in ("flow", "one"))
    assert flow_saved == one_saved
    assert report["recommended"] == one["recommended"] and report["ranking"] == one["ranking"]
