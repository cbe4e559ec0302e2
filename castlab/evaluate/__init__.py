"""Checkpoint evaluation: same prompts and seeds per checkpoint → metrics and ranking.

Stage face: :func:`process` (a chunk of checkpoint rows → renders and CLIP-T rows) and :func:`run`
(:func:`castlab.evaluate.stage.evaluate_checkpoints`: every checkpoint, ranking, grid, report).
"""

from castlab.evaluate.stage import EvalModels, process
from castlab.evaluate.stage import evaluate_checkpoints as run

__all__ = ["EvalModels", "process", "run"]
