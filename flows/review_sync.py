"""review-sync: pull reviewed Label Studio annotations back into a curate run's manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from castlab.config import Config
from castlab.manifest import Manifest
from castlab.workspace import Run
from flows.common import labelstudio, resolve_config


@task(name="sync-mask-reviews")
def sync_masks_task(run_dir: str, cfg: Config) -> dict[str, int]:
    from castlab.labelstudio.projects.masks import sync_mask_reviews
    manifest = Manifest.load(Path(run_dir) / "manifest.parquet")
    return sync_mask_reviews(labelstudio(cfg), manifest, Path(run_dir), cfg=cfg)


@task(name="sync-identity-reviews")
def sync_identities_task(run_dir: str, cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.identity import sync_identity_reviews
    manifest = Manifest.load(Path(run_dir) / "manifest.parquet")
    return sync_identity_reviews(labelstudio(cfg), manifest, Path(run_dir), cfg)


@task(name="sync-caption-reviews")
def sync_captions_task(run_dir: str, cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.captions import sync_caption_reviews
    manifest = Manifest.load(Path(run_dir) / "manifest.parquet")
    return sync_caption_reviews(labelstudio(cfg), manifest, Path(run_dir), cfg)


@flow(name="review-sync")
def review_sync(
    run_dir: str, config_files: list[str] | None = None, preset: str | None = None, profile: str | None = None
) -> dict[str, Any]:
    """Bring masks reviewed in Label Studio back into the run (accepted, corrected, added, removed) and, after
    ``identify``, the identity decisions (a named identity per instance) and, after ``caption``, the reviewed
    captions."""
    cfg = resolve_config(config_files, preset, profile)
    run = Run.open(run_dir, cfg)
    counts: dict[str, Any] = sync_masks_task(str(run.path), cfg)
    if (run.path / "identity_push.json").is_file():  # the run went through identify: identities too
        counts["identities"] = sync_identities_task(str(run.path), cfg)
    if (run.path / "captions" / "captions_push.json").is_file():  # the run went through caption: captions too
        counts["captions"] = sync_captions_task(str(run.path), cfg)
    get_run_logger().info("review-sync %s: %s", run.path.name, counts)
    return counts
