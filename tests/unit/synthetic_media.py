"""Small synthetic videos for unit tests (PyAV's bundled FFmpeg; no network, no ffmpeg install)."""

from __future__ import annotations

from pathlib import Path

import av
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
    path: Path, shots: tuple[str, ...] = ("sharp", "smooth"), frames_per_shot: int = 24,
    size: tuple[int, int] = (320, 256), codec: str = "libx264",
) -> Path:
    """Write a video whose shots (hard cuts between them) are 'sharp' or 'smooth' in the given order."""
    width, height = size
    rng = np.random.default_rng(3)
    texture_rng = np.random.default_rng(11)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "g": "12"}
        for kind in shots:
            for i in range(frames_per_shot):
                if kind == "sharp":
                    img = sharp_frame(height, width, i, np.random.default_rng(texture_rng.integers(1 << 30)))
                else:
                    img = smooth_frame(height, width, i)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    del rng
    return path


def corrupt_middle(src: Path, dst: Path, seed: int = 0, spans: int = 6, span_bytes: int = 400) -> Path:
    """Copy `src` with random bytes written over a few spans in the middle half of the file."""
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(seed)
    n = len(data)
    for off in np.linspace(n * 0.3, n * 0.7, spans).astype(int):
        data[off : off + span_bytes] = rng.integers(0, 256, span_bytes, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst
