"""The caption stage split for workers: plan, chunks captioned anywhere and in any order, then one finishing step
that gives what one pass gives — with the real tiny VLM (random weights, greedy decoding)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripted_captioner import FixedScores, ScriptedCaptioner
from test_captions import _run

from castlab.captions.stage import (
    CAPTIONS_DIR,
    CHUNK_KEYS,
    LABELS_NAME,
    caption_chunks,
    caption_inputs,
    caption_run,
    finish_captions,
    load_models,
    plan_captions,
    process,
    read_records,
)
from castlab.config import load_config
from castlab.manifest import Manifest

CAPTION_COLUMNS = ("caption_pred", "caption_status", "caption_error", "caption_flags", "caption_priority",
                   "caption_tokens", "caption_clip_score")


def _columns(manifest: Manifest) -> dict[str, dict]:
    return {r["row_id"]: {k: r.get(k) for k in CAPTION_COLUMNS} for r in manifest.rows(kind="instance")}


def _outputs(run: Path) -> tuple[list[dict], dict]:
    labels = json.loads((run / CAPTIONS_DIR / LABELS_NAME).read_text())
    return read_records(run), labels


def test_chunks_captioned_out_of_order_finish_as_one_pass(tmp_path, monkeypatch):
    cfg = load_config(profile="tiny", extra={"captions": {"batch_size": 2, "chunk_size": 64}})
    models = load_models(cfg)
    one_run, one_manifest = _run(tmp_path / "one", monkeypatch)
    one = caption_run(one_run, one_manifest, cfg, models.captioner, models.embedder)
    assert one["chunks"] == 1 and one["status"]["ok"] >= 1

    chunked = cfg.with_overrides({"captions": {"chunk_size": 2}})
    run, manifest = _run(tmp_path / "chunked", monkeypatch)
    plan = plan_captions(run, caption_inputs(run, manifest), chunked, models.captioner.model_version)
    chunks = caption_chunks(plan, chunked.captions.chunk_size)
    assert [len(c) for c in chunks] == [2, 2, 2, 2] and all(set(r) == set(CHUNK_KEYS) for c in chunks for r in c)
    json.dumps(plan)  # plain data: it goes to workers
    done = {i: process(c, chunked, models, style=plan["style"]) for i, c in reversed(list(enumerate(chunks)))}
    json.dumps(done)
    summary = finish_captions(run, manifest, chunked, models, plan, [done[i] for i in range(len(chunks))])

    assert summary["chunks"] == 4
    skip = ("chunks", "records", "report")
    assert {k: v for k, v in summary.items() if k not in skip} == {k: v for k, v in one.items() if k not in skip}
    assert _outputs(run) == _outputs(one_run)  # captions.jsonl and cluster_labels.json
    assert _columns(manifest) == _columns(one_manifest)


def test_the_plan_captions_only_what_is_new(tmp_path, monkeypatch):
    run, manifest = _run(tmp_path, monkeypatch)
    cfg = load_config(profile="tiny", extra={"captions": {"chunk_size": 3}})
    caption_run(run, manifest, cfg, captioner=ScriptedCaptioner(), embedder=FixedScores())
    manifest.update("inst:v:7:0", identity_state="reviewed")  # identified since
    plan = plan_captions(run, caption_inputs(run, manifest), cfg, ScriptedCaptioner.model_version)
    assert plan["todo"] == ["inst:v:5:0", "inst:v:7:0"]  # the schema error again, and the new one
    assert plan["reused"] == 7 and plan["records"]["inst:v:8:0"]["status"] == "no_identity"
    assert [[r["row_id"] for r in c] for c in caption_chunks(plan, 1)] == [["inst:v:5:0"], ["inst:v:7:0"]]
    forced = plan_captions(run, caption_inputs(run, manifest), cfg, ScriptedCaptioner.model_version, force=True)
    assert len(forced["todo"]) == 9 and forced["reused"] == 0
    other = plan_captions(run, caption_inputs(run, manifest), cfg, "another-vlm")
    assert len(other["todo"]) == 9  # captions of another model are not reused


def test_a_missing_chunk_fails_the_finish(tmp_path, monkeypatch):
    run, manifest = _run(tmp_path, monkeypatch)
    cfg = load_config(profile="tiny")
    models = load_models(cfg, ScriptedCaptioner(), FixedScores())
    plan = plan_captions(run, caption_inputs(run, manifest), cfg, models.captioner.model_version)
    chunks = caption_chunks(plan, 3)
    parts = [process(c, cfg, models, style=plan["style"]) for c in chunks[1:]]
    with pytest.raises(ValueError, match="no record for 3 instance"):
        finish_captions(run, manifest, cfg, models, plan, parts)
