"""Find and probe videos (PyAV); bad input raises :class:`InputError` naming the file and the problem."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av

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
        width = int(stream.codec_context.width or first.width)
        height = int(stream.codec_context.height or first.height)
        return VideoInfo(
            path=str(path),
            video_id=video_id(path),
            width=width,
            height=height,
            fps=fps,
            frames=max(frames, 1),
            duration_s=duration,
            codec=stream.codec_context.name,
            has_audio=bool(container.streams.audio),
        )


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
    """Seek to the last second and decode to the end: a cut-off file fails or yields nothing."""
    if duration <= 1.0 or stream.time_base is None:
        _scan_packets(container, stream, path)
        return
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    target = int((start + duration - 1.0) / stream.time_base)
    try:
        container.seek(target, stream=stream, backward=True, any_frame=False)
        got = False
        for _frame in container.decode(stream):
            got = True
    except av.error.FFmpegError as exc:
        raise InputError(path, f"is truncated or corrupt near its end ({_ffmpeg_reason(exc)})") from exc
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
