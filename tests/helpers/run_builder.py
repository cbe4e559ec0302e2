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
