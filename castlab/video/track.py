"""Every object of a frame carried through its shot in one SAM2 video pass per window.

All objects are added to one predictor state, each with its own object id, on the prompt frame; the pass runs
forwards to the shot's end and backwards to its start. A shot longer than ``max_frames`` is cut into windows of at
most that many frames, chained: the next window starts on the previous window's last frame, seeded with the masks
found there, so memory stays bounded by one window. An object absent on that shared frame is not carried on (a
stale mask would make SAM2 track whatever is now where it was): it stays absent for the rest of the shot in that
direction, and the track says so; re-seed it on a frame where it is back. A frame where an object's mask is empty
records the object as absent (occluded or gone): nothing is forced into a mask.

The predictor is SAM2's video predictor (``init_state``, ``add_new_mask``, ``propagate_in_video``) or anything
with those three methods; frames come from a callback, so a window's frames are decoded only when needed.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from castlab.errors import InputError


@dataclass(frozen=True)
class Window:
    start: int  # first frame index (shot frame numbers)
    end: int  # one past the last
    seed: int  # where it is seeded: the prompt frame, or the frame it shares with the previous window
    reverse: bool  # backwards from `seed` to `start`


def plan_windows(seed: int, first: int, last: int, max_frames: int) -> list[Window]:
    """The windows that cover frames ``first..last - 1`` from `seed`: forwards, then backwards, each at most
    `max_frames` long and sharing its seed frame with the window before it."""
    if max_frames < 2:
        raise InputError(f"max_frames {max_frames}", "a tracking window needs at least 2 frames")
    if last - first < 2:
        raise InputError(f"frames {first}..{last - 1}", "a shot shorter than 2 frames cannot be tracked")
    if not first <= seed < last:
        raise InputError(f"frame {seed}", f"is not in the shot's frames {first}..{last - 1}")
    windows, at = [], seed
    while at < last - 1 or not windows:
        end = min(last, at + max_frames)
        windows.append(Window(at, end, at, False))
        at = end - 1
        if end == last:
            break
    at = seed
    while at > first:
        start = max(first, at - max_frames + 1)
        windows.append(Window(start, at + 1, at, True))
        at = start
    return windows


@dataclass
class Track:
    """Per object id: frame index → mask (boolean) where present; the frames where it was absent."""

    masks: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    absent: dict[int, list[int]] = field(default_factory=dict)

    def record(self, frame: int, obj_id: int, mask: np.ndarray) -> None:
        """A window's answer for (frame, object); a frame two windows share keeps the first mask found there."""
        absent = self.absent.setdefault(obj_id, [])
        if mask.any():
            self.masks.setdefault(obj_id, {}).setdefault(frame, mask)
            if frame in absent:
                absent.remove(frame)
        elif frame not in self.masks.get(obj_id, {}) and frame not in absent:
            absent.append(frame)


def _window_state(predictor: Any, frames: list[np.ndarray], folder: Path) -> Any:
    for k, rgb in enumerate(frames):
        Image.fromarray(rgb).save(folder / f"{k:05d}.jpg", quality=95)
    return predictor.init_state(video_path=str(folder))


def _run_window(predictor: Any, window: Window, frames: list[np.ndarray], seeds: dict[int, np.ndarray],
                threshold: float) -> Iterator[tuple[int, int, np.ndarray]]:
    """(shot frame, object id, mask) of every frame of `window` (its seed frame included)."""
    with tempfile.TemporaryDirectory(prefix="castlab-track-") as tmp:
        state = _window_state(predictor, frames, Path(tmp))
        local_seed = window.seed - window.start
        for obj_id, mask in seeds.items():
            predictor.add_new_mask(state, frame_idx=local_seed, obj_id=obj_id, mask=mask)
        for idx, obj_ids, logits in predictor.propagate_in_video(state, start_frame_idx=local_seed,
                                                                 reverse=window.reverse):
            for k, obj_id in enumerate(obj_ids):
                yield window.start + int(idx), int(obj_id), (logits[k, 0] > threshold).cpu().numpy()


def track_objects(predictor: Any, frames_of: Callable[[int, int], list[np.ndarray]], seeds: dict[int, np.ndarray],
                  seed_frame: int, first: int, last: int, max_frames: int, threshold: float,
                  progress: Callable[[int], None] | None = None) -> Track:
    """Carry `seeds` (object id → mask on `seed_frame`) through frames ``first..last - 1`` (module docstring).
    `frames_of(start, end)` gives the RGB frames ``start..end - 1``."""
    if not seeds:
        raise InputError(f"frame {seed_frame}", "has no object to track")
    track = Track()
    carried: dict[bool, dict[int, np.ndarray]] = {False: dict(seeds), True: dict(seeds)}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")  # hole filling needs sam2's C ext
        for window in plan_windows(seed_frame, first, last, max_frames):
            current = {k: v for k, v in carried[window.reverse].items() if v.any()}
            if not current:
                continue  # every object left before this window
            found: dict[int, dict[int, np.ndarray]] = {}
            for frame, obj_id, mask in _run_window(predictor, window, frames_of(window.start, window.end), current,
                                                   threshold):
                track.record(frame, obj_id, mask)
                found.setdefault(obj_id, {})[frame] = mask
                if progress is not None:
                    progress(1)
            edge = window.start if window.reverse else window.end - 1
            for obj_id in current:  # the next window starts on this window's edge frame, seeded with its masks
                mask = found.get(obj_id, {}).get(edge)
                carried[window.reverse][obj_id] = mask if mask is not None else np.zeros_like(current[obj_id])
    for obj_id in seeds:  # frames no window reached for an object (it was lost at a window's edge): absent
        for frame in range(first, last):
            if frame not in track.masks.get(obj_id, {}):
                track.record(frame, obj_id, np.zeros((1, 1), bool))
    return track
