"""castlab track over a real extracted run: the reviewed instances of a frame become object ids with their
identities, masks follow the moving objects through chained windows, a departure is recorded as absence; the
results are reused, exported as Wan VACE clips, and turned into a showcase video."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from video_run import ColourPredictor, truth_mask, video_run

from castlab.config import load_config
from castlab.errors import InputError
from castlab.manifest import Manifest
from castlab.video.export import export_vace
from castlab.video.stage import RESULT_NAME, TRACKS_DIR, track, track_rows
from castlab.video.vace import CSV_COLUMNS

SEED = 4


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    cfg = load_config(extra={"propagation": {"max_frames": 8}, "video": {"vace": {"fps": None, "max_side": 64}}})
    run = tmp_path_factory.mktemp("video") / "run"
    manifest, frame = video_run(run, cfg, seed_frame=SEED)
    predictor = ColourPredictor()
    result = track(cfg, run, frame=frame["row_id"], predictor=predictor, model_version="colour-oracle")
    return cfg, run, frame, predictor, result


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_every_reviewed_instance_is_an_object_id_with_its_identity(tracked):
    _, run, frame, predictor, result = tracked
    assert [(o["obj_id"], o["identity"], o["instance"]) for o in result["objects"]] == [
        (1, "Mia", f"inst:{frame['video_id']}:{SEED}:1"), (2, "teapot", f"inst:{frame['video_id']}:{SEED}:2")]
    assert predictor.windows == [8, 8, 2, 5]  # 20 frames, windows of 8 chained (forwards, then back to frame 0)
    assert result["windows"] == 4 and result["first_frame"] == 0 and result["end_frame"] == 20


def test_masks_follow_the_moving_objects_and_a_departure_is_absence(tracked):
    _, run, _, _, result = tracked
    folder = run / TRACKS_DIR / result["track_id"]
    for entry in result["frames"]:
        f = entry["frame_index"]
        for obj in (1, 2):
            truth = truth_mask(obj, f)
            saved = entry["objects"].get(str(obj))
            if truth.sum() < 20:  # leaving the frame: a sliver at most
                continue
            assert saved is not None, (obj, f)
            mask = np.asarray(Image.open(folder / saved["mask_path"])) > 127
            assert iou(mask, truth) > 0.6, (obj, f)
    teapot = result["objects"][1]
    assert teapot["absent"] == [15, 16, 17, 18, 19] and teapot["present"] == 15
    assert all("2" not in e["objects"] for e in result["frames"][15:])


def test_the_track_is_written_logged_and_reused(tracked):
    cfg, run, frame, _, result = tracked
    folder = run / TRACKS_DIR / result["track_id"]
    assert json.loads((folder / RESULT_NAME).read_text())["track_id"] == result["track_id"]
    assert len(list((folder / "frames").glob("*.jpg"))) == 20
    log = (folder / "EXPERIMENT.md").read_text()
    assert "## Configuration" in log and "| 2 | teapot | teapot |" in log and "(strip.png)" in log
    assert Image.open(folder / "strip.png").width > Image.open(folder / "strip.png").height
    again = track(cfg, run, frame=frame["row_id"], predictor=object(), model_version="unused")
    assert again["reused"] and again["frames"] == result["frames"]
    rows = track_rows(result, run)
    assert [(r["row_id"].rsplit(":", 1)[1], r["identity"], r["track_absent"]) for r in rows] == [
        ("1", "Mia", 0), ("2", "teapot", 5)]


def test_bad_input_is_named(tracked, tmp_path):
    cfg, run, frame, _, _ = tracked
    with pytest.raises(InputError, match="has no instance 'inst:nope:1:0'"):
        track(cfg, run, instances=["inst:nope:1:0"], predictor=ColourPredictor())
    with pytest.raises(InputError, match="needs the frame"):
        track(cfg, run, query="teapot.", predictor=ColourPredictor())
    other = next(r for r in Manifest.for_run(run).rows(kind="frame") if r["row_id"] != frame["row_id"])
    with pytest.raises(InputError, match="has no reviewed instance"):
        track(cfg, run, frame=other["row_id"], predictor=ColourPredictor())
    shots = json.loads((run / "shots.json").read_text())
    short = json.loads(json.dumps(shots))
    entry = short["videos"][frame["video_id"]]["shots"][0]
    entry["start_frame"], entry["end_frame"] = SEED, SEED + 1
    (run / "shots.json").write_text(json.dumps(short))
    try:
        with pytest.raises(InputError, match="shorter than 2 frames"):
            track(cfg, run, frame=frame["row_id"], predictor=ColourPredictor(), force=True)
    finally:
        (run / "shots.json").write_text(json.dumps(shots))


def test_vace_export_of_reviewed_tracks(tracked, tmp_path):
    cfg, run, _, _, result = tracked
    folder = run / TRACKS_DIR / result["track_id"]
    with pytest.raises(InputError, match="--include-pending"):
        export_vace(run, tmp_path / "none", cfg)  # nobody reviewed the tracks yet
    review = {"frames": {}, "objects": {"1": {"decision": "accepted"}, "2": {"decision": "rejected"}}}
    (folder / "review.json").write_text(json.dumps(review))
    product = tmp_path / "product.png"
    Image.new("RGB", (40, 30), (10, 200, 10)).save(product)
    out = tmp_path / "vace"
    summary = export_vace(run, out, cfg, reference_image=product)
    assert [c["object"] for c in summary["clips"]] == [1] and summary["skipped"][0]["why"] == "rejected"
    with open(out / "metadata_vace.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS and rows[0]["prompt"] == "Mia"
    clip = out / rows[0]["video"]
    for name in ("video", "vace_video", "vace_video_mask"):
        with av.open(str(clip.parent / f"{name}.mp4")) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert (len(frames) - 1) % 4 == 0 and len(frames) == 17  # 20 frames → 4k + 1
        assert frames[0].shape[0] % 16 == 0 and frames[0].shape[1] % 16 == 0
    assert Image.open(clip.parent / "vace_reference_image.png").getpixel((5, 5)) == (10, 200, 10)
    again = export_vace(run, out, cfg, reference_image=product)  # resumes: the clip is kept as it is
    assert again["kept_from_before"] == 1 and (out / "EXPERIMENT.md").is_file()
    (folder / "review.json").unlink()


def test_the_reference_defaults_to_the_best_crop_on_white(tracked, tmp_path):
    cfg, run, _, _, _ = tracked
    summary = export_vace(run, tmp_path / "vace", cfg, include_pending=True)
    assert {c["label"] for c in summary["clips"]} == {"Mia", "teapot"}
    first = next(c for c in summary["clips"] if c["label"] == "teapot")
    ref = np.asarray(Image.open(tmp_path / "vace" / first["name"] / "vace_reference_image.png"))
    centre = ref[ref.shape[0] // 2, ref.shape[1] // 2]
    assert centre[2] > 150 and centre[0] < 100  # the blue object
    assert (ref[0, 0] == 255).all()  # cut out on white


def test_a_showcase_of_the_track_with_overlays(tracked, tmp_path):
    from castlab.video.showcase_track import showcase_track

    cfg, run, _, _, result = tracked
    summary = showcase_track(run, result["track_id"], cfg, out=tmp_path / "show.mp4", overlay=True)
    assert summary["frames_out"] == 20 and summary["width"] == 96
    with av.open(str(tmp_path / "show.mp4")) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    raw = np.asarray(Image.open(run / TRACKS_DIR / result["track_id"] / "frames" / "000000.jpg"))
    inside = truth_mask(1, 0)
    assert np.abs(first[inside].astype(int) - raw[inside].astype(int)).mean() > 10  # the mask is drawn on


def test_a_text_query_seeds_the_track_through_the_tiny_grounder_and_sam2(tracked):
    _, run, frame, _, _ = tracked
    cfg = load_config(extra={"propagation": {"max_frames": 8},
                             "video": {"grounding": {"box_threshold": 0.0, "text_threshold": 0.0, "max_boxes": 2}}})
    result = track(cfg, run, frame=frame["row_id"], query="Red Square", predictor=ColourPredictor(),
                   model_version="colour-oracle")
    assert [(o["obj_id"], o["source"], o["instance"]) for o in result["objects"]] == [(1, "query", None),
                                                                                      (2, "query", None)]
    assert [o["label"] for o in result["objects"]] == ["Red Square 1", "Red Square 2"]
    assert result["query"] == "Red Square" and result["objects"][0]["score"] >= result["objects"][1]["score"]
    assert len(result["frames"]) == 20  # random-weight boxes: noise masks, but the whole shot is answered
    again = track(cfg, run, frame=frame["row_id"], query="Red Square", predictor=object(), grounder=object())
    assert again["reused"] and again["track_id"] == result["track_id"]  # no detector, no SAM2 needed
    nothing = load_config(extra={"video": {"grounding": {"box_threshold": 1.0}}})
    with pytest.raises(InputError, match=r"found nothing.*box_threshold") as err:
        track(nothing, run, frame=frame["row_id"], query="teapot.", predictor=ColourPredictor())
    assert Path(str(frame["path"])).name in str(err.value)
