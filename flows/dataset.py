"""dataset: reviewed instances → images/ captions/ metadata.json + kohya layout and TOMLs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from castlab.workspace import Run
from flows.common import resolve_config


@flow(name="dataset")
def dataset(
    run_dir: str,
    out_dir: str | None = None,
    force: bool = False,
    config_files: list[str] | None = None,
    preset: str | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """Assemble a training dataset from the reviewed instances of a curate run."""
    from castlab import dataset as dataset_stage

    cfg = resolve_config(config_files, preset, profile)
    target = Path(out_dir) if out_dir else Run.create("dataset", cfg).path / "dataset"
    summary = dataset_stage.run(Path(run_dir), cfg, target, force=force)
    get_run_logger().info("dataset at %s: %s", target, summary)
    return summary
