"""The pieces of a Wan VACE training clip, as DiffSynth-Studio's training script reads them: per clip
``video.mp4`` (the source frames), ``vace_video.mp4`` (the frames with the object region zeroed, or kept),
``vace_video_mask.mp4`` (the object's binary mask as RGB, resized NEAREST so it stays binary),
``vace_reference_image.png`` and a prompt; one ``metadata_vace.csv`` row per clip with the columns
:data:`CSV_COLUMNS`. Wan wants sides that are multiples of 16 and ``4k + 1`` frames.

Every clip is written into a temporary folder and renamed into place when complete: an interrupted export never
leaves a half-written clip.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from castlab.errors import InputError

CSV_COLUMNS = ("video", "prompt", "vace_video", "vace_video_mask", "vace_reference_image")
SIDE_STEP = 16
CODEC = "libx264"


def wan_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled to fit `max_side` on the longer side, each rounded down to a multiple of 16 (at
    least 16)."""
    scale = min(1.0, max_side / max(width, height))
    return (max(SIDE_STEP, int(width * scale) // SIDE_STEP * SIDE_STEP),
            max(SIDE_STEP, int(height * scale) // SIDE_STEP * SIDE_STEP))


def wan_frame_count(available: int) -> int:
    """The largest ``4k + 1`` not above `available`; InputError below 5 (Wan's shortest clip)."""
    if available < 5:
        raise InputError(f"{available} frames", "a VACE clip needs at least 5 frames (Wan takes 4k + 1)")
    return (available - 1) // 4 * 4 + 1


@dataclass(frozen=True)
class Clip:
    """One clip: RGB frames, the object's boolean masks (one per frame), the reference image and the prompt."""

    name: str
    frames: Sequence[np.ndarray]
    masks: Sequence[np.ndarray]
    reference: Image.Image
    prompt: str


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> None:
    """An H.264 MP4 (yuv420p) of RGB uint8 `frames`."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(CODEC, rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def clip_arrays(clip: Clip, size: tuple[int, int], keep_region: bool) -> tuple[list, list, list]:
    """(source frames, VACE frames, mask frames) at `size`, ``4k + 1`` of them: the frames resized LANCZOS, the
    masks NEAREST (binary, as RGB 0/255); the VACE frames zero the object region unless `keep_region`."""
    if len(clip.frames) != len(clip.masks):
        raise InputError(clip.name, f"{len(clip.frames)} frames but {len(clip.masks)} masks")
    count = wan_frame_count(len(clip.frames))
    sources, vace, masks = [], [], []
    for rgb, mask in zip(clip.frames[:count], clip.masks[:count], strict=True):
        frame = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
        binary = np.asarray(Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).resize(
            size, Image.Resampling.NEAREST)) > 127
        sources.append(frame)
        vace.append(frame if keep_region else np.where(binary[..., None], 0, frame).astype(np.uint8))
        masks.append(np.repeat((binary.astype(np.uint8) * 255)[..., None], 3, axis=2))
    return sources, vace, masks


def write_clip(out_dir: Path, clip: Clip, size: tuple[int, int], fps: float, keep_region: bool = False
               ) -> dict[str, str]:
    """Write one clip's files under ``out_dir/<name>/`` atomically; its CSV row (paths relative to `out_dir`)."""
    target = Path(out_dir) / clip.name
    if target.exists():
        raise InputError(target, "exists already (export into an empty folder, or pass --force)")
    sources, vace, masks = clip_arrays(clip, size, keep_region)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{clip.name}.", dir=out_dir))
    try:
        write_video(tmp / "video.mp4", sources, fps)
        write_video(tmp / "vace_video.mp4", vace, fps)
        write_video(tmp / "vace_video_mask.mp4", masks, fps)
        clip.reference.convert("RGB").save(tmp / "vace_reference_image.png")
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return csv_row(clip.name, clip.prompt)


def csv_row(name: str, prompt: str) -> dict[str, str]:
    """The ``metadata_vace.csv`` row of clip `name` (its files' paths relative to the export folder)."""
    return {"video": f"{name}/video.mp4", "prompt": prompt, "vace_video": f"{name}/vace_video.mp4",
            "vace_video_mask": f"{name}/vace_video_mask.mp4",
            "vace_reference_image": f"{name}/vace_reference_image.png"}


def write_metadata(out_dir: Path, rows: Sequence[dict[str, str]]) -> Path:
    """``metadata_vace.csv`` with :data:`CSV_COLUMNS` (written whole, then renamed into place)."""
    path = Path(out_dir) / "metadata_vace.csv"
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path
