"""Big Buck Bunny frames for the benchmarks: real 3D-animated footage, decoded once and PNG-cached."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from castlab.config import PROJECT_ROOT
from castlab.sample_media import big_buck_bunny

CACHE = PROJECT_ROOT / ".cache" / "bench"


def frame_paths(count: int, folder: Path, prefix: str) -> list[Path]:
    """`count` frames at evenly spread decode positions, written once as ``<folder>/<prefix>_<i>.png``."""
    paths = [folder / f"{prefix}_{count}_{i}.png" for i in range(count)]
    if not all(p.is_file() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        with av.open(str(big_buck_bunny(CACHE / "sample"))) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        for i, path in enumerate(paths):
            Image.fromarray(frames[int((i + 0.5) * len(frames) / count)]).save(path)
    return paths


def frames(count: int, folder: Path, prefix: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in frame_paths(count, folder, prefix)]
