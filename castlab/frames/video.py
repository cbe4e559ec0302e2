"""Find and probe videos (PyAV); bad input raises :class:`InputError` naming the file and the problem.

Also the display orientation: phones and some editors store a rotation/flip as a display matrix beside
the picture instead of rotating the pixels; :func:`orient` applies it the way the ``ffmpeg`` CLI does
(its autorotate), so written frames are upright.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from castlab.errors import InputError

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv"}
)
_FINGERPRINT_BYTES = 1 << 20  # first and last MiB


@dataclass(frozen=True)
class VideoInfo:
    path: str
    video_id: str
    width: int
    height: int
    fps: float
    frames: int  # declared frame count, or duration x fps when the container does not say
    duration_s: float
    codec: str
    has_audio: bool
    coded_width: int = 0  # decoded picture size before the display orientation (0: same as width/height)
    coded_height: int = 0
    rotation: int = 0  # degrees clockwise the decoded picture is turned to display it upright
    orientation: str = "none"  # the transform applied to written frames, see ORIENTATIONS
    variable_frame_rate: bool = False  # frame durations differ (timestamps come from pts, never index / fps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_videos(path: Path) -> list[Path]:
    """A video file, or every video (by extension, recursively, hidden entries skipped) in a folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(path, "is neither a file nor a folder")
    entries = [p for p in path.rglob("*") if not any(x.startswith(".") for x in p.relative_to(path).parts)]
    if not entries:
        raise InputError(path, "is an empty folder")
    videos = sorted(p for p in entries if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise InputError(path, f"contains no video files (looked for {', '.join(sorted(VIDEO_EXTENSIONS))})")
    return videos


def video_id(path: Path) -> str:
    """Short content hash (size + first and last MiB): stable across runs, renames and moves."""
    path = Path(path)
    try:
        size = path.stat().st_size
        digest = hashlib.sha1(str(size).encode())
        with path.open("rb") as fh:
            digest.update(fh.read(_FINGERPRINT_BYTES))
            if size > _FINGERPRINT_BYTES:
                fh.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
                digest.update(fh.read(_FINGERPRINT_BYTES))
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from exc
    return digest.hexdigest()[:12]


def open_video(path: Path) -> av.container.InputContainer:
    """Open `path` with PyAV, turning FFmpeg's errors into an :class:`InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if not path.is_file():
        raise InputError(path, "is not a file")
    if path.stat().st_size == 0:
        raise InputError(path, "is empty (0 bytes)")
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        problem = f"cannot be opened as a video: not a video, or truncated/corrupt ({_ffmpeg_reason(exc)})"
        raise InputError(path, problem) from exc


def video_stream(container: av.container.InputContainer) -> Any | None:
    """The first real video stream (cover art attached to audio files does not count)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def probe_video(path: Path) -> VideoInfo:
    """Check that `path` is a decodable, complete video and describe it.

    Decodes the first frame and the tail (seek to the last second), so zero-frame, audio-only,
    image and truncated files are refused here rather than half way through an extraction.
    """
    path = Path(path)
    container = open_video(path)
    with container:
        fmt = container.format.name
        if not container.streams:
            raise InputError(path, "contains no audio or video data (zero frames)")
        stream = video_stream(container)
        if stream is None:
            if container.streams.audio:
                raise InputError(path, "has no video stream (audio only)")
            raise InputError(path, "has no video stream")
        if "image2" in fmt or fmt.endswith("_pipe"):
            raise InputError(path, f"is a still image ({fmt}), not a video")
        first = _decode_first(container, stream, path)
        if first is None:
            raise InputError(path, "has a video stream but no frames")
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 0.0
        duration = _duration_s(container, stream)
        frames = int(stream.frames or 0) or (round(duration * fps) if fps and duration else 0)
        _check_tail(container, stream, path, duration)
        coded_w = int(stream.codec_context.width or first.width)
        coded_h = int(stream.codec_context.height or first.height)
        orientation, rotation = orientation_of(display_matrix(first))
        swap = orientation in _SWAPS_AXES
        return VideoInfo(
            path=str(path),
            video_id=video_id(path),
            width=coded_h if swap else coded_w,
            height=coded_w if swap else coded_h,
            fps=fps,
            frames=max(frames, 1),
            duration_s=duration,
            codec=stream.codec_context.name,
            has_audio=bool(container.streams.audio),
            coded_width=coded_w,
            coded_height=coded_h,
            rotation=rotation,
            orientation=orientation,
            variable_frame_rate=_variable_frame_rate(stream),
        )


# -- display orientation ---------------------------------------------------------------------------------
ORIENTATIONS = ("none", "clock", "cclock", "transpose", "antitranspose", "hflip", "vflip", "rotate180")
_SWAPS_AXES = frozenset({"clock", "cclock", "transpose", "antitranspose"})


def display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's 3x3 display matrix (16.16 fixed point, FFmpeg's layout) or None."""
    for item in frame.side_data:
        if item.type == av.sidedata.sidedata.Type.DISPLAYMATRIX and item.buffer_size >= 36:
            return np.frombuffer(bytes(item), dtype="<i4", count=9).copy()
    return None


def orientation_of(matrix: np.ndarray | None) -> tuple[str, int]:
    """(transform, clockwise degrees) that makes a picture with this display matrix upright.

    Mirrors the ``ffmpeg`` CLI's autorotate (fftools: ``get_rotation`` + the transpose/flip choice), so
    frames come out as ``ffmpeg -i video frame.png`` writes them. Angles that are not a multiple of 90
    degrees are reported as ``"unsupported"`` and left as decoded.
    """
    if matrix is None:
        return "none", 0
    m = matrix.astype(np.float64) / 65536.0
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0.0 or scale1 == 0.0:
        return "none", 0
    theta = -float(round(-math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))))
    theta -= 360.0 * math.floor(theta / 360.0 + 0.9 / 360.0)
    if abs(theta - 90.0) < 1.0:
        return ("transpose" if matrix[3] > 0 else "clock"), 90
    if abs(theta - 180.0) < 1.0:
        flip_h, flip_v = matrix[0] < 0, matrix[4] < 0
        return ("rotate180" if flip_h and flip_v else "hflip" if flip_h else "vflip" if flip_v else "none"), 180
    if abs(theta - 270.0) < 1.0:
        return ("antitranspose" if matrix[3] < 0 else "cclock"), 270
    if abs(theta) < 1.0 or abs(theta - 360.0) < 1.0:
        return ("vflip" if matrix[4] < 0 else "none"), 0
    return "unsupported", int(round(theta))


def orient(image: np.ndarray, orientation: str) -> np.ndarray:
    """Apply a transform from :func:`orientation_of` to an image (H x W [x C])."""
    if orientation in ("none", "unsupported"):
        return image
    if orientation == "clock":
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == "cclock":
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    if orientation == "transpose":
        return cv2.transpose(image)
    if orientation == "antitranspose":
        return cv2.flip(cv2.transpose(image), -1)
    if orientation == "rotate180":
        return cv2.flip(image, -1)
    if orientation in ("hflip", "vflip"):
        return cv2.flip(image, 1 if orientation == "hflip" else 0)
    raise ValueError(f"unknown orientation {orientation!r}")


def _variable_frame_rate(stream: Any) -> bool:
    """True when the container's index (mp4/mkv) lists frames of different durations."""
    try:
        entries = stream.index_entries
        stamps = sorted(entries[i].timestamp for i in range(min(len(entries), 20000)))
    except (AttributeError, av.error.FFmpegError):
        return False
    deltas = {b - a for a, b in zip(stamps, stamps[1:], strict=False) if b > a}
    return len(deltas) > 1 and (max(deltas) - min(deltas)) > max(1, min(deltas) // 50)


def _ffmpeg_reason(exc: Exception) -> str:
    return str(getattr(exc, "strerror", None) or exc)


def _decode_first(container: av.container.InputContainer, stream: Any, path: Path) -> av.VideoFrame | None:
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise InputError(path, f"the video stream cannot be decoded ({_ffmpeg_reason(exc)})") from exc
    return None


def _duration_s(container: av.container.InputContainer, stream: Any) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _check_tail(container: av.container.InputContainer, stream: Any, path: Path, duration: float) -> None:
    """Seek to the last second and read to the end: a cut-off file fails or yields nothing.

    Every packet is read (missing data raises) but only keyframes are decoded, unless none decodes:
    a long GOP would otherwise cost a full GOP of decoding.
    """
    if duration <= 1.0 or stream.time_base is None:
        _scan_packets(container, stream, path)
        return
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    target = int((start + duration - 1.0) / stream.time_base)
    got = False
    try:
        for skip in ("NONKEY", "DEFAULT"):
            stream.codec_context.skip_frame = skip
            container.seek(target, stream=stream, backward=True, any_frame=False)
            for packet in container.demux(stream):
                got = bool(packet.decode()) or got
            if got:
                break
    except av.error.FFmpegError as exc:
        raise InputError(path, f"is truncated or corrupt near its end ({_ffmpeg_reason(exc)})") from exc
    finally:
        stream.codec_context.skip_frame = "DEFAULT"
    if not got:
        raise InputError(path, "is truncated: no frame can be decoded in its last second")


def _scan_packets(container: av.container.InputContainer, stream: Any, path: Path) -> None:
    """Short clips: read every packet and compare with the declared frame count."""
    container.seek(0)
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size:
                count += 1
        container.seek(0)
        decoded = sum(1 for _ in container.decode(stream))
    except av.error.FFmpegError as exc:
        raise InputError(path, f"is truncated or corrupt ({_ffmpeg_reason(exc)})") from exc
    present = min(count, decoded)
    if stream.frames and present < stream.frames:
        raise InputError(path, f"is truncated: {present} of {stream.frames} declared frames are present")
