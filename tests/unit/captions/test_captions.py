"""The caption stage with a scripted captioner: records, outcomes, QC, cluster labels, Label Studio tasks."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scripted_captioner import FixedScores, ScriptedCaptioner

from castlab.captions.schema import CHOICE_FIELDS
from castlab.captions.stage import caption_run, read_labels, read_records
from castlab.config import load_config
from castlab.dataset.assemble import build_caption, caption_source
from castlab.errors import InputError
from castlab.labelstudio.projects.captions import (
    CONTROLS,
    LABEL_CONFIG,
    annotation_answer,
    build_caption_tasks,
    prediction_result,
    reviewed_caption,
)
from castlab.labelstudio.projects.identity import instance_key
from castlab.layers import write_instance_layers
from castlab.manifest import Manifest

RED, BLUE, GREEN, GREY = (220, 40, 40), (40, 60, 220), (40, 200, 60), (128, 128, 128)


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Manifest]:
    monkeypatch.setenv("CASTLAB_WORKSPACE", str(tmp_path))
    run = tmp_path / "run"
    manifest = Manifest.for_run(run)
    plan = [  # colour, identity, state
        (RED, "Bob", "reviewed"), (RED, "Bob", "cluster"), (RED, "Bob", "reviewed"), (RED, "Bob", "reviewed"),
        (BLUE, "Bob", "reviewed"), (GREEN, "Ann", "reviewed"), (RED, "Ann", "cluster"),
        (RED, "character_4", "unreviewed"), (RED, None, "noise"), (RED, "Ann", "reviewed"),
    ]
    rows = []
    for n, (colour, identity, state) in enumerate(plan):
        frame = np.full((96, 96, 3), 20, np.uint8)
        mask = np.zeros((96, 96), bool)
        mask[10:90, 20:76] = True
        frame[mask] = colour
        layers = write_instance_layers(frame, mask, run, f"inst:v:{n}:0")
        rows.append({"row_id": f"inst:v:{n}:0", "kind": "instance", "status": "kept", "identity": identity,
                     "identity_state": state, "view": ["front", "three_quarter", "profile"][n % 3],
                     "video_id": "v", "shot_id": "s1", **layers})
    manifest.add_rows(rows)
    manifest.save()
    return run, manifest


def test_caption_run_records_every_outcome(tmp_path, monkeypatch):
    run, manifest = _run(tmp_path, monkeypatch)
    Path(manifest.get("inst:v:9:0")["crop_path"]).write_bytes(b"not a png")
    cfg = load_config(profile="tiny")
    captioner = ScriptedCaptioner()
    summary = caption_run(run, manifest, cfg, captioner=captioner, embedder=FixedScores())
    records = {r["row_id"]: r for r in read_records(run)}
    assert len(records) == 10 == summary["instances"]
    assert summary["status"] == {"ok": 6, "no_identity": 2, "image_error": 1, "schema_error": 1}
    assert records["inst:v:7:0"]["status"] == "no_identity" and "unreviewed" in records["inst:v:7:0"]["error"]
    assert "not a readable image" in records["inst:v:9:0"]["error"]
    assert "schema" in records["inst:v:5:0"]["error"] and records["inst:v:5:0"]["raw_output"].startswith('{"outfit"')
    good, unsure = records["inst:v:0:0"], records["inst:v:4:0"]
    assert good["fields"]["character"] == "Bob" and records["inst:v:6:0"]["fields"]["character"] == "Ann"
    assert good["caption"].startswith("cstlb character, 3d animated character")
    assert "grey fur" not in good["caption"]  # invariant trait: left to the trigger
    assert good["tokens"] <= 77 and good["clip_score"] == pytest.approx(0.3)
    assert "unknown" not in unsure["caption"] and "uncertain:view" in unsure["flags"]
    assert any(f.startswith("hallucination_term") for f in unsure["flags"])
    assert unsure["priority"] > good["priority"]
    assert captioner.batches[0] == cfg.captions.batch_size  # 8 readable crops, batched
    rows = {r["row_id"]: r for r in manifest.rows(kind="instance")}  # in memory: the caller saves
    assert rows["inst:v:4:0"]["caption_pred"] == unsure["caption"] and "uncertain:view" in rows["inst:v:4:0"][
        "caption_flags"]
    assert rows["inst:v:7:0"]["caption_status"] == "no_identity"
    labels = read_labels(run)
    assert set(labels) == {"Bob", "Ann"}
    assert 3 <= len(labels["Bob"]["samples"]) <= 5 and labels["Bob"]["description"] == "a grey rabbit"
    assert labels["Bob"]["usual"].get("materials.skin") == "soft grey fur"
    report = json.loads((run / "captions" / "caption_report.json").read_text())
    assert report["status"]["schema_error"] == 1 and (run / "captions" / "caption_tokens.png").is_file()


def test_running_again_captions_only_what_is_new(tmp_path, monkeypatch):
    run, manifest = _run(tmp_path, monkeypatch)
    cfg = load_config(profile="tiny")
    first = caption_run(run, manifest, cfg, captioner=ScriptedCaptioner(), embedder=FixedScores())
    assert first["captioned_now"] == 8 and first["reused"] == 0
    before = {r["row_id"]: r for r in read_records(run)}
    manifest.update("inst:v:7:0", identity_state="reviewed")  # identified since
    manifest.update("inst:v:6:0", identity="Bob")  # re-reviewed: another identity
    manifest.save()
    captioner = ScriptedCaptioner()
    again = caption_run(run, Manifest.for_run(run), cfg, captioner=captioner, embedder=FixedScores())
    assert again["captioned_now"] == 3 and again["reused"] == 6  # new, re-identified, and the schema error again
    assert captioner.images_per_item[:3] == [1, 1, 1] and sum(captioner.batches[:-1]) == 3  # then cluster labels
    after = {r["row_id"]: r for r in read_records(run)}
    assert after["inst:v:7:0"]["status"] == "ok" and after["inst:v:6:0"]["fields"]["character"] == "Bob"
    assert after["inst:v:0:0"]["fields"] == before["inst:v:0:0"]["fields"]
    assert "uncertain:view" in after["inst:v:4:0"]["flags"]  # field flags survive reuse
    forced = caption_run(run, Manifest.for_run(run), cfg, captioner=ScriptedCaptioner(), embedder=FixedScores(),
                         force=True)
    assert forced["captioned_now"] == 9 and forced["reused"] == 0


def test_values_the_model_was_unsure_of_are_neutralised(tmp_path, monkeypatch):
    run, manifest = _run(tmp_path, monkeypatch)
    cfg = load_config(profile="full", extra={"models": {"full": {"captioner": {}}}})  # thresholds on
    captioner = ScriptedCaptioner(unsure={"medium shot": 0.1, "waving at the camera": 0.05, "smiling": 0.9})
    caption_run(run, manifest, cfg, captioner=captioner, embedder=FixedScores())
    record = next(r for r in read_records(run) if r["row_id"] == "inst:v:0:0")
    assert record["confidence"]["camera.shot_size"] == pytest.approx(0.1)
    assert record["confidence"]["view"] == 1.0 and record["confidence"]["expression"] == pytest.approx(0.9)
    assert {"uncertain:camera.shot_size", "uncertain:action"} <= set(record["flags"])
    assert "uncertain:expression" not in record["flags"] and "uncertain:view" not in record["flags"]
    assert "medium shot" not in record["caption"] and "waving" not in record["caption"]
    assert record["fields"]["action"] == "standing"  # the neutral term
    tiny = load_config(profile="tiny")  # random weights: thresholds off, confidences still recorded
    caption_run(run, manifest, tiny, captioner=captioner, embedder=FixedScores(), force=True)
    record = next(r for r in read_records(run) if r["row_id"] == "inst:v:0:0")
    assert "uncertain:action" not in record["flags"] and record["confidence"]["action"] == pytest.approx(0.05)


def test_crops_are_loaded_a_chunk_at_a_time(tmp_path, monkeypatch):
    run, manifest = _run(tmp_path, monkeypatch)
    cfg = load_config(profile="tiny", extra={"captions": {"chunk_size": 3, "batch_size": 2}})
    captioner = ScriptedCaptioner()
    summary = caption_run(run, manifest, cfg, captioner=captioner, embedder=FixedScores())
    assert summary["status"]["ok"] == 7
    assert captioner.batches[:5] == [2, 1, 2, 1, 2]  # 8 identified instances in chunks of 3, batches of 2


def test_sequences_describe_each_shot(tmp_path, monkeypatch):
    run, manifest = _run(tmp_path, monkeypatch)
    cfg = load_config(profile="tiny")
    summary = caption_run(run, manifest, cfg, captioner=ScriptedCaptioner(), embedder=FixedScores(),
                          sequences=True)
    shots = json.loads((run / "captions" / "sequences.json").read_text())["shots"]
    assert summary["sequences"] == {"shots": 1, "ok": 0}  # no shots.json in this run: recorded, not raised
    assert shots["v/s1"]["status"] == "video_error" and "shots.json" in shots["v/s1"]["error"]


def test_sequences_from_real_shots(tmp_path, monkeypatch):
    from synthetic_media import make_video

    from castlab.frames.extract import extract_frames

    monkeypatch.setenv("CASTLAB_WORKSPACE", str(tmp_path))
    video = make_video(tmp_path / "two shots.mp4", shots=("sharp", "smooth"), frames_per_shot=(20, 9))
    run = tmp_path / "run"
    cfg = load_config(profile="tiny")
    extract_frames(video, run, cfg, mode="scene")  # writes shots.json
    (video_id, entry), = json.loads((run / "shots.json").read_text())["videos"].items()
    shots = entry["shots"]
    assert len(shots) == 2
    manifest = Manifest.for_run(run)
    mask = np.zeros((96, 96), bool)
    mask[10:90, 20:76] = True
    for shot in shots:  # one identified instance per shot
        layers = write_instance_layers(np.full((96, 96, 3), 200, np.uint8), mask, run, f"inst:{shot['shot_id']}")
        manifest.add_rows([{"row_id": f"inst:{shot['shot_id']}", "kind": "instance", "status": "kept",
                            "identity": "Bob", "identity_state": "reviewed", "video_id": video_id,
                            "shot_id": shot["shot_id"], **layers}])
    manifest.save()
    captioner = ScriptedCaptioner()
    summary = caption_run(run, manifest, cfg, captioner=captioner, embedder=FixedScores(), sequences=True)
    assert summary["sequences"] == {"shots": 2, "ok": 2}
    entries = json.loads((run / "captions" / "sequences.json").read_text())["shots"]
    for shot in shots:
        entry = entries[f"{video_id}/{shot['shot_id']}"]
        assert entry["motion"] == "hops from left to right"
        n = min(10, shot["frames"])  # captions.sequence_frames, fewer when the shot is shorter
        assert len(entry["frames"]) == n and entry["frames"][0] == shot["start_frame"]
        assert entry["frames"][-1] == shot["end_frame"] - 1 and entry["frames"] == sorted(set(entry["frames"]))
    assert sorted(captioner.images_per_item[-2:]) == [9, 10]  # all frames of a shot in one item


def test_no_identified_instance_is_a_clear_error(tmp_path, monkeypatch):
    run, manifest = _run(tmp_path, monkeypatch)
    for row in manifest.rows(kind="instance"):
        manifest.update(row["row_id"], identity_state="unreviewed")
    with pytest.raises(InputError, match="reviewed identity"):
        caption_run(run, manifest, load_config(profile="tiny"), captioner=ScriptedCaptioner(),
                    embedder=FixedScores())


def test_tasks_put_flagged_captions_first_and_answers_come_back(tmp_path, monkeypatch):
    run, manifest = _run(tmp_path, monkeypatch)
    cfg = load_config(profile="tiny")
    caption_run(run, manifest, cfg, captioner=ScriptedCaptioner(), embedder=FixedScores())
    records = read_records(run)
    tasks = build_caption_tasks(records, Manifest.for_run(run), run, read_labels(run))
    assert len(tasks) == 7
    priorities = [t["data"]["priority"] for t in tasks]
    assert priorities == sorted(priorities, reverse=True) and priorities[0] > 0
    assert tasks[0]["data"]["instance"] == "inst:v:4:0" and "uncertain:view" in tasks[0]["data"]["qc_flags"]
    assert tasks[0]["data"]["identity_description"].startswith("a grey rabbit")
    assert tasks[0]["data"]["image"].startswith("/data/local-files/?d=run/")
    rows = {r["row_id"]: r for r in Manifest.for_run(run).rows(kind="instance")}  # keyed by content, not the run
    assert all(t["data"]["castlab_key"] == "caption:" + instance_key(rows[t["data"]["instance"]]) for t in tasks)
    renamed = Manifest.for_run(run)
    renamed.update("inst:v:0:0", identity="Carl")  # re-reviewed after captioning
    tasks = build_caption_tasks(records, renamed, run, read_labels(run))
    assert tasks[0]["data"]["instance"] == "inst:v:0:0" and "character_mismatch" in tasks[0]["data"]["qc_flags"]
    record = next(r for r in records if r["row_id"] == "inst:v:0:0")
    result = prediction_result(record)
    text, choices = annotation_answer({"result": result})
    assert text == record["caption"] and choices["view"] == "three-quarter view"
    assert reviewed_caption(record, {"result": result}, cfg, None) == (record["caption"], False)
    edited = [dict(r, value={"text": ["cstlb character, hopping"]}) if r["from_name"] == "caption" else r
              for r in result]
    assert reviewed_caption(record, {"result": edited}, cfg, None) == ("cstlb character, hopping", True)
    side = [dict(r, value={"choices": ["side view"]}) if r["from_name"] == "view" else r for r in result]
    text, was_edited = reviewed_caption(record, {"result": side}, cfg, None)
    assert was_edited and "side view" in text and "three-quarter" not in text


def test_label_config_offers_exactly_the_schema_vocabularies():
    root = ET.fromstring(LABEL_CONFIG.read_text(encoding="utf-8"))
    offered = {c.get("name"): [x.get("value") for x in c.findall("Choice")] for c in root.iter("Choices")}
    assert offered == {CONTROLS[path]: list(values) for path, values in CHOICE_FIELDS.items()}
    area = next(root.iter("TextArea"))
    assert area.get("name") == "caption" and area.get("toName") == "crop" and area.get("editable") == "true"
    variables = set(re.findall(r"\$(\w+)", LABEL_CONFIG.read_text(encoding="utf-8")))
    assert variables == {"image", "identity", "identity_description", "qc_flags", "model_sentence"}


def test_dataset_prefers_reviewed_then_predicted_captions():
    cfg = load_config(profile="tiny")
    assert caption_source({"caption": "x", "caption_pred": "y"}) == "reviewed"
    assert caption_source({"caption": None, "caption_pred": "y"}) == "predicted"
    assert caption_source({"caption": float("nan")}) == "template"
    assert build_caption({"caption_pred": "cstlb character, waving"}, cfg) == "cstlb character, waving"
    assert build_caption({"caption": "smiling", "caption_pred": "waving"}, cfg) == "cstlb character, smiling"


def test_grey_crop_is_not_empty(tmp_path, monkeypatch):
    from castlab.captions.stage import load_crop

    monkeypatch.setenv("CASTLAB_WORKSPACE", str(tmp_path))
    path = tmp_path / "c.png"
    Image.new("RGBA", (8, 8), (*GREY, 0)).save(path)
    with pytest.raises(InputError, match="empty"):
        load_crop(str(path), GREY)
    Image.new("RGBA", (8, 8), (*GREY, 255)).save(path)
    assert load_crop(str(path), GREY).size == (8, 8)
