"""A small curate-like run of sets with known truth, for the background, style and lighting types: frames from a
few distinct scenes, each with one red "character" inpainted away in its background layer, except where told."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from castlab.layers import write_instance_layers
from castlab.manifest import Manifest

RED = np.array([220, 30, 30], np.uint8)
SIZE = (72, 96)  # height, width


@dataclass(frozen=True)
class Box:
    kind: str
    box: tuple[float, float, float, float]


class RedFaceDetector:
    """Finds a 'face' wherever a red blob of at least 20 pixels is (the synthetic character's head)."""

    def detect(self, image: np.ndarray) -> list[Box]:
        ys, xs = np.nonzero(np.all(np.abs(image.astype(int) - RED) < 12, axis=-1))
        return [Box("face", (xs.min(), ys.min(), xs.max(), ys.max()))] if len(xs) >= 20 else []


class RedShareScorer:
    """'Character' probability: grows with the share of red pixels (a half-erased character is some red)."""

    def scores(self, image: np.ndarray, masks: list[np.ndarray]) -> list[float]:
        red = np.all(np.abs(image.astype(int) - RED) < 12, axis=-1)
        return [min(1.0, 0.1 + 200 * float(red[m].mean())) for m in masks]


def scene_image(scene: int, k: int, rng: np.random.Generator, brightness: float = 1.0) -> np.ndarray:
    """Scene `scene`'s set (its own hue and pattern) with per-frame noise; `brightness` scales it."""
    h, w = SIZE
    yy, xx = np.mgrid[:h, :w]
    hue = np.array([(70, 120, 200), (200, 170, 60), (60, 160, 80), (150, 80, 170)][scene % 4], np.float32)
    pattern = [np.sin(xx / 4.0), np.sin(yy / 3.0), np.sin((xx + yy) / 5.0), np.cos(xx / 6.0) * np.sin(yy / 6.0)]
    img = hue * (0.75 + 0.25 * pattern[scene % 4][..., None]) + rng.normal(0, 10, (h, w, 3)) + k
    return np.clip(img * brightness, 0, 255).astype(np.uint8)


def scene_run(run: Path, scenes: int = 3, per_scene: int = 4, seed: int = 0, video: str = "vid",
              leftover: tuple[int, ...] = (), empty: tuple[int, ...] = (), pending: tuple[int, ...] = (),
              frame_fields: Any = None, brightness: dict[int, float] | None = None) -> Manifest:
    """Frames ``frame:<video>:<k>`` (scene ``k // per_scene``, shot ``s<scene>``), each with a red box character
    ``inst:<video>:<k>:0`` and a background layer with the box filled by the set; frames in `leftover` keep the red
    head in their background, `empty` frames have no character (their frame is the background), `pending` frames
    wait for their masks review. `frame_fields(k)` adds columns to frame k; `brightness[k]` scales frame k."""
    manifest = Manifest.for_run(run)
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(scenes * per_scene):
        scene = k // per_scene
        clean = scene_image(scene, k, rng, (brightness or {}).get(k, 1.0))
        frame = clean.copy()
        path = run / "frames" / f"{video}_{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame_id = f"frame:{video}:{k}"
        row = {"row_id": frame_id, "kind": "frame", "status": "kept", "path": str(path), "video_id": video,
               "shot_id": f"s{scene}", "frame_index": k, "width": SIZE[1], "height": SIZE[0],
               "review_state": "pending" if k in pending else "accepted", **(frame_fields(k) if frame_fields else {})}
        if k in empty:
            Image.fromarray(frame).save(path)
            rows.append(row)
            continue
        mask = np.zeros(SIZE, bool)
        mask[20:60, 30:50] = True
        frame[mask] = RED
        Image.fromarray(frame).save(path)
        background = clean.copy()
        if k in leftover:
            background[22:32, 34:46] = RED  # the head was not inpainted away
        bg_path = run / "background" / f"{video}_{k}.png"
        bg_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(background).save(bg_path)
        layers = write_instance_layers(frame, mask, run, f"inst:{video}:{k}:0")
        rows.append(row)
        rows.append({"row_id": f"inst:{video}:{k}:0", "kind": "instance", "status": "kept", "parent_id": frame_id,
                     "video_id": video, "shot_id": f"s{scene}", "background_path": str(bg_path), **layers})
    manifest.add_rows(rows)
    manifest.save()
    return manifest
