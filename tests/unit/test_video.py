import shutil
import subprocess
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from synthetic_media import make_video

from castlab.errors import InputError
from castlab.video import find_videos, probe_video, video_id


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
