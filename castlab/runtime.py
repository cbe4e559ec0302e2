"""Process-wide defaults castlab needs, set by each entry point before heavy imports.

Importing a castlab module never changes the process environment; the entry points (``flows/cli.py``,
``python -m ml_backend``, the test suite, the benchmarks) call :func:`setup_runtime` once at start.

- ``NUMBA_CACHE_DIR``: ``<project>/.cache/numba`` unless already set, so UMAP/pynndescent compile once and
  later processes load the compiled code (see :mod:`castlab.identity.cluster`). Left unset when that
  folder cannot be created or written (read-only install: numba keeps its own default).
"""

from __future__ import annotations

import os
import sys

from castlab.config import PROJECT_ROOT

NUMBA_CACHE = PROJECT_ROOT / ".cache" / "numba"
_DONE = False


def setup_runtime() -> None:
    """Set castlab's process-wide defaults (values already set win); calling it again does nothing."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    _numba_cache_dir()


def _numba_cache_dir() -> None:
    """Point numba's cache at ``.cache/numba`` in the project unless NUMBA_CACHE_DIR is set."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    try:
        NUMBA_CACHE.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    if not os.access(NUMBA_CACHE, os.W_OK):
        return
    os.environ["NUMBA_CACHE_DIR"] = str(NUMBA_CACHE)
    if "numba" in sys.modules:  # imported already: its config was read before the variable was set
        from numba.core import config as numba_config

        if not numba_config.CACHE_DIR:
            numba_config.CACHE_DIR = str(NUMBA_CACHE)
