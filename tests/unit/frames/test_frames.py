import json
import random
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image
from scenedetect import ContentDetector, FrameTimecode, detect
from scenedetect.detector import FlashFilter
from synthetic_media import (
    FPS,
    blurred,
    corrupt_middle,
    drop_packets,
    ffmpeg,
    make_video,
    sharp_frame,
    smooth_frame,
    with_display_matrix,
    write_video,
)

from castlab.config import load_config
from castlab.errors import ConfigError, InputError
from castlab.frames.decode_pass import FramePass, Segment
from castlab.frames.extract import Extractor, extract_frames
from castlab.frames.scene_cuts import CutFilter, content_score, scene_detector_threshold
from castlab.frames.shot_sampler import Candidate, ShotSampler
from castlab.frames.video import video_id

PER_SHOT = 24


@pytest.fixture(scope="module")
def two_shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shot 0: sharp texture (frames 0-23); shot 1: smooth, blurry gradient (frames 24-47)."""
    return make_video(tmp_path_factory.mktemp("media") / "two shots.mp4", frames_per_shot=PER_SHOT)


@pytest.fixture(scope="module")
def many_shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven shots of uneven length, one of them shorter than min_scene_length (the detector merges it)."""
    kinds = ("sharp", "smooth", "sharp", "smooth", "sharp", "smooth", "sharp")
    return make_video(tmp_path_factory.mktemp("media") / "many.mp4", kinds, (30, 18, 6, 40, 22, 35, 25))


def _cfg(**frames):
    return load_config(extra={"frames": frames}) if frames else load_config()


def _entry(out: Path, vid: str) -> dict:
    return json.loads((out / "shots.json").read_text())["videos"][vid]


def _shot_of(shots: list[dict], index: int) -> str:
    return next(s["shot_id"] for s in shots if s["start_frame"] <= index < s["end_frame"])


def pts_of(video: Path) -> list[int]:
    with av.open(str(video)) as container:
        return [frame.pts for frame in container.decode(video=0)]


