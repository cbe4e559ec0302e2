"""identify: who is who — face-first embeddings, clusters, and the identity review projects in Label Studio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from castlab.config import Config
from castlab.manifest import Manifest
from castlab.workspace import Run
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config, save_changes


@task(name="embed-and-cluster")
def build_task(run_dir: str, force: bool, cfg: Config) -> dict[str, Any]:
    from castlab.identity.stage import build_identities

    manifest = Manifest.for_run(Path(run_dir))
    summary = build_identities(Path(run_dir), manifest, cfg, force=force)
    return {**summary, "changes": manifest.changes()}


@task(name="push-identity-review", **LABEL_STUDIO_RETRIES)
def push_task(run_dir: str, summary: dict[str, Any], cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.identity import push_identity_review

    manifest = Manifest.for_run(Path(run_dir))
    sheets = {int(k): Path(p) for k, p in summary["sheets"].items()}
    version = f"castlab-clusters-{summary['profile']}"
    pushed = push_identity_review(labelstudio(cfg), manifest, Path(run_dir), cfg, sheets, version)
    return {**pushed, "changes": manifest.changes()}


@flow(name="identify")
def identify(
    run_dir: str, push: bool = True, force: bool = False, config_files: list[str] | None = None,
    preset: str | None = None, profile: str | None = None,
) -> dict[str, Any]:
    """Embed the run's instances (InsightFace, open_clip), cluster them and push both identity projects."""
    cfg = resolve_config(config_files, preset, profile)
    run = Run.open(run_dir, cfg)
    summary = build_task(str(run.path), force, cfg)
    save_changes(run.path, summary.pop("changes"))
    if push:
        pushed = push_task(str(run.path), summary, cfg)
        save_changes(run.path, pushed.pop("changes"))
        summary["labelstudio"] = pushed
    get_run_logger().info("identify %s: %d instances, %d clusters, %d noise", run.path.name, summary["instances"],
                          summary["clusters"], summary["noise"])
    return summary
