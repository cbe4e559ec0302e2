"""identify: who is who — face-first embeddings, clusters, and the identity review projects in Label Studio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from castlab.manifest import Manifest
from castlab.workspace import Run
from flows.common import config_from_dict, labelstudio, resolve_config


@task(name="embed-and-cluster")
def build_task(run_dir: str, force: bool, cfg_data: dict[str, Any]) -> dict[str, Any]:
    from castlab.identity import build_identities

    cfg = config_from_dict(cfg_data)
    return build_identities(Path(run_dir), Manifest.for_run(Path(run_dir)), cfg, force=force)


@task(name="push-identity-review")
def push_task(run_dir: str, summary: dict[str, Any], cfg_data: dict[str, Any]) -> dict[str, Any]:
    from castlab.labelstudio.identity_project import push_identity_review

    cfg = config_from_dict(cfg_data)
    sheets = {int(k): Path(p) for k, p in summary["sheets"].items()}
    version = f"castlab-clusters-{summary['profile']}"
    return push_identity_review(labelstudio(cfg), Manifest.for_run(Path(run_dir)), Path(run_dir), cfg, sheets, version)


@flow(name="identify")
def identify(
    run_dir: str, push: bool = True, force: bool = False, config_files: list[str] | None = None,
    preset: str | None = None, profile: str | None = None,
) -> dict[str, Any]:
    """Embed the run's instances (InsightFace, open_clip), cluster them and push both identity projects."""
    cfg = resolve_config(config_files, preset, profile)
    run = Run.open(run_dir, cfg)
    summary = build_task(str(run.path), force, cfg.data)
    if push:
        summary["labelstudio"] = push_task(str(run.path), summary, cfg.data)
    get_run_logger().info("identify %s: %d instances, %d clusters, %d noise", run.path.name, summary["instances"],
                          summary["clusters"], summary["noise"])
    return summary
