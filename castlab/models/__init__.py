"""Model roles resolved from config: real architectures; ``tiny`` = random seeded weights, ``full`` = real."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha1(path: Path) -> str:
    """SHA-1 of a (possibly multi-GB) weights file, read in 4 MiB blocks; used in model versions."""
    digest = hashlib.sha1()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
