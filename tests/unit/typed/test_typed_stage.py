"""Preparing the frame types on synthetic sets with known truth: a background with a leftover character is rejected
with its reason, frames without a known background are listed, lighting labels follow the light, scenes cluster,
captions leave uncertain fields out and follow the reviewer's labels, and preparing again reuses what it can."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scene_run import RedFaceDetector, RedShareScorer, scene_run

from castlab.config import load_config
from castlab.errors import ConfigError
from castlab.typed.spec import TYPES, dataset_type
from castlab.typed.stage import (
    OTHER_SCENE,
    caption_body,
    load_models,
    prepare,
    read_embeddings,
    read_records,
    scene_labels,
)


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


@pytest.fixture(scope="module")
def models(cfg):
    loaded = load_models(cfg, "background")
    loaded.detector, loaded.scorer = RedFaceDetector(), RedShareScorer()  # the synthetic character is red
    return loaded


def test_backgrounds_leftover_characters_rejected_and_nothing_dropped(workspace, cfg, models):
    run = workspace / "runs" / "r1"
    scene_run(run, leftover=(1, 6), empty=(5,), pending=(9,))
    summary = prepare(run, cfg, "background", models)
    records = {r["row_id"]: r for r in read_records(run, "background")}
    assert len(records) == 12 and summary["candidates"] == 12  # every kept frame has a record
    for k in (1, 6):
        assert records[f"frame:vid:{k}"]["status"] == "rejected"
        assert records[f"frame:vid:{k}"]["reason"] == "character_evidence"
        assert "face box" in records[f"frame:vid:{k}"]["detail"]
    assert records["frame:vid:9"]["status"] == "skipped" and "pending" in records["frame:vid:9"]["detail"]
    empty = records["frame:vid:5"]
    assert empty["status"] == "ok" and empty["source"] == "empty_frame" and empty["image"].endswith("vid_5.png")
    ok = [r for r in records.values() if r["status"] == "ok"]
    assert len(ok) == 9 and summary["reasons"] == {"character_evidence": 2, "no_background": 1}
    assert all(r["source"] in ("layer", "empty_frame") and r["check"]["character_free"] for r in ok)
    assert set(read_embeddings(run, "background")) == {r["row_id"] for r in ok}
    assert all(r["model_version"].startswith("tiny-") for r in records.values() if r["status"] != "skipped")
    for r in ok:  # labels are the schema's closed fields (or unknown), plus the scene
        assert set(r["labels"]) == {"scene", *TYPES["background"].choices}
        assert all(v in TYPES["background"].choices[k] for k, v in r["labels"].items() if k != "scene")

    again = prepare(run, cfg, "background", models)  # nothing new: every record reused, files the same
    assert again["processed_now"] == 0 and again["reused"] == 11
    assert {r["row_id"]: r for r in read_records(run, "background")} == records
    forced = prepare(run, cfg, "background", models, force=True)
    assert forced["processed_now"] == 11 and forced["reused"] == 0


def test_lighting_labels_follow_the_light(workspace, cfg, models):
    run = workspace / "runs" / "lit"
    dark = {k: 0.2 for k in range(4)}  # scene 0 lit at a fifth: low-key
    scene_run(run, scenes=2, per_scene=4, brightness=dark)
    prepare(run, cfg, "lighting", models)
    records = {r["row_id"]: r for r in read_records(run, "lighting")}
    assert all(r["status"] == "ok" and r["source"] is None for r in records.values())  # the frames themselves
    for k in range(8):
        record = records[f"frame:vid:{k}"]
        assert record["image"].endswith(f"frames/vid_{k}.png")
        key = record["labels"]["luma_key"]
        assert key == ("low-key" if k < 4 else "mid-key"), (k, record["features"])
        assert ("low-key lighting" in record["caption_pred"]) == (k < 4)
        assert record["labels"]["warmth"] in ("warm", "neutral", "cool")


def test_scene_clusters_and_their_floor(cfg):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32))
    vectors = np.concatenate([c + rng.normal(0, 0.05, (8, 32)) for c in centres])
    labels = scene_labels(vectors, cfg, 5)
    groups = [set(labels[i * 8:(i + 1) * 8]) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3 and OTHER_SCENE not in labels
    assert scene_labels(vectors[:9], cfg, 5) == [OTHER_SCENE] * 9  # too few for two scenes of five


def test_captions_skip_uncertain_fields_and_follow_the_review(cfg):
    kind = dataset_type("background")
    record = {"fields": {"location": "a cluttered workshop", "setting": "indoor", "time_of_day": "unknown",
                         "weather": "not visible", "mood": "cozy", "light": "warm key light",
                         "camera": {"shot_size": "wide shot", "angle": "unknown"}, "final_caption": "x"},
              "labels": {"setting": "indoor", "time_of_day": "unknown", "weather": "not visible",
                         "light": "warm key light", "camera.shot_size": "wide shot", "camera.angle": "unknown"}}
    assert caption_body(record, kind, cfg) == "a cluttered workshop, indoor, cozy, warm key light, wide shot"
    reviewed = {**record, "review": {"labels": {"time_of_day": "night", "camera.angle": "low angle"}}}
    assert caption_body(reviewed, kind, cfg) == \
        "a cluttered workshop, indoor, night, cozy, warm key light, wide shot, low angle"
    with pytest.raises(ConfigError, match="unknown dataset type 'hats'"):
        dataset_type("hats")


def test_label_configs_offer_exactly_the_reviewed_labels():
    import xml.etree.ElementTree as ET

    from castlab.pose.geometry import COCO_KEYPOINTS
    from castlab.typed.spec import control_name

    for kind in TYPES.values():
        root = ET.fromstring(kind.label_config)
        choices = {c.get("name"): tuple(x.get("value") for x in c.findall("Choice")) for c in root.iter("Choices")}
        assert choices == {control_name(p): v for p, v in kind.reviewed.items()}, kind.name
        assert [t.get("name") for t in root.iter("TextArea")] == ["type_caption"]
        points = [tuple(x.get("value") for x in k.findall("Label")) for k in root.iter("KeyPointLabels")]
        assert points == ([COCO_KEYPOINTS] if kind.keypoints else []), kind.name


def test_summary_counts_the_balance_labels(workspace, cfg, models):
    run = workspace / "runs" / "s"
    scene_run(run, scenes=2, per_scene=3)
    summary = prepare(run, cfg, "style", models)
    assert summary["balance"] == "scene" and sum(summary["labels"].values()) == summary["ok"] == 6
    on_disk = json.loads((Path(run) / "style" / "summary.json").read_text())
    assert on_disk["ok"] == 6 and on_disk["type"] == "style"