def _slices(start: int, end: int, k: int) -> list[range]:
    n = end - start
    return [range(start + j * n // k, start + (j + 1) * n // k) for j in range(min(k, n))]


def test_scene_mode_one_frame_per_slice_of_each_detected_shot(two_shots: Path, tmp_path: Path):
    cfg = load_config()
    rows = extract_frames(two_shots, tmp_path, cfg, mode="scene")
    vid = video_id(two_shots)
    entry = _entry(tmp_path, vid)
    shots = entry["shots"]
    assert [(s["start_frame"], s["end_frame"]) for s in shots] == [(0, PER_SHOT), (PER_SHOT, 2 * PER_SHOT)]
    assert shots[1]["start_time"] == pytest.approx(PER_SHOT / FPS)
    assert shots[1]["end_time"] == pytest.approx(2 * PER_SHOT / FPS)
    assert entry["frames_decoded"] == 2 * PER_SHOT and entry["decode_errors"] == []
    assert entry["orientation"] == "none" and entry["variable_frame_rate"] is False
    k = cfg.frames.frames_per_shot
    assert len(rows) == 2 * k
    for shot in shots:
        idx = [r["frame_index"] for r in rows if r["shot_id"] == shot["shot_id"]]
        assert [sum(i in part for i in idx) for part in _slices(shot["start_frame"], shot["end_frame"], k)] == [1] * k
    for row in rows:
        assert row["row_id"] == f"frame:{vid}:{row['frame_index']}"
        assert row["kind"] == "frame" and row["video_id"] == vid and row["video"] == str(two_shots.resolve())
        assert row["shot_id"] == _shot_of(shots, row["frame_index"]) and row["selected_by"] == "scene"
        assert row["time_s"] == pytest.approx(row["frame_index"] / FPS, abs=1e-3)
        path = Path(row["path"])
        assert path.is_absolute() and path.name == f"{vid}_{row['frame_index']:06d}.jpg"
        assert Image.open(path).size == (row["width"], row["height"]) == (320, 256)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == sorted(Path(r["path"]).name for r in rows)


def test_sharpest_frame_of_each_slice_is_kept(tmp_path: Path):
    """One shot of 40 frames, out of focus except one frame per slice, never at a slice centre."""
    rng = np.random.default_rng(5)
    sharp_at = {1, 14, 17, 30, 33}  # slices [0,8) [8,16) [16,24) [24,32) [32,40); centres 3.5 11.5 19.5 ...
    pictures = []
    for i in range(40):
        img = sharp_frame(256, 320, i, rng)
        pictures.append(img if i in sharp_at else blurred(img))
    video = write_video(tmp_path / "focus.mp4", pictures)
    cfg = _cfg(scene_threshold=2.5)  # a single shot: this is about sampling, not cuts
    rows = extract_frames(video, tmp_path / "out", cfg, mode="scene")
    assert [r["frame_index"] for r in rows] == sorted(sharp_at)
    assert len({r["shot_id"] for r in rows}) == 1
    assert all(r["status"] == "kept" for r in rows)
    # The quality gate agrees: these frames are much sharper than their blurred neighbours.
    everything = extract_frames(video, tmp_path / "all", _cfg(scene_threshold=2.5, interval_seconds=1 / FPS),
                                mode="interval")
    blur = {r["frame_index"]: r["blur"] for r in everything}
    assert min(blur[i] for i in sharp_at) > 4 * max(v for i, v in blur.items() if i not in sharp_at)


def test_blurry_and_small_frames_stay_as_rejected_rows(two_shots: Path, tmp_path: Path):
    cfg = load_config()
    rows = extract_frames(two_shots, tmp_path / "a", cfg, mode="scene")
    threshold = cfg.quality.blur_threshold
    sharp = [r for r in rows if r["frame_index"] < PER_SHOT]
    smooth = [r for r in rows if r["frame_index"] >= PER_SHOT]
    assert all(r["status"] == "kept" and r["reject_reason"] is None and r["blur"] >= threshold for r in sharp)
    for r in smooth:
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
    rows = extract_frames(two_shots, tmp_path, _cfg(interval_seconds=0.5), mode="interval")
    assert [r["frame_index"] for r in rows] == [0, 12, 24, 36]
    assert [r["time_s"] for r in rows] == pytest.approx([0.0, 0.5, 1.0, 1.5], abs=1e-3)
    shots = _entry(tmp_path, rows[0]["video_id"])["shots"]
    assert [r["shot_id"] for r in rows] == [shots[0]["shot_id"]] * 2 + [shots[1]["shot_id"]] * 2
    assert all(r["selected_by"] == "interval" for r in rows)


def test_hybrid_is_the_union_without_redundant_interval_frames(two_shots: Path, tmp_path: Path):
    window = 2
    cfg = _cfg(interval_seconds=0.25, frames_per_shot=2, hybrid_window=window)
    hybrid = {r["frame_index"]: r for r in extract_frames(two_shots, tmp_path / "h", cfg, mode="hybrid")}
    picks = {r["frame_index"] for r in extract_frames(two_shots, tmp_path / "s", cfg, mode="scene")}
    interval = [r["frame_index"] for r in extract_frames(two_shots, tmp_path / "i", cfg, mode="interval")]
    assert interval == list(range(0, 2 * PER_SHOT, 6))
    shots = _entry(tmp_path / "h", video_id(two_shots))["shots"]

    def near_pick(index: int) -> bool:  # within the window of a scene pick of the same shot
        return any(abs(index - p) <= window and _shot_of(shots, p) == _shot_of(shots, index) for p in picks)

    redundant = {i for i in interval if i not in picks and near_pick(i)}
    assert set(hybrid) == picks | (set(interval) - redundant)
    assert redundant and set(interval) - redundant - picks  # the case covers both outcomes
    for index, row in hybrid.items():
        if index not in picks:
            assert row["selected_by"] == "interval" and not near_pick(index)
        elif index in interval or any(abs(i - index) <= window for i in redundant):
            assert row["selected_by"] == "scene+interval"
        else:
            assert row["selected_by"] == "scene"
        assert row["shot_id"] == _shot_of(shots, index)
    files = sorted(p.name for p in (tmp_path / "h" / "frames").iterdir())
    assert files == sorted(Path(r["path"]).name for r in hybrid.values())  # dropped frames leave no file


def test_shots_json_merges_videos(two_shots: Path, tmp_path: Path):
    extract_frames(two_shots, tmp_path, load_config(), mode="hybrid")
    other = make_video(tmp_path / "other.mp4", shots=("smooth", "sharp"), frames_per_shot=18)
    extract_frames(other, tmp_path, load_config(), mode="scene")
    videos = json.loads((tmp_path / "shots.json").read_text())["videos"]
    assert set(videos) == {video_id(two_shots), video_id(other)}
    assert videos[video_id(other)]["mode"] == "scene" and videos[video_id(two_shots)]["mode"] == "hybrid"


def test_cuts_equal_full_decode_content_detector(many_shots: Path, tmp_path: Path):
    cfg = load_config()
    threshold, min_len = scene_detector_threshold(cfg), cfg.frames.min_scene_length
    reference = [s[0].frame_num for s in detect(str(many_shots), ContentDetector(threshold, min_len))[1:]]
    assert reference == [30, 48, 94, 116, 151]  # the 6-frame shot at 48 merges with the next one
    extract_frames(many_shots, tmp_path, cfg, mode="scene", workers=1)
    shots = _entry(tmp_path, video_id(many_shots))["shots"]
    assert [s["start_frame"] for s in shots[1:]] == reference
    assert all(a["end_frame"] == b["start_frame"] for a, b in zip(shots, shots[1:], strict=False))


@pytest.mark.parametrize("mode", ["scene", "interval", "hybrid"])
def test_parallel_passes_give_exactly_the_sequential_result(many_shots: Path, tmp_path: Path, mode: str):
    cfg = _cfg(segment_min_frames=10, interval_seconds=0.5)
    results = {}
    for workers in (1, 2, 3, 5):
        out = tmp_path / f"w{workers}"
        rows = extract_frames(many_shots, out, cfg, mode=mode, workers=workers)
        entry = _entry(out, video_id(many_shots))
        files = sorted(p.name for p in (out / "frames").iterdir())
        assert files == sorted(Path(r["path"]).name for r in rows)  # no temporary file is left
        results[workers] = (
            [{k: v for k, v in r.items() if k != "path"} for r in rows], entry["shots"], entry["decode_errors"]
        )
        if workers > 1:
            assert entry["passes"] > workers  # split, and shots across a split decoded again
            assert 0 < entry["redone_frames"] < len(pts_of(many_shots))
    assert results[2] == results[1] and results[3] == results[1] and results[5] == results[1]


@pytest.mark.parametrize(("split", "redone"), [(24, 30), (36, 42)])
def test_shots_a_pass_cannot_settle_are_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: int,
                                               redone: int):
    """Cuts at 30, 42 (merged away: 12 < min_scene_length) and 72, the video split at `split`.

    Split at 24: the shot [0, 30) straddles the split and is decoded again; the second pass finds the cut
    6 frames after its start (its detector starts as in mid-video). Split at 36: the second pass cannot
    know the cut at 30 is so close and reports 42; the replay over the whole video disagrees, so the shot
    [30, 72) is decoded again (its shot from 72 on is right).
    """
    video = make_video(tmp_path / "flash.mp4", ("sharp", "smooth", "sharp", "smooth"), (30, 12, 30, 24),
                       options={"g": "6", "keyint_min": "6", "sc_threshold": "0", "bf": "0"})
    cfg = _cfg(segment_min_frames=10)
    sequential = extract_frames(video, tmp_path / "one", cfg, mode="scene", workers=1)
    one = _entry(tmp_path / "one", video_id(video))
    assert [s["start_frame"] for s in one["shots"]] == [0, 30, 72]

    def split_there(self):
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            stamp = stream.index_entries[split].timestamp
            first = self._first_packet_pts(container, stream, stamp)
        return [Segment(0, stop_pts=first, tail_closed=False),
                Segment(1, seek_pts=stamp, start_pts=first, offset=None, head_closed=False, tag="p1")]

    monkeypatch.setattr(Extractor, "_plan", split_there)
    parallel = extract_frames(video, tmp_path / "two", cfg, mode="scene", workers=2)
    two = _entry(tmp_path / "two", video_id(video))
    assert two["passes"] == 3 and two["redone_frames"] == redone
    assert [{k: v for k, v in r.items() if k != "path"} for r in parallel] == [
        {k: v for k, v in r.items() if k != "path"} for r in sequential]
    assert two["shots"] == one["shots"]
    assert sorted(p.name for p in (tmp_path / "two" / "frames").iterdir()) == sorted(
        Path(r["path"]).name for r in parallel)


def test_content_score_is_content_detectors_score():
    rng = np.random.default_rng(1)
    reference = ContentDetector()
    previous = None
    for i in range(12):
        bgr = rng.integers(0, 256, (36, 64, 3), dtype=np.uint8) if i % 3 else np.full((36, 64, 3), i * 20, np.uint8)
        expected = reference._calculate_frame_score(FrameTimecode(i, fps=24.0), bgr)
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        if previous is not None:
            assert content_score(previous, hsv) == expected  # bit for bit
        previous = hsv


@pytest.mark.parametrize("length", [0, 1, 3, 15])
def test_cut_filter_matches_flash_filter_fed_every_frame(length: int):
    rng = random.Random(length)
    fps = Fraction(24)
    for _ in range(300):
        frames = rng.randint(1, 120)
        above = {i for i in range(frames) if rng.random() < rng.choice([0.03, 0.2, 0.5])}
        dense = FlashFilter(mode=FlashFilter.Mode.MERGE, length=length)
        expected = [t.frame_num for i in range(frames)
                    for t in dense.filter(timecode=FrameTimecode(i, fps=fps), above_threshold=i in above)]
        sparse = CutFilter(length, fps)
        assert [c for i in range(frames) for c in sparse.feed(i, i in above)] == expected


def test_shot_sampler_is_bounded_spread_and_prefers_sharp_frames():
    k = 5
    sampler = ShotSampler(k, start=100)
    rng = np.random.default_rng(0)
    for i in range(100, 1100):
        sampler.add(Candidate(i, i / 24, None, sharp=float(rng.random()) + (10.0 if i % 97 == 0 else 0.0)))
        assert len(sampler.blocks) <= 4 * k
    picked = sampler.pick(1000)
    assert len(picked) == k
    for item, part in zip(picked, _slices(100, 1100, k), strict=True):
        assert item.index in part
        best = [i for i in part if i % 97 == 0]
        assert not best or item.index in best  # a much sharper frame in the slice always wins
    corrupt = ShotSampler(1, start=0)
    corrupt.add(Candidate(0, 0.0, None, sharp=1.0))
    corrupt.add(Candidate(1, 0.0, None, sharp=99.0, corrupt=True))
    assert [p.index for p in corrupt.pick(2)] == [0]  # a corrupt frame only when nothing else is there
    short = ShotSampler(k, start=0)
    for i in range(3):
        short.add(Candidate(i, 0.0, None))
    assert [p.index for p in short.pick(3)] == [0, 1, 2]


def test_decoded_frames_held_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    video = make_video(tmp_path / "long shot.mp4", ("sharp", "smooth"), (150, 60), size=(160, 128))
    held = {"pending": 0, "blocks": 0}
    real_commit, real_add = FramePass._commit, ShotSampler.add

    def commit(self, item):
        held["pending"] = max(held["pending"], len(self._pending))
        return real_commit(self, item)

    def add(self, item):
        real_add(self, item)
        held["blocks"] = max(held["blocks"], len(self.blocks))

    monkeypatch.setattr(FramePass, "_commit", commit)
    monkeypatch.setattr(ShotSampler, "add", add)
    cfg = load_config()
    extract_frames(video, tmp_path / "out", cfg, mode="scene", workers=1)
    assert held["blocks"] <= 4 * cfg.frames.frames_per_shot
    assert held["pending"] <= cfg.frames.min_scene_length + 1  # only around the one cut


def test_threshold_mapping_and_bad_settings(two_shots: Path, tmp_path: Path):
    default = load_config()
    assert scene_detector_threshold(default) == pytest.approx(default.frames.scene_threshold * 100)
    assert scene_detector_threshold(_cfg(scene_threshold=0.27)) == pytest.approx(27.0)  # ContentDetector's default
    with pytest.raises(ConfigError, match="frames.scene_threshold"):
        scene_detector_threshold(_cfg(scene_threshold=30))
    with pytest.raises(ConfigError, match="frames.mode"):
        extract_frames(two_shots, tmp_path, default, mode="every-frame")
    with pytest.raises(ConfigError, match="frames.workers"):
        extract_frames(two_shots, tmp_path, _cfg(workers=0))
    with pytest.raises(ConfigError, match="frames.hybrid_window"):
        extract_frames(two_shots, tmp_path, _cfg(hybrid_window=-1))
    with pytest.raises(InputError, match="does not exist"):
        extract_frames(tmp_path / "missing.mp4", tmp_path, default)
    # A threshold above any frame difference: one shot for the whole video.
    rows = extract_frames(two_shots, tmp_path, _cfg(scene_threshold=2.5), mode="scene")
    assert len({r["shot_id"] for r in rows}) == 1


def test_corrupt_packets_are_recorded_and_decoding_goes_on(two_shots: Path, tmp_path: Path):
    damaged = corrupt_middle(two_shots, tmp_path / "damaged.mp4")
    rows = extract_frames(damaged, tmp_path / "out", _cfg(interval_seconds=1 / FPS), mode="interval")  # every frame
    entry = _entry(tmp_path / "out", video_id(damaged))
    assert entry["decode_errors"], "damaged packets were not recorded"
    assert entry["frames_decoded"] >= PER_SHOT  # it went on past the damage
    assert max(r["frame_index"] for r in rows) == entry["frames_decoded"] - 1
    flagged = {e["frame"] for e in entry["decode_errors"] if e["kind"] == "corrupt_frame"}
    assert flagged
    for row in rows:
        if row["frame_index"] in flagged:
            assert row["status"] == "rejected" and "corrupt frame" in row["reject_reason"]
            assert "corrupt" in row["reject_codes"].split(";")


def test_lost_packets_are_reported_as_a_gap_and_every_other_frame_is_kept(two_shots: Path, tmp_path: Path):
    damaged = drop_packets(two_shots, tmp_path / "lost packets.ts")
    rows = extract_frames(damaged, tmp_path / "out", _cfg(interval_seconds=1 / FPS), mode="interval")
    entry = _entry(tmp_path / "out", video_id(damaged))
    decoded = entry["frames_decoded"]
    assert 24 <= decoded < 2 * PER_SHOT and len(rows) == decoded  # every decodable frame was kept
    gaps = [e for e in entry["decode_errors"] if e["kind"] == "lost_frames"]
    assert len(gaps) == 1
    gap = gaps[0]
    assert gap["before_frame"] == gap["after_frame"] + 1
    assert gap["to_time"] - gap["from_time"] == pytest.approx((gap["missing_frames"] + 1) / FPS, abs=0.5 / FPS)
    assert gap["missing_frames"] >= 2 * PER_SHOT - decoded - 1
    times = [r["time_s"] for r in rows]
    assert times == sorted(times) and times[gap["before_frame"]] == pytest.approx(gap["to_time"], abs=1e-3)


def test_variable_frame_rate_times_come_from_pts(tmp_path: Path):
    rng = np.random.default_rng(2)
    pts_ms = [0, 40, 80, 200, 240, 250, 260, 270, 500, 540, 580, 620, 1000, 1040, 1080, 1500, 1540, 1580]
    pictures = [sharp_frame(256, 320, i, rng) if i < 9 else smooth_frame(256, 320, i) for i in range(len(pts_ms))]
    video = write_video(tmp_path / "vfr.mp4", pictures, pts_ms=pts_ms)
    rows = extract_frames(video, tmp_path / "out", _cfg(interval_seconds=0.5, min_scene_length=2), mode="interval")
    # The first frame at or after 0, 0.5, 1.0 and 1.5 s, which index / fps would get wrong.
    assert [r["frame_index"] for r in rows] == [0, 8, 12, 15]
    assert [r["time_s"] for r in rows] == pytest.approx([0.0, 0.5, 1.0, 1.5], abs=1e-3)
    entry = _entry(tmp_path / "out", video_id(video))
    assert entry["variable_frame_rate"] is True and entry["decode_errors"] == entry["timestamp_gaps"] == []
    shots = entry["shots"]
    assert [(s["start_frame"], s["start_time"]) for s in shots] == [(0, 0.0), (9, pytest.approx(0.54, abs=1e-3))]
    assert shots[-1]["end_time"] == pytest.approx(1.62, abs=0.01)


@pytest.mark.parametrize(("rotation", "hflip", "orientation"), [
    (90, False, "cclock"), (-90, False, "clock"), (180, False, "rotate180"), (0, True, "hflip"),
])
def test_display_rotation_is_applied_like_ffmpeg(tmp_path: Path, rotation: int, hflip: bool, orientation: str):
    rng = np.random.default_rng(4)
    pictures = [sharp_frame(96, 160, i, rng) for i in range(6)]
    for img in pictures:
        img[:20, :40] = (250, 250, 250)  # a white corner: orientation is visible
    src = write_video(tmp_path / "src.mp4", pictures)
    video = with_display_matrix(src, tmp_path / f"rotated {rotation}.mp4", rotation, hflip)
    cfg = load_config(extra={"frames": {"image_format": "png", "interval_seconds": 1.0},
                             "quality": {"min_width": 16, "min_height": 16}})
    rows = extract_frames(video, tmp_path / "out", cfg, mode="interval")
    swapped = rotation in (90, -90)
    assert [(r["width"], r["height"]) for r in rows] == [(96, 160) if swapped else (160, 96)]
    ours = cv2.imread(rows[0]["path"]).astype(int)
    ffmpeg("-i", str(video), "-frames:v", "1", str(tmp_path / "ffmpeg.png"))  # ffmpeg applies the matrix itself
    theirs = cv2.imread(str(tmp_path / "ffmpeg.png")).astype(int)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).mean() < 2.0
    entry = _entry(tmp_path / "out", video_id(video))
    assert entry["orientation"] == orientation and (entry["width"], entry["height"]) == (rows[0]["width"],
                                                                                          rows[0]["height"])


def test_unicode_and_spaces_in_paths(tmp_path: Path):
    folder = tmp_path / "films à voir" / "日本語 フォルダ"
    folder.mkdir(parents=True)
    video = make_video(folder / "Élan vital — 第1話.mp4", frames_per_shot=16)
    out = tmp_path / "run dir ü"
    rows = extract_frames(video, out, _cfg(segment_min_frames=8), mode="hybrid", workers=2)
    assert rows and all(Path(r["path"]).is_file() and Path(r["path"]).parent == out / "frames" for r in rows)
    assert _entry(out, video_id(video))["video"] == str(video.resolve())


def test_bad_inputs_name_the_file(tmp_path: Path):
    audio = tmp_path / "only a voice.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(audio))
    with pytest.raises(InputError, match=f"{audio}: has no video stream"):
        extract_frames(audio, tmp_path / "out", load_config())
    zero = tmp_path / "zero frames.mkv"
    with av.open(str(zero), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    with pytest.raises(InputError, match=str(zero)):
        extract_frames(zero, tmp_path / "out", load_config())
    assert not list((tmp_path / "out").glob("frames/*"))
