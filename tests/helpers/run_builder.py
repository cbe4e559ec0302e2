"""A small curate-like run for integration tests: random frames, one rectangular instance each (real layers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from castlab.layers import write_instance_layers
from castlab.manifest import Manifest


def instance_run(
    run: Path, n: int, tag: str, seed: int, size: tuple[int, int], box: tuple[int, int, int, int],
    fields: Callable[[int], dict[str, Any]] = lambda f: {},
) -> Manifest:
    """`n` frames ``frame:<tag>:<f>`` (random pixels, `size` = height x width) with one kept instance
    ``inst:<tag>:<f>:0`` whose mask is `box` (y0, y1, x0, x1); `fields(f)` adds columns to the instance."""
    manifest = Manifest.for_run(run)
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(n):
        frame = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        path = run / "frames" / f"f{f}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(path)
        rows.append({"row_id": f"frame:{tag}:{f}", "kind": "frame", "status": "kept", "path": str(path)})
        mask = np.zeros(frame.shape[:2], bool)
        y0, y1, x0, x1 = box
        mask[y0:y1, x0:x1] = True
        layers = write_instance_layers(frame, mask, run, f"inst:{tag}:{f}:0")
        rows.append({"row_id": f"inst:{tag}:{f}:0", "kind": "instance", "status": "kept",
                     "parent_id": f"frame:{tag}:{f}", **fields(f), **layers})
    manifest.add_rows(rows)
    manifest.save()
    return manifest


def character_run(
    run: Path, specs: list[dict[str, Any]], seed: int = 0, size: tuple[int, int] = (96, 128), video: str = "vid",
    clip_dim: int = 16,
) -> Manifest:
    """A reviewed curate run: one frame per spec (smooth gradient plus noise, so it has texture), one kept instance
    ``inst:<video>:<k>:0`` with a soft-edged box mask, and its clip embedding in ``embeddings/identity.npz``.

    Spec keys (all optional): ``identity`` and ``identity_state`` (default ``cluster`` when identity is given, else
    ``noise``), ``review_state`` (default ``accepted``), ``view``, ``shot`` (default ``s<k // 3>``), ``split``,
    ``score``, ``caption``, ``caption_pred``, ``caption_flags``, ``clip`` (a vector; default a random unit vector),
    ``box`` (y0, y1, x0, x1), ``extra`` (more instance columns, e.g. ``face_bbox``).
    """
    from castlab.identity.embed import save_embeddings

    manifest = Manifest.for_run(run)
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    rows, ids, clips = [], [], []
    for k, spec in enumerate(specs):
        frame = np.dstack([(xx * 255 // w), (yy * 255 // h), np.full((h, w), 90)]).astype(np.int32)
        frame = np.clip(frame + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        path = run / "frames" / f"{video}_{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(path)
        frame_id, row_id = f"frame:{video}:{k}", f"inst:{video}:{k}:0"
        shot = spec.get("shot", f"s{k // 3}")
        rows.append({"row_id": frame_id, "kind": "frame", "status": "kept", "path": str(path), "video_id": video,
                     "shot_id": shot, "frame_index": k, "width": w, "height": h})
        y0, y1, x0, x1 = spec.get("box", (h // 4, 3 * h // 4, w // 3, 2 * w // 3))
        mask = np.zeros((h, w), bool)
        mask[y0:y1, x0:x1] = True
        alpha = np.zeros((h, w), np.float32)
        alpha[y0:y1, x0:x1] = 1.0
        alpha[y0:y1, x0] = alpha[y0:y1, x1 - 1] = 0.5  # soft left/right edges
        layers = write_instance_layers(frame, mask, run, row_id, alpha=alpha)
        identity = spec.get("identity")
        state = spec.get("identity_state", "cluster" if identity else "noise")
        fields = {"identity": identity, "identity_state": state,
                  "review_state": spec.get("review_state", "accepted"), "view": spec.get("view", "front"),
                  "split": spec.get("split", "train"), "score": spec.get("score", 0.9)}
        fields.update({key: spec[key] for key in ("caption", "caption_pred", "caption_flags") if key in spec})
        fields.update(spec.get("extra") or {})
        rows.append({"row_id": row_id, "kind": "instance", "status": "kept", "parent_id": frame_id, "video_id": video,
                     "shot_id": shot, **fields, **layers})
        vector = np.asarray(spec["clip"], np.float32) if "clip" in spec else rng.normal(size=clip_dim)
        ids.append(row_id)
        clips.append(vector / np.linalg.norm(vector))
    manifest.add_rows(rows)
    manifest.save()
    clip = np.stack(clips).astype(np.float32)
    save_embeddings(run, ids, np.full((len(ids), 4), np.nan, np.float32), clip, {"profile": "tiny"})
    return manifest
