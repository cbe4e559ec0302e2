"""curate: video → frames by shot → SAM2 instance masks → Label Studio masks project."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from castlab.config import Config
from castlab.frames.report import REPORT_MD
from castlab.manifest import Manifest
from castlab.workspace import Run, labelstudio, resolve_config


@task(name="find-videos")
def find_videos_task(video: str) -> list[str]:
    from castlab.frames.video import find_videos

    return [str(p) for p in find_videos(Path(video))]


@task(name="extract-frames")
def extract_frames_task(video: str, run_dir: str, cfg: Config, mode: str | None) -> dict[str, int]:
    from castlab.frames.extract import extract_frames
    rows = extract_frames(Path(video), Path(run_dir), cfg, mode=mode)
    manifest = Manifest.for_run(Path(run_dir))
    manifest.add_rows(rows)
    manifest.save()
    kept = _kept(rows)
    return {"frames": len(rows), "kept": kept, "rejected": len(rows) - kept}


@task(name="deduplicate-frames")
def dedup_task(run_dir: str, cfg: Config) -> dict[str, int]:
    """pHash + SSIM near-duplicate removal over every kept frame of the run (within and across shots)."""
    from castlab.frames.dedup import deduplicate
    manifest = Manifest.for_run(Path(run_dir))
    rows = manifest.rows(kind="frame")
    deduped = deduplicate(rows, cfg)
    manifest.add_rows(deduped)
    manifest.save()
    return {"duplicates": sum(1 for r in deduped if r.get("duplicate_of")), "kept": _kept(deduped)}


@task(name="split-and-report")
def split_report_task(run_dir: str, cfg: Config) -> dict[str, Any]:
    """Train/val by shot (seeded), then report.md / report.csv / contact_sheet.png for the frame stages."""
    from castlab.frames.report import write_report
    from castlab.frames.splits import assign_splits
    manifest = Manifest.for_run(Path(run_dir))
    rows = assign_splits(manifest.rows(kind="frame"), float(cfg.dataset.val_fraction), int(cfg.seed))
    manifest.add_rows([{"row_id": r["row_id"], "split": r["split"]} for r in rows])
    manifest.save()
    return write_report(Path(run_dir), rows, profile=cfg.profile)


def _kept(rows: list[dict[str, Any]]) -> int:
    return sum(1 for r in rows if r.get("status") == "kept")


@task(name="segment-instances")
def segment_task(run_dir: str, cfg: Config) -> dict[str, Any]:
    from castlab.models.embedder import load_embedder
    from castlab.models.segmenter import load_segmenter
    from castlab.segment.characters import CharacterScorer, EvidenceDetector
    from castlab.segment.instances import segment_frames
    manifest = Manifest.for_run(Path(run_dir))
    segmenter = load_segmenter(cfg)
    detector = EvidenceDetector.from_config(cfg)
    scorer = CharacterScorer.from_config(load_embedder(cfg), cfg)
    frames = manifest.rows(kind="frame", status="kept")
    rows = segment_frames(segmenter, frames, Path(run_dir), cfg, detector=detector, scorer=scorer)
    manifest.add_rows(rows)
    manifest.save()
    return {"instances": len(rows), "model_version": segmenter.model_version}


@task(name="push-masks-to-label-studio")
def push_masks_task(run_dir: str, cfg: Config, title: str | None) -> dict[str, Any]:
    from castlab.labelstudio.projects.masks import push_masks
    manifest = Manifest.for_run(Path(run_dir))
    return push_masks(labelstudio(cfg), manifest, Path(run_dir), cfg, title=title)


@flow(name="curate")
def curate(
    video: str,
    mode: str | None = None,
    config_files: list[str] | None = None,
    preset: str | None = None,
    profile: str | None = None,
    project_title: str | None = None,
    push: bool = True,
) -> dict[str, Any]:
    """Extract frames by shot, segment character instances and push them for mask review."""
    logger = get_run_logger()
    cfg = resolve_config(config_files, preset, profile)
    run = Run.create("curate", cfg)
    logger.info("run folder %s (profile %s)", run.path, cfg.profile)
    summary: dict[str, Any] = {"run_dir": str(run.path), "profile": cfg.profile, "videos": []}
    for path in find_videos_task(video):
        counts = extract_frames_task(path, str(run.path), cfg, mode)
        summary["videos"].append({"video": path, **counts})
    summary["dedup"] = dedup_task(str(run.path), cfg)
    report = split_report_task(str(run.path), cfg)
    summary["report"] = report["files"]
    summary["frames"] = {"stages": report["stages"], "reasons": report["reasons"]}
    create_markdown_artifact(key="curate-frames-report", markdown=report["markdown"],
                             description="castlab frame curation report (counts per stage and reason)")
    logger.info("frame report: %s", report["files"][REPORT_MD])
    summary["segmentation"] = segment_task(str(run.path), cfg)
    if push:
        summary["labelstudio"] = push_masks_task(str(run.path), cfg, project_title)
    create_markdown_artifact(
        key="curate-summary",
        markdown=_markdown(summary),
        description="castlab curate run summary",
    )
    logger.info("curate summary: %s", summary)
    return summary


def _markdown(summary: dict[str, Any]) -> str:
    lines = [f"# curate run `{Path(summary['run_dir']).name}` (profile **{summary['profile']}**)", ""]
    lines += ["| video | frames | kept | rejected |", "|---|---|---|---|"]
    lines += [f"| {Path(v['video']).name} | {v['frames']} | {v['kept']} | {v['rejected']} |" for v in summary["videos"]]
    seg = summary.get("segmentation", {})
    lines += ["", f"Instances: {seg.get('instances')} ({seg.get('model_version')})"]
    if "labelstudio" in summary:
        ls = summary["labelstudio"]
        lines.append(f"Label Studio project {ls['project_id']}: {ls['tasks']} tasks, {ls['new_tasks']} new")
    return "\n".join(lines)
