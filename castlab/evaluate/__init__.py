"""Checkpoint evaluation: a prompt suite x seeds per checkpoint → identity margin, prompt following, diversity,
memorisation and leakage → gates, Pareto front, recommendation; a blind human pick; the LoRA registry.

Stage face: :func:`run` (:func:`castlab.evaluate.stage.evaluate_checkpoints`).
"""

from castlab.evaluate.stage import evaluate_checkpoints as run

__all__ = ["run"]
