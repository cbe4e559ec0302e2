"""Mask propagation through a shot with SAM2's real video predictor (tiny profile, random weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from synthetic_media import make_video

from castlab.config import load_config
from castlab.errors import InputError
from castlab.frames.extract import extract_frames
from castlab.segment.propagate import propagate_instance


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("prop")
    video = make_video(root / "two shots.mp4", shots=("sharp", "smooth"), frames_per_shot=(20, 16), size=(128, 96))
    run = root / "run"
    cfg = load_config()
    rows = extract_frames(video, run, cfg, mode="scene")
    return cfg, run, rows


def _instance(run, frame, mask):
    path = run / "masks" / "seed.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return {"row_id": f"inst:{frame['video_id']}:{frame['frame_index']}:0", "video_id": frame["video_id"],
            "shot_id": frame["shot_id"], "frame_index": frame["frame_index"], "mask_path": str(path)}


def test_mask_is_carried_through_every_frame_of_the_shot(curated):
    cfg, run, rows = curated
    shots = json.loads((run / "shots.json").read_text())["videos"][rows[0]["video_id"]]["shots"]
    second = shots[1]
    frame = next(r for r in rows if r["shot_id"] == second["shot_id"])
    mask = np.zeros((frame["height"], frame["width"]), bool)
    mask[20:70, 30:90] = True
    result = propagate_instance(cfg, run, _instance(run, frame, mask))
    indices = [f["frame_index"] for f in result["frames"]]
    assert indices == list(range(second["start_frame"], second["end_frame"]))  # the whole shot, nothing else
    assert result["profile"] == "tiny" and result["model_version"].startswith("tiny-")
    seed = next(f for f in result["frames"] if f["seed"])
    assert seed["frame_index"] == frame["frame_index"]
    got = np.asarray(Image.open(seed["mask_path"])) > 127
    assert got.shape == mask.shape and (got & mask).sum() / (got | mask).sum() > 0.9  # the seed mask as given
    first_frame = np.asarray(Image.open(result["frames"][0]["frame_path"]))
    assert first_frame.shape == (frame["height"], frame["width"], 3)
    with pytest.raises(InputError, match="--force"):
        propagate_instance(cfg, run, _instance(run, frame, mask))


def test_bad_inputs_name_the_problem(curated):
    cfg, run, rows = curated
    frame = rows[0]
    with pytest.raises(InputError, match="mask is 10x10"):
        propagate_instance(cfg, run, _instance(run, frame, np.ones((10, 10), bool)), force=True)
    with pytest.raises(InputError, match="no shot"):
        propagate_instance(cfg, run, {**_instance(run, frame, np.ones((10, 10), bool)), "shot_id": "x"}, force=True)
