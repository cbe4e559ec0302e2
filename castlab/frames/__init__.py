"""Frames: video → shots → representative frames, quality gates, near-duplicates, splits, report.

Stage face: :func:`process` (a chunk of video rows → frame rows) and :func:`run` (a whole run, manifest saved).
"""

from castlab.frames.stage import process, run

__all__ = ["process", "run"]
