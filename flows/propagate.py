"""propagate: carry one reviewed instance's mask through its shot and push the frames for review."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from castlab.config import Config
from castlab.errors import InputError
from castlab.manifest import Manifest
from castlab.workspace import Run
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config


@task(name="propagate-mask")
def propagate_task(run_dir: str, instance_id: str, force: bool, cfg: Config) -> dict[str, Any]:
    from castlab.segment.propagate import propagate_instance

    manifest = Manifest.load(Path(run_dir) / "manifest.parquet")
    rows = [r for r in manifest.rows(kind="instance") if r["row_id"] == instance_id]
    if not rows:
        raise InputError(Path(run_dir) / "manifest.parquet", f"has no instance {instance_id!r}")
    return propagate_instance(cfg, Path(run_dir), rows[0], force=force)


@task(name="push-propagation", **LABEL_STUDIO_RETRIES)
def push_task(result: dict[str, Any], run_dir: str, cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.masks import push_propagation

    return push_propagation(labelstudio(cfg), result, Path(run_dir), cfg)


@flow(name="propagate")
def propagate(
    run_dir: str, instance: str, push: bool = True, force: bool = False, config_files: list[str] | None = None,
    preset: str | None = None, profile: str | None = None,
) -> dict[str, Any]:
    """SAM2 video propagation of `instance` through its shot; predictions on every frame in Label Studio."""
    cfg = resolve_config(config_files, preset, profile)
    run = Run.open(run_dir, cfg)
    result = propagate_task(str(run.path), instance, force, cfg)
    summary = {"instance": instance, "frames": len(result["frames"]), "shot_id": result["shot_id"],
               "result": str(run.path / "propagation")}
    if push:
        summary["labelstudio"] = push_task(result, str(run.path), cfg)
    get_run_logger().info("propagate %s: %s", instance, summary)
    return summary
