"""train: LoRA training (diffusers + peft) configured by a kohya-compatible training TOML."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.common import resolve_config


@flow(name="train")
def train(
    training_toml: str,
    force: bool = False,
    config_files: list[str] | None = None,
    preset: str | None = None,
    profile: str | None = None,
) -> list[str]:
    """Train a LoRA from `training_toml`; returns the kohya-format checkpoint paths."""
    from trainers.lora import train_lora

    cfg = resolve_config(config_files, preset, profile)
    checkpoints = train_lora(Path(training_toml), cfg, force=force)
    get_run_logger().info("checkpoints: %s", [str(c) for c in checkpoints])
    return [str(c) for c in checkpoints]
