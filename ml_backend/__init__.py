"""castlab's Label Studio ML backend: a thin HTTP layer over castlab's SAM2 segmenter.

Decode a Label Studio request → call :mod:`castlab.models.segmenter` → encode Label Studio results.
Start it with ``python -m ml_backend --host H --port P`` (or ``castlab backend``).
"""

from ml_backend.errors import BackendError

__all__ = ["BackendError"]
