"""Pose and expression on synthetic reviewed instances with known truth: keypoints in the crop's pixels, categories
from known keypoints, skeletons beside the dataset images; face crops gated (no face, small, occluded) with their
reasons, labels from the caption's expression before the zero-shot one, balanced per label."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from run_builder import character_run

from castlab.config import load_config
from castlab.dataset import run as build_datasets
from castlab.pose.geometry import K
from castlab.typed.stage import load_models, prepare, read_records
from castlab.workspace import write_text_atomic

SIZE = (192, 256)  # frame height, width
BOX = (48, 176, 96, 160)  # instance mask y0, y1, x0, x1: x 96..160, y 48..176


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny", extra={"dataset": {"resolution": 128},
                                              "models": {"tiny": {"embedder": {"max_similarity": 1.0}}}})


def standing(x0: float, y0: float) -> np.ndarray:
    """A front-facing standing figure (COCO-17, image pixels) whose box starts at (x0, y0)."""
    kp = np.zeros((17, 3), np.float32)
    places = {"nose": (32, 10), "left_eye": (36, 8), "right_eye": (28, 8), "left_ear": (40, 10), "right_ear": (24, 10),
              "left_shoulder": (48, 30), "right_shoulder": (16, 30), "left_elbow": (52, 50), "right_elbow": (12, 50),
              "left_wrist": (54, 70), "right_wrist": (10, 70), "left_hip": (42, 70), "right_hip": (22, 70),
              "left_knee": (38, 95), "right_knee": (26, 95), "left_ankle": (36, 122), "right_ankle": (28, 122)}
    for name, (x, y) in places.items():
        kp[K[name]] = (x0 + x, y0 + y, 0.9)
    return kp


class KnownPoses:
    """A pose estimator that finds a standing figure in every box (the truth the stage must carry through)."""

    model_version = "known-poses"

    def keypoints(self, image, boxes):
        return [standing(b[0], b[1]) for b in boxes]


def test_pose_records_categories_and_skeletons(workspace, cfg):
    run = workspace / "runs" / "poses"
    character_run(run, [{"identity": "Bo", "box": BOX, "shot": f"s{k}"} for k in range(4)], size=SIZE)
    models = load_models(cfg, "pose")
    assert type(models.pose).__name__ == "PoseEstimator"  # the real (tiny) ViTPose ...
    real = prepare(run, cfg, "pose", models)
    records = read_records(run, "pose")
    assert real["ok"] == 4 and all(len(r["keypoints"]) == 17 for r in records)
    models.pose = KnownPoses()  # ... and a known one
    prepare(run, cfg, "pose", models, force=True)
    records = read_records(run, "pose")
    margin = cfg.dataset.context_margin
    for record in records:
        assert record["labels"]["category"] == "standing" and record["labels"]["view"] == "front"
        assert record["caption_pred"] == "standing, front view"
        x0, y0 = record["crop_box"][:2]
        assert (x0, y0) == (96 - round(64 * margin), 48 - round(128 * margin))
        nose = record["keypoints"][K["nose"]]
        assert nose[:2] == pytest.approx([96 + 32 - x0, 48 + 10 - y0])  # in the crop's pixels
        crop = Image.open(record["image"])
        assert list(crop.size) == record["size"] == [record["crop_box"][2] - x0, record["crop_box"][3] - y0]

    built = build_datasets([run], cfg, workspace / "datasets", dataset_type="pose")["datasets"]["pose"]
    meta = json.loads(Path(built["metadata"]).read_text())
    assert meta["type"] == "pose" and built["images"] == 4 and meta["views"] == {"standing": 4}
    out = Path(built["out_dir"])
    for entry in meta["images"]:
        skeleton = np.asarray(Image.open(out / entry["conditioning"]))
        image = Image.open(out / entry["image"])
        assert skeleton.shape[:2] == (image.height, image.width)
        ys, xs = np.nonzero(skeleton.sum(axis=-1))
        assert entry["keypoints"] == next(r["keypoints"] for r in records if r["row_id"] == entry["row_id"])
        points = np.asarray(entry["keypoints"])[:, :2] * entry["scale"]
        assert abs(xs.mean() - points[:, 0].mean()) < 0.1 * image.width  # the figure is drawn where it stands
        assert ys.min() >= points[:, 1].min() - 6 and ys.max() <= points[:, 1].max() + 6
        assert entry["caption"].endswith(", standing, front view")


def test_expression_crops_gates_and_labels(workspace, cfg):
    run = workspace / "runs" / "faces"
    face = [100, 54, 156, 110]  # 56 px, inside the mask box
    specs = [{"identity": "Bo", "box": BOX, "shot": f"s{k}", "extra": {"face_bbox": face}} for k in range(4)]
    specs.append({"identity": "Bo", "box": BOX, "extra": {"face_bbox": None}})  # 4: no face found
    specs.append({"identity": "Bo", "box": BOX, "extra": {"face_bbox": [110, 60, 140, 90]}})  # 5: 30 px
    specs.append({"identity": "Bo", "box": BOX, "extra": {"face_bbox": [10, 10, 70, 70]}})  # 6: off the mask
    character_run(run, specs, size=SIZE)
    captions = [{"row_id": f"inst:vid:{k}:0", "fields": {"expression": phrase}}
                for k, phrase in enumerate(["big toothy grin", "tearful frown", "calm", "unknown"])]
    write_text_atomic(run / "captions" / "captions.jsonl", "".join(json.dumps(c) + "\n" for c in captions))
    prepare(run, cfg, "expression", load_models(cfg, "expression"))
    records = {r["row_id"]: r for r in read_records(run, "expression")}
    assert {k: records[f"inst:vid:{k}:0"]["reason"] for k in (4, 5, 6)} == \
        {4: "no_face", 5: "small_face", 6: "occluded_face"}
    assert [records[f"inst:vid:{k}:0"]["labels"]["expression"] for k in range(3)] == ["happy", "sad", "neutral"]
    unsure = records["inst:vid:3:0"]
    assert unsure["expression_sources"]["caption"] is None  # "unknown": the zero-shot label decides
    assert unsure["labels"]["expression"] == unsure["expression_sources"]["zero_shot"]
    crop = Image.open(records["inst:vid:0:0"]["image"])
    side = 56 * (1 + 2 * cfg.expression.context)
    assert abs(crop.width - side) <= 2 and crop.width == crop.height  # the face with its context, square

    built = build_datasets([run], cfg, workspace / "datasets", dataset_type="expression")["datasets"]["expression"]
    meta = json.loads(Path(built["metadata"]).read_text())
    assert {r["row_id"]: r["code"] for r in meta["rejected"]} == {
        "inst:vid:4:0": "no_face", "inst:vid:5:0": "small_face", "inst:vid:6:0": "occluded_face"}
    assert sorted(meta["views"].values()) == [1] * len(meta["views"])  # one image per label: balanced
    first = next(e for e in meta["images"] if e["row_id"] == "inst:vid:0:0")
    assert first["caption"].endswith(", happy expression") and first["identity"] == "Bo"


def test_expression_labels_must_be_review_choices(cfg):
    from castlab.errors import ConfigError

    labels = {**cfg.expression.labels, "smug": ["smug", "smirk"]}
    with pytest.raises(ConfigError, match=r"expression.labels: \['smug'\] are not among the review choices"):
        load_models(cfg.with_overrides({"expression": {"labels": labels}}), "expression")
