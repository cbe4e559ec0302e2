"""Propagated masks reach a real Label Studio as predictions, once, and come back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_media import make_video

from castlab.config import load_config
from castlab.frames.extract import extract_frames
from castlab.labelstudio import client
from castlab.labelstudio.projects.masks import push_propagation
from castlab.segment.propagate import propagate_instance

pytestmark = pytest.mark.integration


def test_propagation_is_pushed_once_per_frame(ls_server):
    cfg = load_config(extra={"labelstudio": {"masks_project_title": "castlab propagation it"}})
    run = Path(ls_server.workspace) / "runs" / "prop-it"
    run.parent.mkdir(parents=True, exist_ok=True)
    video = make_video(run.parent / "prop it.mp4", shots=("smooth", "sharp"), frames_per_shot=(12, 10),
                       size=(96, 64))
    rows = extract_frames(video, run, cfg, mode="scene")
    frame = rows[-1]
    mask = np.zeros((frame["height"], frame["width"]), bool)
    mask[10:50, 20:70] = True
    (run / "masks").mkdir(exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(run / "masks" / "seed.png")
    instance = {"row_id": f"inst:{frame['video_id']}:{frame['frame_index']}:0", "video_id": frame["video_id"],
                "shot_id": frame["shot_id"], "frame_index": frame["frame_index"],
                "mask_path": str(run / "masks" / "seed.png")}
    result = propagate_instance(cfg, run, instance)
    ls = client.connect(ls_server.url, ls_server.token)
    first = push_propagation(ls, result, run, cfg)
    again = push_propagation(ls, result, run, cfg)
    shot = next(s for s in json.loads((run / "shots.json").read_text())["videos"][frame["video_id"]]["shots"]
                if s["shot_id"] == frame["shot_id"])
    assert first["tasks"] == first["new_tasks"] == shot["frames"] == len(result["frames"])
    assert again["new_tasks"] == 0 and again["tasks"] == first["tasks"]
    tasks = client.list_tasks(ls, first["project_id"])
    mine = {t["data"]["frame_index"]: t for t in tasks if t["data"].get("propagated_from") == instance["row_id"]}
    assert sorted(mine) == [f["frame_index"] for f in result["frames"]]
    seed = next(f for f in result["frames"] if f["seed"])
    task = mine[seed["frame_index"]]
    predictions = task.get("predictions") or ls.predictions.list(task=task["id"])
    region = (predictions[0]["result"] if isinstance(predictions[0], dict) else predictions[0].result)[0]
    expected = np.asarray(Image.open(seed["mask_path"])) > 127
    assert np.array_equal(client.mask_from_result(region).astype(bool), expected)
