"""identify: who is who — face-first embeddings, clusters, and the identity review projects in Label Studio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from castlab.config import Config
from castlab.manifest import Manifest
from castlab.workspace import Run, labelstudio, resolve_config


@task(name="embed-and-cluster")
def build_task(run_dir: str, force: bool, cfg: Config) -> dict[str, Any]:
    from castlab.identity.stage import build_identities
    return build_identities(Path(run_dir), Manifest.for_run(Path(run_dir)), cfg, force=force)


@task(name="push-identity-review")
def push_task(run_dir: str, summary: dict[str, Any], cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.identity import push_identity_review
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
    summary = build_task(str(run.path), force, cfg)
    if push:
        summary["labelstudio"] = push_task(str(run.path), summary, cfg)
    get_run_logger().info("identify %s: %d instances, %d clusters, %d noise", run.path.name, summary["instances"],
                          summary["clusters"], summary["noise"])
    return summary
