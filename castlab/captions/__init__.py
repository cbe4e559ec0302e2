"""Captions: VLM schema captions, assembled text, QC flags, report.

Stage face: :func:`process` (a chunk of instance rows → caption records) and :func:`run` (generate, assemble,
QC, report, manifest saved).
"""

from castlab.captions.stage import CaptionModels, load_models, process, run

__all__ = ["CaptionModels", "load_models", "process", "run"]
