import shutil
import subprocess
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from synthetic_media import make_video, sharp_frame, with_display_matrix, write_video

from castlab.errors import InputError
from castlab.frames.video import ORIENTATIONS, find_videos, orient, orientation_of, probe_video, video_id


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("media") / "clip.mp4", shots=("sharp",), frames_per_shot=36)


def test_probe_describes_a_good_video(clip: Path):
    info = probe_video(clip)
    assert (info.width, info.height) == (320, 256)
    assert info.frames == 36 and info.fps == pytest.approx(24.0)
    assert info.duration_s == pytest.approx(1.5, abs=0.05)
    assert info.codec == "h264" and not info.has_audio
    assert info.video_id == video_id(clip)


def test_video_id_is_content_based(clip: Path, tmp_path: Path):
    moved = tmp_path / "renamed copy.mp4"
    shutil.copy(clip, moved)
    assert video_id(moved) == video_id(clip)
    other = make_video(tmp_path / "other.mp4", shots=("smooth",), frames_per_shot=6)
    assert video_id(other) != video_id(clip)
    assert len(video_id(clip)) == 12


def test_find_videos_file_and_folder(clip: Path, tmp_path: Path):
    assert find_videos(clip) == [clip]
    folder = tmp_path / "films"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(clip, folder / "b.mp4")
    shutil.copy(clip, folder / "sub" / "a.MKV")
    (folder / "notes.txt").write_text("not a video")
    (folder / ".hidden.mp4").write_bytes(b"")
    assert find_videos(folder) == [folder / "b.mp4", folder / "sub" / "a.MKV"]


def test_find_videos_bad_paths_name_the_path(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match=f"{missing}: does not exist"):
        find_videos(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=f"{empty}: is an empty folder"):
        find_videos(empty)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match=f"{docs}: contains no video files"):
        find_videos(docs)


def test_probe_refuses_non_videos(tmp_path: Path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(InputError, match=f"{text}: cannot be opened as a video"):
        probe_video(text)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        probe_video(empty)
    still = tmp_path / "still.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(still)
    with pytest.raises(InputError, match="still image"):
        probe_video(still)
    with pytest.raises(InputError, match="does not exist"):
        probe_video(tmp_path / "missing.mp4")


def test_probe_refuses_truncated_video(clip: Path, tmp_path: Path):
    data = clip.read_bytes()
    half = tmp_path / "half.mp4"  # moov atom at the end: the index is gone
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"{half}: .*truncated"):
        probe_video(half)
    # With the index first ("faststart") the file opens, but the second half of the frames is missing.
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    faststart = tmp_path / "faststart.mp4"
    cmd = [ffmpeg, "-loglevel", "error", "-y", "-i", str(clip), "-c", "copy", "-movflags", "+faststart"]
    subprocess.run([*cmd, str(faststart)], check=True)
    probe_video(faststart)
    cut = tmp_path / "faststart-half.mp4"
    cut.write_bytes(faststart.read_bytes()[: faststart.stat().st_size // 2])
    with pytest.raises(InputError, match=f"{cut}: is truncated"):
        probe_video(cut)


def test_probe_refuses_audio_only_and_zero_frames(tmp_path: Path):
    audio = tmp_path / "voice.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=1", "-c:a", "aac", str(audio)], check=True)
    with pytest.raises(InputError, match=f"{audio}: has no video stream \\(audio only\\)"):
        probe_video(audio)
    cover = tmp_path / "song with cover art.mp4"  # a still picture attached to audio is not a video
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "cover.jpg")
    inputs = ["-i", str(audio), "-i", str(tmp_path / "cover.jpg"), "-map", "0:a", "-map", "1:v"]
    codecs = ["-c:a", "copy", "-c:v", "mjpeg", "-disposition:v", "attached_pic"]
    ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y"]
    subprocess.run([*ffmpeg, *inputs, *codecs, str(cover)], check=True)
    with pytest.raises(InputError, match="audio only"):
        probe_video(cover)
    zero = tmp_path / "zero.mkv"
    container = av.open(str(zero), "w")
    stream = container.add_stream("libx264", rate=24)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()
    container.close()
    with pytest.raises(InputError, match=str(zero)):
        probe_video(zero)


def test_probe_reports_display_orientation_and_variable_frame_rate(clip: Path, tmp_path: Path):
    info = probe_video(clip)
    assert (info.orientation, info.rotation, info.variable_frame_rate) == ("none", 0, False)
    phone = with_display_matrix(clip, tmp_path / "téléphone vertical.mp4", rotation=90)
    info = probe_video(phone)
    assert (info.width, info.height, info.coded_width, info.coded_height) == (256, 320, 320, 256)
    assert (info.orientation, info.rotation) == ("cclock", 270)
    mirrored = probe_video(with_display_matrix(clip, tmp_path / "mirror.mp4", rotation=0, hflip=True))
    assert (mirrored.orientation, mirrored.width, mirrored.height) == ("hflip", 320, 256)
    rng = np.random.default_rng(0)
    pts_ms = [0, 40, 80, 300, 340, 380, 900, 940]
    vfr = write_video(tmp_path / "vfr.mp4", [sharp_frame(64, 96, i, rng) for i in range(len(pts_ms))], pts_ms=pts_ms)
    assert probe_video(vfr).variable_frame_rate


def test_orient_transforms():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    expected = {
        "none": img, "clock": np.rot90(img, -1), "cclock": np.rot90(img, 1), "transpose": img.transpose(1, 0, 2),
        "antitranspose": np.rot90(img, 2).transpose(1, 0, 2), "hflip": img[:, ::-1], "vflip": img[::-1],
        "rotate180": img[::-1, ::-1],
    }
    assert set(expected) == set(ORIENTATIONS)
    for name, want in expected.items():
        assert np.array_equal(orient(img, name), want), name
    identity = np.array([65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30], dtype=np.int32)
    assert orientation_of(None) == orientation_of(identity) == ("none", 0)
    assert orientation_of(np.array([0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30], dtype=np.int32))[1] in (90, 270)
    assert orientation_of(np.array([46341, 46341, 0, -46341, 46341, 0, 0, 0, 1 << 30], np.int32))[0] == "unsupported"
