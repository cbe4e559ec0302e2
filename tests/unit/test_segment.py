import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_media import make_video

from castlab.config import load_config
from castlab.errors import InputError
from castlab.frames import extract_frames
from castlab.manifest import Manifest
from castlab.models.segmenter import load_segmenter
from castlab.segment import segment_frames


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


@pytest.fixture(scope="module")
def segmenter(cfg):
    return load_segmenter(cfg)


def test_segment_frames_writes_layers_rows_and_results(segmenter, cfg, tmp_path: Path):
    video = make_video(tmp_path / "clip.mp4", shots=("sharp", "smooth"), frames_per_shot=16)
    run = tmp_path / "run"
    frames = extract_frames(video, run, load_config(extra={"frames": {"frames_per_shot": 1}}), mode="scene")
    assert [f["status"] for f in frames] == ["kept", "rejected"]  # the smooth shot is blurry
    manifest = Manifest.for_run(run)
    manifest.add_rows(frames)
    manifest.save()
    # As the curate flow does: rows come back from the Parquet manifest.
    rows = segment_frames(segmenter, Manifest.for_run(run).rows(kind="frame"), run, cfg)
    kept = frames[0]
    assert rows and all(r["parent_id"] == kept["row_id"] for r in rows)  # rejected frames are not segmented
    image = np.asarray(Image.open(kept["path"]).convert("RGB"))
    for k, row in enumerate(rows):
        assert row["row_id"] == f"inst:{kept['video_id']}:{kept['frame_index']}:{k}"
        assert row["kind"] == "instance" and row["status"] == "kept"
        assert row["model_version"] == segmenter.model_version and row["model_version"].startswith("tiny-")
        assert (row["shot_id"], row["frame_index"]) == (kept["shot_id"], kept["frame_index"])
        mask = np.asarray(Image.open(row["mask_path"]))
        assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 255}
        assert int((mask > 0).sum()) == row["area"] > 0
        x, y, w, h = row["bbox"]
        crop = np.asarray(Image.open(row["crop_path"]))
        assert crop.shape == (h, w, 4)
        assert np.array_equal(crop[..., 3], mask[y : y + h, x : x + w])
        assert np.array_equal(crop[..., :3][crop[..., 3] > 0], image[y : y + h, x : x + w][crop[..., 3] > 0])
    results = json.loads((run / "segmentation_results.json").read_text())
    assert results["model_version"] == segmenter.model_version
    assert [f["row_id"] for f in results["frames"]] == [kept["row_id"]]
    listed = results["frames"][0]["instances"]
    assert [i["row_id"] for i in listed] == [r["row_id"] for r in rows]
    assert all((run / i["mask_path"]).is_file() for i in listed)
    # The rows fit the run manifest next to their frames.
    manifest.add_rows(rows)
    manifest.save()
    again = Manifest.load(run / "manifest.parquet")
    assert len(again.rows(kind="instance")) == len(rows) and len(again.rows(kind="frame")) == 2


def test_missing_frame_file_names_it(segmenter, cfg, tmp_path: Path):
    row = {"row_id": "frame:abc:1", "kind": "frame", "video_id": "abc", "frame_index": 1,
           "path": str(tmp_path / "gone.jpg"), "status": "kept"}
    with pytest.raises(InputError, match="gone.jpg: frame image does not exist"):
        segment_frames(segmenter, [row], tmp_path, cfg)
