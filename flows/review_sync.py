"""review-sync: pull reviewed Label Studio annotations back into a curate run's manifest, or the reviewers'
blind checkpoint picks back into an evaluation (Bradley–Terry ranking, agreement, the registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from castlab.config import Config
from castlab.manifest import Manifest
from castlab.workspace import Run
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config, save_changes


@task(name="sync-mask-reviews", **LABEL_STUDIO_RETRIES)
def sync_masks_task(run_dir: str, cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.masks import sync_mask_reviews

    manifest = Manifest.load(Path(run_dir) / "manifest.parquet")
    counts = sync_mask_reviews(labelstudio(cfg), manifest, Path(run_dir), cfg=cfg)
    return {"counts": counts, "changes": manifest.changes()}


@task(name="sync-identity-reviews", **LABEL_STUDIO_RETRIES)
def sync_identities_task(run_dir: str, cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.identity import sync_identity_reviews

    manifest = Manifest.load(Path(run_dir) / "manifest.parquet")
    counts = sync_identity_reviews(labelstudio(cfg), manifest, Path(run_dir), cfg)
    return {"counts": counts, "changes": manifest.changes()}


@task(name="sync-caption-reviews", **LABEL_STUDIO_RETRIES)
def sync_captions_task(run_dir: str, cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.captions import sync_caption_reviews

    manifest = Manifest.load(Path(run_dir) / "manifest.parquet")
    counts = sync_caption_reviews(labelstudio(cfg), manifest, Path(run_dir), cfg)
    return {"counts": counts, "changes": manifest.changes()}


@task(name="sync-type-reviews", **LABEL_STUDIO_RETRIES)
def sync_types_task(run_dir: str, name: str, cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.typed import sync_typed_reviews

    return sync_typed_reviews(labelstudio(cfg), Path(run_dir), name, cfg)


@task(name="sync-track-reviews", **LABEL_STUDIO_RETRIES)
def sync_tracks_task(run_dir: str, cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.tracks import sync_track_reviews

    return sync_track_reviews(labelstudio(cfg), Path(run_dir), cfg)


@task(name="sync-checkpoint-picks", **LABEL_STUDIO_RETRIES)
def sync_checkpoints_task(eval_dir: str, cfg: Config) -> dict[str, Any]:
    """The reviewers' pairwise answers → BT ranking and agreement (human_pick.json); their chosen checkpoint
    replaces the recommendation in the LoRA registry."""
    import json

    from castlab.evaluate.registry import register_lora
    from castlab.evaluate.stage import REPORT_NAME, registry_entry
    from castlab.labelstudio.projects.checkpoints import sync_checkpoint_picks

    pick = sync_checkpoint_picks(labelstudio(cfg), Path(eval_dir), cfg)
    if pick.get("chosen"):
        report = json.loads((Path(eval_dir) / REPORT_NAME).read_text(encoding="utf-8"))
        report["out_dir"] = str(Path(eval_dir).resolve())
        entry = registry_entry(report, pick["chosen"], "reviewers", pick.get("agreement"))
        pick["registry"] = str(register_lora(entry, cfg))
    return pick


@flow(name="review-sync")
def review_sync(
    run_dir: str, config_files: list[str] | None = None, preset: str | None = None, profile: str | None = None
) -> dict[str, Any]:
    """Bring masks reviewed in Label Studio back into the run (accepted, corrected, added, removed) and, after
    ``identify``, the identity decisions (a named identity per instance), after ``caption``, the reviewed
    captions, after ``prepare --type``, the type's reviewed labels and captions and, after ``track``, the
    reviewed track masks and decisions. Each sync reads the
    manifest the previous one saved; the flow is the one writer."""
    cfg = resolve_config(config_files, preset, profile)
    run = Run.open(run_dir, cfg)
    if (run.path / "checkpoints_push.json").is_file():  # an evaluation: the reviewers' checkpoint pick
        pick = sync_checkpoints_task(str(run.path), cfg)
        get_run_logger().info("review-sync %s: chosen %s (agreement %s)", run.path.name, pick.get("chosen"),
                              pick.get("agreement"))
        return {"checkpoints": pick}
    synced = sync_masks_task(str(run.path), cfg)
    save_changes(run.path, synced["changes"])
    counts: dict[str, Any] = synced["counts"]
    if (run.path / "identity_push.json").is_file():  # the run went through identify: identities too
        synced = sync_identities_task(str(run.path), cfg)
        save_changes(run.path, synced["changes"])
        counts["identities"] = synced["counts"]
    if (run.path / "captions" / "captions_push.json").is_file():  # the run went through caption: captions too
        synced = sync_captions_task(str(run.path), cfg)
        save_changes(run.path, synced["changes"])
        counts["captions"] = synced["counts"]
    from castlab.labelstudio.projects.typed import PUSH_NAME
    from castlab.typed.spec import TYPES

    for name in TYPES:  # the dataset types the run was prepared and pushed for
        if (run.path / name / PUSH_NAME).is_file():
            counts[name] = sync_types_task(str(run.path), name, cfg)
    from castlab.video.stage import run_tracks

    if run_tracks(run.path):  # the run has tracks (castlab track): their frame masks and video decisions
        synced_tracks = sync_tracks_task(str(run.path), cfg)
        save_changes(run.path, synced_tracks.pop("updates"))
        counts["tracks"] = synced_tracks
    get_run_logger().info("review-sync %s: %s", run.path.name, counts)
    return counts
