"""Segmentation: SAM2 character instances, layers, backgrounds, propagation through a shot.

Stage face: :func:`process` (one chunk of frame rows → instance rows, files only) and :func:`run` (a whole
run: chunks, ``segmentation_results.json``, the manifest saved).
"""

from castlab.segment.instances import SegmentModels, load_models, process, run

__all__ = ["SegmentModels", "load_models", "process", "run"]
