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


def hub_or_folder(source: str, setting: str) -> tuple[str, str]:
    """(what to pass to ``from_pretrained``, a display name) for a hub id or a local folder named by `setting`;
    a path that looks local but does not exist is a :class:`ConfigError` naming the setting."""
    from castlab.errors import ConfigError

    path = Path(source).expanduser()
    if path.is_dir():
        return str(path), path.name
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ConfigError(f"{setting}: folder {path} does not exist")
    return source, source
