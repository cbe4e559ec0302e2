"""train: LoRA training (castlab's trainer at kohya parity) configured by a kohya training TOML pair."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import resolve_config


@flow(name="train")
def train(
    training_toml: str,
    force: bool = False,
    resume: str | None = None,
    config_files: list[str] | None = None,
    preset: str | None = None,
    profile: str | None = None,
) -> list[str]:
    """Train a LoRA from `training_toml` (or resume a saved state); returns the kohya-format checkpoint paths."""
    from trainers.lora import run_training

    cfg = resolve_config(config_files, preset, profile)
    result = run_training(Path(training_toml), cfg, force=force, resume=Path(resume) if resume else None)
    markdown = Path(result.report["pictures"]["markdown"]).read_text(encoding="utf-8")
    create_markdown_artifact(key="training-report", markdown=markdown, description=Path(training_toml).parent.name)
    get_run_logger().info("checkpoints: %s (loss curve %s)", [str(c) for c in result.checkpoints],
                          result.report["pictures"]["loss_curve"])
    return [str(c) for c in result.checkpoints]
