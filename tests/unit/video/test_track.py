"""Every object of a frame through its shot in one pass per window: ids kept apart, masks following the objects,
windows chained and bounded, occlusion recorded instead of forced; then the real (tiny) SAM2 video predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from castlab.errors import InputError
from castlab.video.track import Window, plan_windows, track_objects

H, W, STEP = 32, 96, 3


def square(x: int, y: int = 8) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y:y + 8, max(0, x):max(0, x + 8)] = True
    return mask


class ScriptedPredictor:
    """SAM2's video-predictor interface over a known truth: every object moves STEP px right a frame; object 2 is
    hidden in shot frames `hidden`. Records the windows it was given."""

    def __init__(self, hidden: range = range(9, 11)) -> None:
        self.windows: list[dict] = []
        self.hidden = hidden

    def init_state(self, video_path):
        from pathlib import Path

        state = {"frames": len(list(Path(video_path).glob("*.jpg"))), "seeds": {}}
        self.windows.append(state)
        return state

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        state["seeds"][obj_id] = (frame_idx, np.asarray(mask, bool))

    def propagate_in_video(self, state, start_frame_idx, reverse):
        order = range(start_frame_idx, -1, -1) if reverse else range(start_frame_idx, state["frames"])
        for idx in order:
            ids = sorted(state["seeds"])
            out = torch.full((len(ids), 1, H, W), -10.0)
            for k, obj_id in enumerate(ids):
                seed_idx, mask = state["seeds"][obj_id]
                shot_frame = state["start"] + idx
                moved = np.roll(mask, STEP * (idx - seed_idx), axis=1)
                if not (obj_id == 2 and shot_frame in self.hidden):
                    out[k, 0][torch.from_numpy(moved)] = 10.0
            yield idx, ids, out


def test_windows_cover_the_shot_and_share_their_seed_frames():
    assert plan_windows(5, 0, 12, 4) == [Window(5, 9, 5, False), Window(8, 12, 8, False), Window(2, 6, 5, True),
                                         Window(0, 3, 2, True)]
    assert plan_windows(0, 0, 3, 120) == [Window(0, 3, 0, False)]
    with pytest.raises(InputError, match="shorter than 2 frames"):
        plan_windows(0, 0, 1, 120)
    with pytest.raises(InputError, match="is not in the shot"):
        plan_windows(9, 0, 5, 120)


def test_two_objects_in_one_pass_per_window_with_occlusion():
    predictor = ScriptedPredictor()
    starts = iter([5, 8, 2, 0])  # the windows' first shot frames, in plan order
    original = predictor.init_state

    def init_state(video_path):
        state = original(video_path)
        state["start"] = next(starts)
        return state

    predictor.init_state = init_state
    frames_asked = []

    def frames_of(start, end):
        frames_asked.append((start, end))
        return [np.zeros((H, W, 3), np.uint8) for _ in range(start, end)]

    seeds = {1: square(40), 2: square(40, y=20)}
    track = track_objects(predictor, frames_of, seeds, seed_frame=5, first=0, last=12, max_frames=4, threshold=0.0)
    assert frames_asked == [(5, 9), (8, 12), (2, 6), (0, 3)] and len(predictor.windows) == 4  # bounded windows
    assert all(set(w["seeds"]) <= {1, 2} for w in predictor.windows)  # both objects in every pass
    assert sorted(track.masks[1]) == list(range(12))  # object 1 everywhere, following its motion
    for frame, mask in track.masks[1].items():
        assert np.argwhere(mask)[:, 1].min() == 40 + STEP * (frame - 5)
    assert sorted(track.absent[2]) == [9, 10] and 9 not in track.masks[2]  # occluded: recorded, no mask forced
    assert np.argwhere(track.masks[2][11])[:, 0].min() == 20  # its own id after the occlusion, its own place


def test_the_tiny_sam2_video_predictor_runs_two_ids_in_one_pass():
    from castlab.config import load_config
    from castlab.segment.propagate import load_video_predictor

    cfg = load_config(profile="tiny")
    predictor, version = load_video_predictor(cfg)
    frames = [np.full((64, 64, 3), 90, np.uint8) for _ in range(4)]
    a, b = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    a[8:24, 8:24], b[36:56, 36:56] = True, True
    seen: set[int] = set()
    track = track_objects(predictor, lambda s, e: frames[s:e], {1: a, 2: b}, 1, 0, 4, 3, 0.0,
                          progress=lambda n: seen.add(n))
    assert version.startswith("tiny-") and set(track.masks) | set(track.absent) == {1, 2}
    for obj_id in (1, 2):  # random weights: masks are noise, but every frame has an answer for both ids
        answered = set(track.masks.get(obj_id, {})) | set(track.absent.get(obj_id, []))
        assert answered == {0, 1, 2, 3}


def test_an_object_gone_on_a_window_edge_is_not_carried_on_a_stale_mask():
    predictor = ScriptedPredictor(hidden=range(7, 9))  # object 2 hidden on frame 8, the first window's last frame
    starts = iter([5, 8, 2, 0])
    original = predictor.init_state
    predictor.init_state = lambda video_path: {**original(video_path), "start": next(starts)}
    seeds = {1: square(40), 2: square(40, y=20)}
    track = track_objects(predictor, lambda s, e: [np.zeros((H, W, 3), np.uint8)] * (e - s), seeds, 5, 0, 12, 4, 0.0)
    assert set(predictor.windows[1]["seeds"]) == {1}  # the second window is seeded with object 1 only
    assert sorted(track.absent[2]) == [7, 8, 9, 10, 11] and sorted(track.masks[2]) == list(range(7))
    assert sorted(track.masks[1]) == list(range(12))
