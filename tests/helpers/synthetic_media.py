"""Small synthetic videos for unit tests (PyAV's bundled FFmpeg; no network, no ffmpeg install)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import imageio_ffmpeg
import numpy as np

FPS = 24


def sharp_frame(height: int, width: int, i: int, rng: np.random.Generator) -> np.ndarray:
    """Fine random texture (high Laplacian variance) with a moving dark figure."""
    img = rng.integers(60, 200, (height, width, 1), dtype=np.uint8).repeat(3, axis=2)
    img[..., 1] = 120
    yy, xx = np.mgrid[:height, :width]
    cx, cy = width // 4 + 2 * i, height // 2
    img[((xx - cx) ** 2 / (width / 8) ** 2 + (yy - cy) ** 2 / (height / 4) ** 2) < 1] = (20, 20, 160)
    return img


def smooth_frame(height: int, width: int, i: int) -> np.ndarray:
    """A soft colour gradient with a blurred blob: a 'blurry' shot (low Laplacian variance)."""
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    cx = width * 0.6 - i
    blob = np.exp(-(((xx - cx) / (width / 6)) ** 2 + ((yy - height / 2) / (height / 4)) ** 2))
    img = np.stack([200 - 60 * blob, 80 + 100 * yy / height, 40 + 150 * blob], axis=2)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_video(
    path: Path, shots: Sequence[str] = ("sharp", "smooth"), frames_per_shot: int | Sequence[int] = 24,
    size: tuple[int, int] = (320, 256), codec: str = "libx264", options: dict[str, str] | None = None,
) -> Path:
    """Write a video whose shots (hard cuts between them) are 'sharp' or 'smooth' in the given order.

    `frames_per_shot` is one length for every shot or one length per shot.
    """
    width, height = size
    lengths = [frames_per_shot] * len(shots) if isinstance(frames_per_shot, int) else list(frames_per_shot)
    texture_rng = np.random.default_rng(11)
    frames = []
    for kind, length in zip(shots, lengths, strict=True):
        for i in range(length):
            if kind == "sharp":
                frames.append(sharp_frame(height, width, i, np.random.default_rng(texture_rng.integers(1 << 30))))
            else:
                frames.append(smooth_frame(height, width, i))
    return write_video(path, frames, codec=codec, options=options)


def write_video(
    path: Path, frames: Sequence[np.ndarray], fps: int = FPS, codec: str = "libx264",
    pts_ms: Sequence[int] | None = None, options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB frames; with `pts_ms` every frame gets that presentation time (variable frame rate).

    libx264 gets crf 18 and a keyframe at least every 12 frames unless `options` says otherwise.
    """
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "g": "12", **(options or {})}
        if pts_ms is not None:
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = int(pts_ms[i]), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def blurred(img: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """The same picture, out of focus."""
    return cv2.GaussianBlur(img, (0, 0), sigma)


def ffmpeg(*args: str) -> None:
    """Run the static ffmpeg that imageio-ffmpeg ships."""
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def with_display_matrix(src: Path, dst: Path, rotation: int = 0, hflip: bool = False) -> Path:
    """Copy `src` with a display matrix (as phones write): `rotation` degrees counter-clockwise, mirrored."""
    ffmpeg("-display_rotation", str(rotation), *(["-display_hflip"] if hflip else []), "-i", str(src),
           "-c", "copy", str(dst))
    return dst


def drop_packets(src: Path, dst: Path, start: float = 0.4, end: float = 0.6) -> Path:
    """Remux `src` to MPEG-TS and cut out the bytes between these fractions: frames are lost mid-stream."""
    ts = dst.with_name(dst.stem + ".full.ts")
    ffmpeg("-i", str(src), "-c", "copy", "-f", "mpegts", str(ts))
    data = ts.read_bytes()
    a, b = int(len(data) * start) // 188 * 188, int(len(data) * end) // 188 * 188
    dst.write_bytes(data[:a] + data[b:])
    ts.unlink()
    return dst


def corrupt_middle(src: Path, dst: Path, seed: int = 0, spans: int = 6, span_bytes: int = 400) -> Path:
    """Copy `src` with random bytes written over a few spans in the middle half of the file."""
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(seed)
    n = len(data)
    for off in np.linspace(n * 0.3, n * 0.7, spans).astype(int):
        data[off : off + span_bytes] = rng.integers(0, 256, span_bytes, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst
