"""Model roles resolved from config: real architectures; ``tiny`` = random seeded weights, ``full`` = real."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from castlab.config import PROJECT_ROOT


def file_sha1(path: Path) -> str:
    """SHA-1 of a (possibly multi-GB) weights file, read in 4 MiB blocks; used in model versions."""
    digest = hashlib.sha1()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_root(what: str) -> Path:
    """A writable cache folder for generated model files: the project's ``.cache``, else the temp folder."""
    for candidate in (PROJECT_ROOT / ".cache", Path(tempfile.gettempdir()) / "castlab-cache"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            if os.access(candidate, os.W_OK):
                return candidate
        except OSError:
            continue
    raise OSError(f"no writable cache folder for {what}")
