"""caption: VLM schema captions for the identified instances → QC → the Label Studio captions project."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from castlab.config import Config
from castlab.manifest import Manifest
from castlab.workspace import Run
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config, save_changes


@task(name="caption-instances")
def caption_task(run_dir: str, style: str | None, force: bool, sequences: bool, cfg: Config) -> dict[str, Any]:
    from castlab.captions.stage import caption_run

    manifest = Manifest.for_run(Path(run_dir))
    summary = caption_run(Path(run_dir), manifest, cfg, style=style, force=force, sequences=sequences)
    return {**summary, "changes": manifest.changes()}


@task(name="push-captions", **LABEL_STUDIO_RETRIES)
def push_task(run_dir: str, cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.captions import push_captions

    return push_captions(labelstudio(cfg), Manifest.for_run(Path(run_dir)), Path(run_dir), cfg)


@flow(name="caption")
def caption(
    run_dir: str, push: bool = True, style: str | None = None, force: bool = False, sequences: bool = False,
    config_files: list[str] | None = None, preset: str | None = None, profile: str | None = None,
) -> dict[str, Any]:
    """Caption the run's identified instances, flag them, and push the captions review project."""
    cfg = resolve_config(config_files, preset, profile)
    run = Run.open(run_dir, cfg)
    summary = caption_task(str(run.path), style, force, sequences, cfg)
    save_changes(run.path, summary.pop("changes"))
    if push:
        summary["labelstudio"] = push_task(str(run.path), cfg)
    get_run_logger().info("caption %s: %d instances %s, %d flagged", run.path.name, summary["instances"],
                          summary["status"], summary["flagged"])
    return summary
