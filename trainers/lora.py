"""castlab's LoRA trainer, at kohya sd-scripts parity: reads the ``training.toml`` + ``dataset_config.toml`` pair
(same keys and meanings) and writes kohya-format checkpoints that diffusers, kohya and ComfyUI load.

The pieces: :mod:`trainers.config` (the pair), :mod:`trainers.buckets`, :mod:`trainers.captions`,
:mod:`trainers.data`, :mod:`trainers.latents`, :mod:`trainers.network`, :mod:`trainers.loss`, :mod:`trainers.optim`,
:mod:`trainers.saving`, :mod:`trainers.state` and the loop itself, :mod:`trainers.loop`.
"""

from __future__ import annotations

from pathlib import Path

from castlab.config import Config
from trainers.config import read_training_args as read_training_config
from trainers.loop import TrainingResult, run_training


def train_lora(
    training_toml: Path, cfg: Config, device: str = "cpu", progress: bool = True, force: bool = False,
    resume: Path | None = None,
) -> list[Path]:
    """Train the LoRA `training_toml` describes; returns the checkpoint paths (last = final)."""
    return run_training(training_toml, cfg, device, progress, force, resume=resume).checkpoints


__all__ = ["TrainingResult", "read_training_config", "run_training", "train_lora"]
