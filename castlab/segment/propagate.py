"""Carry one instance's mask through every frame of its shot with the SAM2 video predictor.

``propagate_instance`` decodes the instance's shot (``shots.json`` gives its frame range) into
``propagation/<instance>/frames/00000.jpg…`` (the layout SAM2's video predictor reads), seeds the
predictor with the instance's mask (the reviewed one when there is one) on its own frame, propagates
forwards and backwards, and writes one mask PNG per frame plus ``propagation.json``.
:func:`castlab.labelstudio.projects.masks.push_propagation` sends those frames to Label Studio as tasks with
the propagated mask as a prediction (one BrushLabels region), keyed so that a re-run adds nothing twice.

SAM2's video predictor holds every frame of the shot in memory at ``image_size`` (12 MB a frame at
1024), so a shot is cut to ``propagation.max_frames`` frames around the seed frame.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from castlab.config import Config
from castlab.errors import InputError
from castlab.frames.extract import SHOTS_NAME
from castlab.frames.video import open_video, orient, video_stream
from castlab.layers import instance_mask, mask_bbox, safe_name, write_mask
from castlab.models.segmenter import alpha_threshold, build_sam2_model, logit
from castlab.workspace import read_json, write_json_atomic

RESULT_NAME = "propagation.json"


def load_video_predictor(cfg: Config, device: str = "cpu") -> tuple[Any, str]:
    """SAM2's video predictor with the active profile's segmenter weights, and its model version."""
    with warnings.catch_warnings():  # sam2 uses torch.jit.script, deprecated in recent torch
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        predictor, version, _ = build_sam2_model(cfg, video=True, device=device)
    return predictor, version


def shot_range(run_dir: Path, video_id: str, shot_id: str) -> tuple[str, dict[str, Any]]:
    """(video path, shot entry plus its video's orientation and fps) from the run's ``shots.json``."""
    path = Path(run_dir) / SHOTS_NAME
    if not path.is_file():
        raise InputError(path, "is missing: propagation needs the shots of a curate run")
    entry = read_json(path).get("videos", {}).get(video_id)
    if entry is None:
        raise InputError(path, f"has no video {video_id!r}")
    shot = next((s for s in entry["shots"] if s["shot_id"] == shot_id), None)
    if shot is None:
        raise InputError(path, f"has no shot {shot_id!r} in video {video_id!r}")
    return str(entry["video"]), {**shot, "orientation": entry.get("orientation", "none"),
                                 "fps": float(entry.get("fps") or 25.0)}


def decode_frames(
    video: str, start_time: float, first: int, count: int, orientation: str, keep: set[int] | None = None
) -> list[np.ndarray]:
    """`count` RGB frames starting at frame `first` (presentation order), which starts at `start_time`;
    with `keep`, only those offsets from `first` are converted and returned (the rest are decoded, not kept)."""
    frames: list[np.ndarray] = []
    seen = 0
    with open_video(Path(video)) as container:
        stream = video_stream(container)
        base = stream.time_base
        origin = stream.start_time or 0
        if base is not None and start_time > 0:
            container.seek(origin + int(start_time / base), stream=stream, backward=True)
        for frame in container.decode(stream):
            time_s = float((frame.pts - origin) * base) if frame.pts is not None and base is not None else None
            if time_s is not None and time_s < start_time - 1e-4:
                continue
            if keep is None or seen in keep:
                frames.append(orient(frame.to_ndarray(format="rgb24"), orientation))
            seen += 1
            if seen == count:
                break
    if seen < count:
        raise InputError(video, f"gave {seen} of the {count} frames from frame {first} (t={start_time:.3f}s)")
    return frames


def propagate_instance(
    cfg: Config, run_dir: Path, instance: dict[str, Any], predictor: Any = None, model_version: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Propagate `instance` (a manifest row) through its shot; write masks + ``propagation.json``."""
    run_dir = Path(run_dir).resolve()
    out = run_dir / "propagation" / safe_name(str(instance["row_id"]))
    if (out / RESULT_NAME).is_file() and not force:
        raise InputError(out / RESULT_NAME, "exists already (use --force to propagate again)")
    video, shot = shot_range(run_dir, str(instance["video_id"]), str(instance["shot_id"]))
    seed_index = int(instance["frame_index"])
    limit = int(cfg.propagation.max_frames)
    first = max(int(shot["start_frame"]), min(seed_index - limit // 2, int(shot["end_frame"]) - limit))
    last = min(int(shot["end_frame"]), first + limit)
    mask_file = instance.get("reviewed_mask_path") or instance.get("mask_path")
    seed_mask = instance_mask(instance, str(mask_file))
    start_time = float(shot["start_time"]) + (first - int(shot["start_frame"])) / shot["fps"]
    frames = decode_frames(video, start_time, first, last - first, shot["orientation"])
    if frames[0].shape[:2] != seed_mask.shape:
        (mh, mw), (fh, fw) = seed_mask.shape, frames[0].shape[:2]
        raise InputError(str(mask_file), f"mask is {mw}x{mh}, the video's frames {fw}x{fh}")
    frames_dir, masks_dir = out / "frames", out / "masks"
    frames_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    for k, rgb in enumerate(frames):
        Image.fromarray(rgb).save(frames_dir / f"{k:05d}.jpg", quality=95)
    if predictor is None:
        predictor, model_version = load_video_predictor(cfg)
    alpha = alpha_threshold(cfg)
    threshold = logit(alpha)
    seed = seed_index - first
    masks: dict[int, np.ndarray] = {}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")  # hole filling needs sam2's C ext
        state = predictor.init_state(video_path=str(frames_dir))
        predictor.add_new_mask(state, frame_idx=seed, obj_id=1, mask=seed_mask)
        with tqdm(total=len(frames), unit="frame", desc="propagate", leave=False) as bar:
            for reverse in (False, True):
                for idx, _, logits in predictor.propagate_in_video(state, start_frame_idx=seed, reverse=reverse):
                    if idx not in masks:
                        masks[idx] = (logits[0, 0] > threshold).cpu().numpy()
                        bar.update(1)
    entries = []
    for idx in sorted(masks):
        name = f"{first + idx:06d}.png"
        write_mask(masks_dir / name, masks[idx])
        entries.append({"frame_index": first + idx, "frame_path": (frames_dir / f"{idx:05d}.jpg").as_posix(),
                        "mask_path": (masks_dir / name).as_posix(), "area": int(masks[idx].sum()),
                        "bbox": mask_bbox(masks[idx]), "seed": idx == seed})
    result = {"instance": instance["row_id"], "video_id": instance["video_id"], "shot_id": instance["shot_id"],
              "seed_frame": seed_index, "first_frame": first, "end_frame": last, "shot_frames": shot["frames"],
              "model_version": model_version, "profile": cfg.profile, "alpha_threshold": alpha, "frames": entries}
    write_json_atomic(out / RESULT_NAME, result)
    return result


