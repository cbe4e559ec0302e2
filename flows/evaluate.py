"""evaluate: fixed prompts and seeds per checkpoint → CLIP-T, quality_evaluation.json, grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from castlab.workspace import Run
from flows.common import resolve_config


@flow(name="evaluate")
def evaluate(
    checkpoints: list[str],
    out_dir: str | None = None,
    force: bool = False,
    config_files: list[str] | None = None,
    preset: str | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """Render every checkpoint with the same prompts and seeds and rank them."""
    from castlab.evaluate.stage import evaluate_checkpoints

    cfg = resolve_config(config_files, preset, profile)
    target = Path(out_dir) if out_dir else Run.create("evaluate", cfg).path
    report = evaluate_checkpoints([Path(c) for c in checkpoints], target, cfg, force=force)
    get_run_logger().info("evaluation written to %s", target)
    return report
