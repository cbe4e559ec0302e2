"""The dataset types' review projects against a real Label Studio, under a real Prefect runtime, with the real tiny
models: prepare (background, style, lighting) → each type's project (its label config accepted by Label Studio, no
duplicate tasks on re-run) → a reviewer edits a caption and corrects a label → review-sync → the dataset uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scene_run import scene_run

from castlab.labelstudio import client
from castlab.typed.stage import read_records

pytestmark = pytest.mark.integration


def _choice(result: list[dict], name: str) -> str | None:
    return next((r["value"]["choices"][0] for r in result if r["from_name"] == name), None)


def test_type_reviews_round_trip(ls_env, tmp_path: Path):
    from flows.dataset import dataset
    from flows.prepare import prepare
    from flows.review_sync import review_sync

    override = tmp_path / "types.yaml"
    override.write_text(
        "types:\n"
        + "".join(f"  {t}:\n    title: {t} flow it\n    target_size_min: 2\n" for t in ("background", "style",
                                                                                       "lighting"))
        + "backgrounds:\n  max_character_score: 1.0\n"  # tiny open_clip scores noise: only the detectors look
        + "dataset:\n  resolution: 128\n"
        + "models:\n  tiny:\n    embedder:\n      max_similarity: 1.0\n")  # tiny open_clip finds all sets alike
    run = Path(ls_env.workspace) / "runs" / "typed-flow-it"
    scene_run(run, scenes=2, per_scene=3, video="typed-it")
    ls = client.connect(ls_env.url, ls_env.token)
    pushed = {}
    for name in ("background", "style", "lighting"):
        summary = prepare(run_dir=str(run), dataset_type=name, config_files=[str(override)])
        assert summary["ok"] == 6 and summary["labelstudio"]["new_tasks"] == 6, summary
        again = prepare(run_dir=str(run), dataset_type=name, config_files=[str(override)])
        assert again["processed_now"] == 0 and again["labelstudio"]["new_tasks"] == 0  # no duplicate tasks
        pushed[name] = summary["labelstudio"]["project_id"]
    assert len(set(pushed.values())) == 3  # one project per type, each label config accepted by Label Studio

    tasks = sorted(client.list_tasks(ls, pushed["lighting"]), key=lambda t: t["id"])
    assert len(tasks) == 6 and all(t["data"]["castlab_key"].startswith("lighting:typed-it:") for t in tasks)
    first, second = tasks[0], tasks[1]
    prediction = second["predictions"][-1]["result"]
    assert _choice(prediction, "luma_key") in ("low-key", "mid-key", "high-key")  # measured labels are offered
    client.create_annotation(ls, first["id"], [
        {"from_name": "type_caption", "to_name": "image", "type": "textarea",
         "value": {"text": ["moonlight through blinds, blue shadows"]}}])
    corrected = [r for r in prediction if r["from_name"] != "time_of_day"] + [
        {"from_name": "time_of_day", "to_name": "image", "type": "choices", "value": {"choices": ["night"]}}]
    client.create_annotation(ls, second["id"], corrected)

    counts = review_sync(run_dir=str(run), config_files=[str(override)])
    assert counts["lighting"] == {"reviewed": 2, "edited": 1, "tasks_answered": 2}
    assert counts["background"]["reviewed"] == 0 and counts["style"]["reviewed"] == 0
    records = {r["row_id"]: r for r in read_records(run, "lighting")}
    edited, relabelled = records[first["data"]["record"]], records[second["data"]["record"]]
    assert edited["review"]["caption"] == "moonlight through blinds, blue shadows"
    assert relabelled["review"]["labels"]["time_of_day"] == "night" and relabelled["review"]["caption"] is None

    built = dataset(run_dirs=[str(run)], dataset_type="lighting", out_dir=str(tmp_path / "datasets"),
                    config_files=[str(override)])
    meta = json.loads(Path(built["datasets"]["lighting"]["metadata"]).read_text())
    by_row = {e["row_id"]: e for e in meta["images"]}
    assert set(by_row) == set(records) and not meta["rejected"]  # every label has room under target_size_max
    assert by_row[edited["row_id"]]["caption"].endswith(", moonlight through blinds, blue shadows")
    assert by_row[edited["row_id"]]["caption_source"] == "reviewed"
    assert by_row[relabelled["row_id"]]["labels"]["time_of_day"] == "night"
    assert ", night," in by_row[relabelled["row_id"]]["caption"] + ","
    assert by_row[relabelled["row_id"]]["caption_source"] == "reviewed"


def test_pose_and_expression_reviews_round_trip(ls_env, tmp_path: Path):
    from run_builder import character_run

    from flows.dataset import dataset
    from flows.prepare import prepare
    from flows.review_sync import review_sync

    override = tmp_path / "instances.yaml"
    override.write_text(
        "types:\n  pose:\n    title: pose flow it\n  expression:\n    title: expression flow it\n"
        "pose:\n  min_confidence: 0.0\n"  # tiny ViTPose is unsure of everything: offer every keypoint
        "dataset:\n  resolution: 128\nmodels:\n  tiny:\n    embedder:\n      max_similarity: 1.0\n")
    run = Path(ls_env.workspace) / "runs" / "instances-flow-it"
    character_run(run, [{"identity": "Bo", "box": (48, 176, 96, 160), "shot": f"s{k}",
                         "extra": {"face_bbox": [100, 54, 156, 110]}} for k in range(3)], size=(192, 256),
                  video="inst-it")
    ls = client.connect(ls_env.url, ls_env.token)
    projects = {}
    for name in ("pose", "expression"):
        summary = prepare(run_dir=str(run), dataset_type=name, config_files=[str(override)])
        assert summary["ok"] == 3 and summary["labelstudio"]["new_tasks"] == 3, summary
        projects[name] = summary["labelstudio"]["project_id"]

    pose_task = sorted(client.list_tasks(ls, projects["pose"]), key=lambda t: t["id"])[0]
    predicted = pose_task["predictions"][-1]["result"]
    points = [r for r in predicted if r["type"] == "keypointlabels"]
    assert points and all(0 <= r["value"]["x"] <= 100 and 0 <= r["value"]["y"] <= 100 for r in points)  # in the crop
    joint = points[0]["value"]["keypointlabels"][0]
    moved = [dict(r, value={**r["value"], "x": 50.0, "y": 10.0}) if r["value"].get("keypointlabels") == [joint]
             else r for r in predicted if r["from_name"] != "category"]
    moved.append({"from_name": "category", "to_name": "image", "type": "choices", "value": {"choices": ["sitting"]}})
    client.create_annotation(ls, pose_task["id"], moved)
    face_task = sorted(client.list_tasks(ls, projects["expression"]), key=lambda t: t["id"])[0]
    assert "open_clip" in face_task["data"]["model_sentence"]
    client.create_annotation(ls, face_task["id"], [
        {"from_name": "expression", "to_name": "image", "type": "choices", "value": {"choices": ["surprised"]}}])

    counts = review_sync(run_dir=str(run), config_files=[str(override)])
    assert counts["pose"]["reviewed"] == 1 and counts["expression"]["reviewed"] == 1
    pose = next(r for r in read_records(run, "pose") if r["row_id"] == pose_task["data"]["record"])
    from castlab.pose.geometry import K

    placed = pose["review"]["keypoints"][K[joint]]
    assert placed == pytest.approx([0.5 * pose["size"][0], 0.1 * pose["size"][1], 1.0], abs=0.01)
    assert sum(p[2] for p in pose["review"]["keypoints"]) == len(points)  # the others stay where they were
    assert pose["review"]["labels"]["category"] == "sitting"

    built = dataset(run_dirs=[str(run)], dataset_type="pose", out_dir=str(tmp_path / "poses"),
                    config_files=[str(override)])
    meta = json.loads(Path(built["datasets"]["pose"]["metadata"]).read_text())
    entry = next(e for e in meta["images"] if e["row_id"] == pose["row_id"])
    assert entry["labels"]["category"] == "sitting" and ", sitting" in entry["caption"]
    assert (Path(built["datasets"]["pose"]["out_dir"]) / entry["conditioning"]).is_file()
    built = dataset(run_dirs=[str(run)], dataset_type="expression", out_dir=str(tmp_path / "faces"),
                    config_files=[str(override)])
    meta = json.loads(Path(built["datasets"]["expression"]["metadata"]).read_text())
    face = next(e for e in meta["images"] if e["row_id"] == face_task["data"]["record"])
    assert face["labels"]["expression"] == "surprised" and face["caption"].endswith(", surprised expression")


def test_a_dataset_of_an_unprepared_run_prepares_it_without_label_studio(ls_env, tmp_path: Path, monkeypatch):
    from flows.dataset import dataset

    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")  # nothing listens: no review tasks are pushed
    run = Path(ls_env.workspace) / "runs" / "unprepared-it"
    scene_run(run, scenes=1, per_scene=3, video="unprepared-it")
    override = tmp_path / "style.yaml"
    override.write_text("dataset:\n  resolution: 128\nmodels:\n  tiny:\n    embedder:\n      max_similarity: 1.0\n")
    built = dataset(run_dirs=[str(run)], dataset_type="style", out_dir=str(tmp_path / "d"),
                    config_files=[str(override)])["datasets"]["style"]
    assert built["images"] == 3 and len(read_records(run, "style")) == 3
    assert not (run / "style" / "push.json").exists()
