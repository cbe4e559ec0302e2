"""``castlab export-video RUN --format vace``: the run's reviewed tracks as Wan VACE training clips.

Every tracked object a reviewer did not reject (pending ones only with ``include_pending``) gives clips: its frames
from the first to the last where it is present, cut at the shot's bounds (a track never crosses a cut) and into
pieces of at most ``video.vace.max_frames``, resampled to ``video.vace.fps`` and trimmed to ``4k + 1`` frames. A
frame's mask is the reviewed one where a reviewer saw the frame (absent stays absent), else the tracked one.
The reference image is a supplied product image, else the object's best reviewed crop (its largest reviewed mask,
cut out on white). Files and the CSV follow :mod:`castlab.video.vace`; each clip is written atomically, and a
clip already exported is kept as it is (an interrupted export resumes) unless ``force``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from castlab.config import Config
from castlab.errors import InputError
from castlab.layers import read_mask, safe_name
from castlab.pictures import open_rgb
from castlab.video.reviewed import ObjectFrames, object_frames, read_review
from castlab.video.stage import load_track, run_tracks
from castlab.video.vace import Clip, csv_row, wan_frame_count, wan_size, write_clip, write_metadata

FORMATS = ("vace",)
MIN_CLIP = 5  # Wan's shortest clip (4 * 1 + 1)


def clip_spans(frames: ObjectFrames, source_fps: float, fps: float, max_frames: int) -> list[list[int]]:
    """The frame indices of each clip: first to last present frame, resampled to `fps`, in pieces of at most
    `max_frames`, each trimmed to ``4k + 1`` (pieces under 5 frames are dropped)."""
    present = [i for i, m in frames.masks.items() if m is not None]
    if not present:
        return []
    first, last = min(present), max(present)
    step = source_fps / fps
    picked, t = [], 0.0
    while first + round(t) <= last:
        picked.append(first + round(t))
        t += step
    picked = list(dict.fromkeys(picked))
    spans = []
    for start in range(0, len(picked), max_frames):
        piece = picked[start:start + max_frames]
        if len(piece) >= MIN_CLIP:
            spans.append(piece[:wan_frame_count(len(piece))])
    return spans


def _mask(path: Path | None, shape: tuple[int, int]) -> np.ndarray:
    return np.zeros(shape, bool) if path is None else read_mask(path)


def best_crop(frames: ObjectFrames, margin: float = 0.1) -> Image.Image:
    """The object cut out on white from the frame where its (reviewed, if any) mask is largest."""
    pool = [i for i in frames.reviewed if frames.masks[i] is not None] or [
        i for i, m in frames.masks.items() if m is not None]
    shape = (frames.result["height"], frames.result["width"])
    best = max(pool, key=lambda i: int(_mask(frames.masks[i], shape).sum()))
    mask = _mask(frames.masks[best], shape)
    rgb = np.asarray(Image.open(frames.folder / "frames" / f"{best:06d}.jpg").convert("RGB"))
    ys, xs = np.nonzero(mask)
    pad_y, pad_x = int((ys.max() - ys.min() + 1) * margin), int((xs.max() - xs.min() + 1) * margin)
    y0, y1 = max(0, ys.min() - pad_y), min(shape[0], ys.max() + pad_y + 1)
    x0, x1 = max(0, xs.min() - pad_x), min(shape[1], xs.max() + pad_x + 1)
    cut = np.where(mask[..., None], rgb, 255).astype(np.uint8)[y0:y1, x0:x1]
    return Image.fromarray(cut)


def export_vace(
    run_dir: Path, out_dir: Path, cfg: Config, reference_image: Path | None = None, prompt: str | None = None,
    include_pending: bool = False, force: bool = False,
) -> dict[str, Any]:
    """Write the run's tracks as VACE clips + ``metadata_vace.csv`` under `out_dir` (module docstring)."""
    settings = cfg.settings.video.vace
    tracks = run_tracks(run_dir)
    if not tracks:
        raise InputError(Path(run_dir) / "tracks", "holds no finished track: run castlab track first")
    reference = open_rgb(Path(reference_image), "(--reference-image)") if reference_image else None
    out_dir = Path(out_dir)
    if force and out_dir.exists():
        shutil.rmtree(out_dir)
    started = time.perf_counter()
    rows, skipped, clips, kept = [], [], [], 0
    work = []
    for folder in tracks:
        result, review = load_track(folder), read_review(folder)
        for obj in result["objects"]:
            decision = review["objects"].get(str(obj["obj_id"]), {}).get("decision", "pending")
            if decision == "rejected" or (decision == "pending" and not include_pending):
                skipped.append({"track": result["track_id"], "object": obj["obj_id"], "why": decision})
                continue
            work.append((folder, result, review, obj, decision))
    for folder, result, review, obj, decision in tqdm(work, unit="object", desc="export vace", leave=False):
        frames = object_frames(folder, result, review, obj)
        fps = min(float(settings.fps or result["fps"]), float(result["fps"]))  # never more frames than the source
        spans = clip_spans(frames, float(result["fps"]), fps, int(settings.max_frames))
        if not spans:
            skipped.append({"track": result["track_id"], "object": obj["obj_id"],
                            "why": f"fewer than {MIN_CLIP} frames with the object"})
            continue
        ref = reference if reference is not None else best_crop(frames)
        text = (prompt or settings.prompt).format(name=obj["label"], type=obj["source"])
        size = wan_size(result["width"], result["height"], int(settings.max_side))
        shape = (result["height"], result["width"])
        for k, span in enumerate(spans):
            name = safe_name(f"{result['track_id']}-{obj['obj_id']}-{k:02d}")
            clip_row = csv_row(name, text)
            if (out_dir / name).is_dir():  # written by an earlier, interrupted export: kept as it is
                kept += 1
            else:
                images = [np.asarray(Image.open(folder / "frames" / f"{i:06d}.jpg").convert("RGB")) for i in span]
                clip_row = write_clip(out_dir, Clip(name, images, [_mask(frames.masks[i], shape) for i in span], ref,
                                                    text), size, fps,
                                      bool(settings.keep_region))
            rows.append(clip_row)
            clips.append({"name": name, "track": result["track_id"], "object": obj["obj_id"], "label": obj["label"],
                          "frames": len(span), "first_frame": span[0], "last_frame": span[-1], "width": size[0],
                          "height": size[1], "fps": fps,
                          "reviewed_frames": len(frames.reviewed & set(span)), "decision": decision})
    if not rows:
        raise InputError(Path(run_dir) / "tracks", f"gives no clip to export ({len(skipped)} objects skipped: "
                         + "; ".join(f"{s['track']} object {s['object']}: {s['why']}" for s in skipped[:5])
                         + "). Review the tracks (accept them in the tracks project) or pass --include-pending")
    csv_path = write_metadata(out_dir, rows)
    seconds = time.perf_counter() - started
    summary = {"format": "vace", "out": str(out_dir), "metadata": str(csv_path), "clips": clips,
               "kept_from_before": kept, "skipped": skipped, "seconds": round(seconds, 3),
               "frames": sum(c["frames"] for c in clips), "profile": cfg.profile,
               "reference": str(reference_image) if reference_image else "best reviewed crop",
               "keep_region": bool(settings.keep_region)}
    from castlab.video.experiment import write_export_log
    from castlab.workspace import write_json_atomic

    write_json_atomic(out_dir / "castlab_export.json", summary)
    write_export_log(out_dir, summary, cfg)
    return summary
