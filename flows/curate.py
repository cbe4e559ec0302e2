"""curate: video → frames by shot → SAM2 instance masks → Label Studio masks project.

Tasks compute rows; the flow is the run's one manifest writer (it merges each task's rows and saves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from castlab import frames, segment
from castlab.config import Config
from castlab.frames.report import REPORT_MD
from castlab.manifest import Manifest
from castlab.workspace import Run
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config, save_changes


@task(name="find-videos")
def find_videos_task(video: str) -> list[str]:
    from castlab.frames.video import find_videos

    return [str(p) for p in find_videos(Path(video))]


@task(name="extract-frames")
def extract_frames_task(video: str, run_dir: str, cfg: Config, mode: str | None) -> list[dict[str, Any]]:
    return frames.process([{"video": video}], cfg, run_dir=Path(run_dir), mode=mode)


@task(name="deduplicate-frames")
def dedup_task(rows: list[dict[str, Any]], cfg: Config) -> list[dict[str, Any]]:
    """pHash + SSIM near-duplicate removal over every kept frame of the run (within and across shots)."""
    from castlab.frames.dedup import deduplicate

    return deduplicate(rows, cfg)


@task(name="split-and-report")
def split_report_task(run_dir: str, rows: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """Train/val by shot (seeded), then report.md / report.csv / contact_sheet.png for the frame stages."""
    from castlab.frames.report import write_report
    from castlab.frames.stage import split

    splits = split(rows, cfg)
    by_id = {s["row_id"]: s["split"] for s in splits}
    report = write_report(Path(run_dir), [{**r, "split": by_id[r["row_id"]]} for r in rows], profile=cfg.profile)
    return {"splits": splits, **report}


@task(name="segment-instances")
def segment_task(run_dir: str, rows: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """SAM2 character instances, ``segmentation.chunk_frames`` frames at a time (models loaded once)."""
    from castlab.segment.instances import segment_frames

    models = segment.load_models(cfg)
    instances = segment_frames(models.segmenter, rows, Path(run_dir), cfg, models.detector, models.scorer)
    return {"rows": instances, "model_version": models.segmenter.model_version}


@task(name="push-masks-to-label-studio", **LABEL_STUDIO_RETRIES)
def push_masks_task(run_dir: str, cfg: Config, title: str | None) -> dict[str, Any]:
    from castlab.labelstudio.projects.masks import push_masks

    manifest = Manifest.for_run(Path(run_dir))
    summary = push_masks(labelstudio(cfg), manifest, Path(run_dir), cfg, title=title)
    return {**summary, "changes": manifest.changes()}


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
    run_dir = str(run.path)
    logger.info("run folder %s (profile %s)", run.path, cfg.profile)
    summary: dict[str, Any] = {"run_dir": run_dir, "profile": cfg.profile, "videos": []}
    for path in find_videos_task(video):
        rows = extract_frames_task(path, run_dir, cfg, mode)
        save_changes(run_dir, rows)
        summary["videos"].append({"video": path, **frames.stage.counts(rows)})
    deduped = dedup_task(Manifest.for_run(run.path).rows(kind="frame"), cfg)
    save_changes(run_dir, deduped)
    summary["dedup"] = {"duplicates": sum(1 for r in deduped if r.get("duplicate_of")),
                        "kept": frames.stage.counts(deduped)["kept"]}
    report = split_report_task(run_dir, Manifest.for_run(run.path).rows(kind="frame"), cfg)
    save_changes(run_dir, report["splits"])
    summary["report"] = report["files"]
    summary["frames"] = {"stages": report["stages"], "reasons": report["reasons"]}
    create_markdown_artifact(key="curate-frames-report", markdown=report["markdown"],
                             description="castlab frame curation report (counts per stage and reason)")
    logger.info("frame report: %s", report["files"][REPORT_MD])
    segmented = segment_task(run_dir, Manifest.for_run(run.path).rows(kind="frame", status="kept"), cfg)
    save_changes(run_dir, segmented["rows"])
    summary["segmentation"] = {"instances": len(segmented["rows"]), "model_version": segmented["model_version"]}
    if push:
        pushed = push_masks_task(run_dir, cfg, project_title)
        save_changes(run_dir, pushed.pop("changes"))
        summary["labelstudio"] = pushed
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
