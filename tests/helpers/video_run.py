"""A curate-like run over a synthetic video with two coloured squares moving through a shot (known truth), and a
SAM2-video-predictor stand-in that finds each object by the colour of its seed (so its masks follow what is really
in the frames: movement, leaving the frame)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from synthetic_media import write_video

from castlab.config import Config, load_config
from castlab.frames.extract import extract_frames
from castlab.manifest import Manifest

W, H, SIDE = 96, 64, 14
SHOT_FRAMES = (20, 8)
RED, BLUE = (220, 30, 30), (30, 60, 220)


def positions(frame: int) -> dict[int, tuple[int, int] | None]:
    """Top-left (x, y) of object 1 (red, moving right) and object 2 (blue, moving left, gone from frame 15 on) in
    the first shot; None where an object is out of the frame."""
    blue_x = 60 - 5 * frame
    return {1: (4 + 3 * frame, 10), 2: (blue_x, 38) if blue_x > -SIDE + 2 and frame < 15 else None}


def truth_mask(obj: int, frame: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    at = positions(frame)[obj]
    if at is not None:
        x, y = at
        mask[y:y + SIDE, max(0, x):max(0, x + SIDE)] = True
    return mask


def frames() -> list[np.ndarray]:
    yy, xx = np.mgrid[:H, :W]
    out = []
    for f in range(SHOT_FRAMES[0]):
        rgb = np.dstack([60 + xx // 4, 90 + yy // 4, np.full((H, W), 80)]).astype(np.uint8)
        for obj, colour in ((1, RED), (2, BLUE)):
            rgb[truth_mask(obj, f)] = colour
        out.append(rgb)
    rng = np.random.default_rng(3)
    out += [rng.integers(150, 255, (H, W, 3), dtype=np.uint8) for _ in range(SHOT_FRAMES[1])]  # a hard cut
    return out


def video_run(run: Path, cfg: Config, seed_frame: int = 4, identities: tuple[str, str] = ("Mia", "teapot")
              ) -> tuple[Manifest, dict[str, Any]]:
    """The run (frames extracted by the real extractor, ``shots.json``) with the two objects as reviewed instances
    on `seed_frame` (``inst:<video>:<frame>:1`` and ``:2``); the manifest and the seed frame's row."""
    run.mkdir(parents=True, exist_ok=True)
    video = write_video(run.parent / f"{run.name}.mp4", frames(), fps=12)
    every_frame = load_config(extra={"frames": {"interval_seconds": 1 / 12, "min_scene_length": 4}})
    rows = extract_frames(video, run, every_frame, mode="hybrid")
    manifest = Manifest.for_run(run)
    manifest.add_rows(rows)
    frame = next(r for r in rows if r["frame_index"] == seed_frame)
    frame = {**frame, "status": "kept"}
    manifest.add_rows([frame])
    instances = []
    for obj, name in zip((1, 2), identities, strict=True):
        path = run / "masks" / f"seed{obj}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(truth_mask(obj, seed_frame).astype(np.uint8) * 255).save(path)
        instances.append({"row_id": f"inst:{frame['video_id']}:{seed_frame}:{obj}", "kind": "instance",
                          "status": "kept", "parent_id": frame["row_id"], "video_id": frame["video_id"],
                          "shot_id": frame["shot_id"], "frame_index": seed_frame, "mask_path": str(path),
                          "review_state": "accepted", "identity": name, "identity_state": "reviewed"})
    manifest.add_rows(instances)
    manifest.save()
    return manifest, frame


class ColourPredictor:
    """SAM2's video-predictor interface: each object is the pixels near its seed's mean colour (frames read from
    the window folder, as SAM2 reads them)."""

    def __init__(self) -> None:
        self.windows: list[int] = []

    def init_state(self, video_path: str) -> dict[str, Any]:
        images = [np.asarray(Image.open(p).convert("RGB"), np.float32) for p in sorted(Path(video_path).glob("*.jpg"))]
        self.windows.append(len(images))
        return {"frames": images, "colours": {}}

    def add_new_mask(self, state: dict[str, Any], frame_idx: int, obj_id: int, mask: np.ndarray) -> None:
        state["colours"][obj_id] = state["frames"][frame_idx][np.asarray(mask, bool)].mean(axis=0)

    def propagate_in_video(self, state: dict[str, Any], start_frame_idx: int, reverse: bool):
        order = range(start_frame_idx, -1, -1) if reverse else range(start_frame_idx, len(state["frames"]))
        ids = sorted(state["colours"])
        for idx in order:
            out = torch.full((len(ids), 1, H, W), -10.0)
            for k, obj_id in enumerate(ids):
                near = np.abs(state["frames"][idx] - state["colours"][obj_id]).max(axis=2) < 60
                out[k, 0][torch.from_numpy(near)] = 10.0
            yield idx, ids, out
