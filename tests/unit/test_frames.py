import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_media import FPS, corrupt_middle, make_video

from castlab.config import load_config
from castlab.errors import ConfigError, InputError
from castlab.frames import _EvenSampler, _Pending, extract_frames, scene_detector_threshold
from castlab.video import video_id

PER_SHOT = 24


@pytest.fixture(scope="module")
def two_shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shot 0: sharp texture (frames 0-23); shot 1: smooth, blurry gradient (frames 24-47)."""
    return make_video(tmp_path_factory.mktemp("media") / "two shots.mp4", frames_per_shot=PER_SHOT)


def _shots(out: Path, vid: str) -> dict:
    return json.loads((out / "shots.json").read_text())["videos"][vid]


def _shot_of(shots: list[dict], index: int) -> str:
    return next(s["shot_id"] for s in shots if s["start_frame"] <= index < s["end_frame"])


def test_scene_mode_spreads_frames_over_detected_shots(two_shots: Path, tmp_path: Path):
    cfg = load_config()
    rows = extract_frames(two_shots, tmp_path, cfg, mode="scene")
    vid = video_id(two_shots)
    entry = _shots(tmp_path, vid)
    shots = entry["shots"]
    assert [(s["start_frame"], s["end_frame"]) for s in shots] == [(0, PER_SHOT), (PER_SHOT, 2 * PER_SHOT)]
    assert shots[1]["start_time"] == pytest.approx(PER_SHOT / FPS)
    assert entry["frames_decoded"] == 2 * PER_SHOT and entry["decode_errors"] == []
    k = cfg.get("frames.frames_per_shot")
    assert len(rows) == 2 * k
    for shot in shots:
        idx = [r["frame_index"] for r in rows if r["shot_id"] == shot["shot_id"]]
        assert len(idx) == k
        gaps = np.diff(idx)
        assert gaps.min() >= 2 and idx[0] < shot["start_frame"] + PER_SHOT / k  # spread, not bunched
        assert idx[-1] >= shot["end_frame"] - PER_SHOT / k
    for row in rows:
        assert row["row_id"] == f"frame:{vid}:{row['frame_index']}"
        assert row["kind"] == "frame" and row["video_id"] == vid and row["video"] == str(two_shots.resolve())
        assert row["shot_id"] == _shot_of(shots, row["frame_index"])
        assert row["time_s"] == pytest.approx(row["frame_index"] / FPS, abs=1e-3)
        path = Path(row["path"])
        assert path.is_absolute() and path.name == f"{vid}_{row['frame_index']:06d}.jpg"
        assert Image.open(path).size == (row["width"], row["height"]) == (320, 256)


def test_blurry_and_small_frames_stay_as_rejected_rows(two_shots: Path, tmp_path: Path):
    cfg = load_config()
    rows = extract_frames(two_shots, tmp_path / "a", cfg, mode="scene")
    threshold = cfg.get("quality.blur_threshold")
    sharp = [r for r in rows if r["frame_index"] < PER_SHOT]
    blurry = [r for r in rows if r["frame_index"] >= PER_SHOT]
    assert all(r["status"] == "kept" and r["reject_reason"] is None and r["blur"] >= threshold for r in sharp)
    for r in blurry:
        assert r["status"] == "rejected" and r["blur"] < threshold
        assert r["reject_reason"] == f"blur {r['blur']:.1f} < {threshold:g}"
        assert Path(r["path"]).is_file()  # rejected frames are still written for review

    # The threshold really comes from the config: raise it above the sharpest frame and every frame fails.
    strict = load_config(extra={"quality": {"blur_threshold": max(r["blur"] for r in sharp) + 1.0}})
    assert all(r["status"] == "rejected" for r in extract_frames(two_shots, tmp_path / "strict", strict, mode="scene"))

    small = make_video(tmp_path / "small.mp4", shots=("sharp",), frames_per_shot=12, size=(160, 128))
    rows = extract_frames(small, tmp_path / "b", cfg, mode="interval")
    assert rows and all(r["status"] == "rejected" for r in rows)
    assert all(r["reject_reason"] == "too small: 160x128 < 256x256" for r in rows)


def test_interval_mode_samples_by_time_with_shot_ids(two_shots: Path, tmp_path: Path):
    cfg = load_config(extra={"frames": {"interval_seconds": 0.5}})
    rows = extract_frames(two_shots, tmp_path, cfg, mode="interval")
    assert [r["frame_index"] for r in rows] == [0, 12, 24, 36]
    assert [r["time_s"] for r in rows] == pytest.approx([0.0, 0.5, 1.0, 1.5], abs=1e-3)
    shots = _shots(tmp_path, rows[0]["video_id"])["shots"]
    assert [r["shot_id"] for r in rows] == [shots[0]["shot_id"]] * 2 + [shots[1]["shot_id"]] * 2
    assert all(r["selected_by"] == "interval" for r in rows)


def test_hybrid_mode_and_shots_json_merges_videos(two_shots: Path, tmp_path: Path):
    cfg = load_config(extra={"frames": {"interval_seconds": 0.5}})
    hybrid = extract_frames(two_shots, tmp_path, cfg, mode="hybrid")
    scene_only = extract_frames(two_shots, tmp_path / "s", cfg, mode="scene")
    assert {r["frame_index"] for r in hybrid} == {0, 12, 24, 36} | {r["frame_index"] for r in scene_only}
    other = make_video(tmp_path / "other.mp4", shots=("smooth", "sharp"), frames_per_shot=18)
    extract_frames(other, tmp_path, cfg, mode="scene")
    videos = json.loads((tmp_path / "shots.json").read_text())["videos"]
    assert set(videos) == {video_id(two_shots), video_id(other)}
    assert videos[video_id(other)]["mode"] == "scene" and videos[video_id(two_shots)]["mode"] == "hybrid"


def test_threshold_mapping_and_bad_settings(two_shots: Path, tmp_path: Path):
    def with_threshold(value: float):
        return load_config(extra={"frames": {"scene_threshold": value}})

    default = load_config()
    assert scene_detector_threshold(default) == pytest.approx(default.get("frames.scene_threshold") * 100)
    assert scene_detector_threshold(with_threshold(0.27)) == pytest.approx(27.0)  # ContentDetector's default
    with pytest.raises(ConfigError, match="frames.scene_threshold"):
        scene_detector_threshold(with_threshold(30))
    with pytest.raises(ConfigError, match="frames.mode"):
        extract_frames(two_shots, tmp_path, default, mode="every-frame")
    with pytest.raises(InputError, match="does not exist"):
        extract_frames(tmp_path / "missing.mp4", tmp_path, default)
    # A threshold above any frame difference: one shot for the whole video.
    rows = extract_frames(two_shots, tmp_path, with_threshold(2.5), mode="scene")
    assert len({r["shot_id"] for r in rows}) == 1


def test_corrupt_packets_are_recorded_and_decoding_goes_on(two_shots: Path, tmp_path: Path):
    damaged = corrupt_middle(two_shots, tmp_path / "damaged.mp4")
    cfg = load_config(extra={"frames": {"interval_seconds": 1 / FPS}})  # every frame
    rows = extract_frames(damaged, tmp_path / "out", cfg, mode="interval")
    entry = _shots(tmp_path / "out", video_id(damaged))
    assert entry["decode_errors"], "damaged packets were not recorded"
    assert entry["frames_decoded"] >= PER_SHOT  # it went on past the damage
    assert max(r["frame_index"] for r in rows) == entry["frames_decoded"] - 1
    flagged = {e["frame"] for e in entry["decode_errors"] if "frame" in e}
    for row in rows:
        if row["frame_index"] in flagged:
            assert row["status"] == "rejected" and "corrupt frame" in row["reject_reason"]


def test_even_sampler_is_bounded_and_spread():
    k = 5
    sampler = _EvenSampler(k, start=100)
    for i in range(100, 1100):
        sampler.add(_Pending(i, i / 24, None))  # type: ignore[arg-type]
        assert len(sampler.items) <= 4 * k + 1
    picked = [p.index for p in sampler.pick(1000)]
    assert len(picked) == k
    targets = [100 + int((j + 0.5) * 1000 / k) for j in range(k)]
    assert max(abs(p - t) for p, t in zip(picked, targets, strict=True)) <= sampler.stride
    short = _EvenSampler(k, start=0)
    for i in range(3):
        short.add(_Pending(i, 0.0, None))  # type: ignore[arg-type]
    assert [p.index for p in short.pick(3)] == [0, 1, 2]
