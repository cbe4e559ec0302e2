import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_media import make_video

from castlab.config import load_config
from castlab.errors import InputError
from castlab.frames.extract import extract_frames
from castlab.layers import safe_name
from castlab.manifest import Manifest
from castlab.models.segmenter import load_segmenter
from castlab.segment.background import union_mask
from castlab.segment.instances import segment_frames


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
        # soft alpha: SAM2's probability (> alpha_threshold) inside the mask, 0 outside
        assert np.array_equal(crop[..., 3] > 0, mask[y : y + h, x : x + w] > 0)
        assert crop[..., 3][crop[..., 3] > 0].min() >= int(segmenter.alpha * 255)
        assert np.array_equal(crop[..., :3][crop[..., 3] > 0], image[y : y + h, x : x + w][crop[..., 3] > 0])
        assert row["background_path"] == str(run.resolve() / "background" / f"{safe_name(kept['row_id'])}.png")
    background = np.asarray(Image.open(rows[0]["background_path"]))
    assert background.shape == image.shape
    union = np.any([np.asarray(Image.open(r["mask_path"])) > 0 for r in rows], axis=0)
    hole = union_mask([union], union.shape, cfg.segmentation.background_dilate_px)
    assert np.array_equal(background[~hole], image[~hole])  # only the characters (and a margin) are inpainted
    results = json.loads((run / "segmentation_results.json").read_text())
    assert results["model_version"] == segmenter.model_version
    assert [f["row_id"] for f in results["frames"]] == [kept["row_id"]]
    listed = results["frames"][0]["instances"]
    assert [i["row_id"] for i in listed] == [r["row_id"] for r in rows]
    assert all((run / i["mask_path"]).is_file() for i in listed)
    assert results["frames"][0]["background_path"] == f"background/{safe_name(kept['row_id'])}.png"
    assert all(i["background_path"] == results["frames"][0]["background_path"] for i in listed)
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


def test_character_aware_segmentation_prompts_from_faces_and_scores_everything(segmenter, cfg, tmp_path: Path):
    from skimage import data as skdata

    from castlab.models.embedder import load_embedder
    from castlab.segment.characters import CharacterScorer, EvidenceDetector

    astronaut = skdata.astronaut()
    frame = np.zeros((600, 1100, 3), np.uint8)
    frame[40:552, 20:532], frame[40:552, 560:1072] = astronaut, astronaut[:, ::-1]
    path = tmp_path / "two faces.png"
    Image.fromarray(frame).save(path)
    row = {"row_id": "frame:ab:7", "kind": "frame", "status": "kept", "path": str(path), "video_id": "ab",
           "frame_index": 7, "shot_id": "ab_s0000"}
    detector = EvidenceDetector.from_config(cfg)
    faces = [e for e in detector.detect(frame) if e.kind == "face"]
    assert len(faces) >= 2
    scorer = CharacterScorer.from_config(load_embedder(cfg), cfg)
    rows = segment_frames(segmenter, [row], tmp_path / "run", cfg, detector=detector, scorer=scorer)
    assert 0 < len(rows) <= int(cfg.segmentation.max_instances_per_frame)
    assert all(r["source"] in ("face", "person", "auto") and 0.0 < r["character_score"] < 1.0 for r in rows)
    results = json.loads((tmp_path / "run" / "segmentation_results.json").read_text())
    listed = results["frames"][0]["instances"]
    assert [i["source"] for i in listed] == [r["source"] for r in rows]
    for inst in listed:  # an evidence instance names the box that prompted it
        assert (inst["evidence_box"] is not None) == (inst["source"] != "auto")
    sources = [r["source"] for r in rows]
    assert sources == sorted(sources, key=lambda s: s == "auto")  # evidence first


def test_stage_run_chunks_the_frames_and_saves_the_manifest(segmenter, tmp_path: Path):
    """segment.run: the same rows in chunks of one frame as in one go, saved; results list every kept frame."""
    from castlab import segment

    video = make_video(tmp_path / "clip.mp4", shots=("sharp",), frames_per_shot=24)
    run = tmp_path / "run"
    frames = extract_frames(video, run, load_config(extra={"frames": {"interval_seconds": 0.3}}), mode="interval")
    manifest = Manifest.for_run(run)
    manifest.add_rows(frames)
    manifest.save()
    one_go = segment_frames(segmenter, manifest.rows(kind="frame"), tmp_path / "one-go", load_config(profile="tiny"))
    chunked_cfg = load_config(profile="tiny", extra={"segmentation": {"chunk_frames": 1}})
    summary = segment.run(run, chunked_cfg, segment.SegmentModels(segmenter))
    saved = Manifest.for_run(run).rows(kind="instance")
    assert summary["instances"] == len(saved) == len(one_go) > 0
    assert [r["bbox"] for r in saved] == [r["bbox"] for r in one_go]
    results = json.loads((run / "segmentation_results.json").read_text())
    kept = [f["row_id"] for f in frames if f["status"] == "kept"]
    assert [f["row_id"] for f in results["frames"]] == kept and len(kept) >= 2
    assert sum(len(f["instances"]) for f in results["frames"]) == results["instances"] == len(saved)
