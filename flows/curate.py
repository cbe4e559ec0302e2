"""curate: video → frames by shot → SAM2 instance masks → Label Studio masks project.

Tasks compute rows; the flow is the run's one manifest writer (it merges each task's rows and saves).
Heavy stages fan out on the run's task runner (``orchestration``): one frame-extraction task per video, one
segmentation task per ``segmentation.chunk_frames`` kept frames (a GPU task); tasks pass rows and paths.
An input that cannot be read (a corrupt video, a frame image, an output that cannot be written) is recorded with
its reason and skipped (:mod:`castlab.frames.failures`); the summary's ``failed`` lists them. Only a run where no
video can be read fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact

from castlab import frames, segment
from castlab.config import Config
from castlab.frames.failures import failed_frames, failed_videos, none_readable, process_each
from castlab.frames.report import REPORT_MD
from castlab.manifest import Manifest
from castlab.orchestration import gpu_resources, rerun_on_configured_runner, runs_elsewhere, worker_models
from castlab.rows import chunked
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


@task(name="rewrite-frame-report")
def report_task(run_dir: str, rows: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """The frame report again (frames a later step rejected are counted under their reason)."""
    from castlab.frames.report import write_report

    return write_report(Path(run_dir), rows, profile=cfg.profile)


@task(name="segment-chunk")
def segment_chunk_task(rows: list[dict[str, Any]], run_dir: str, cfg: Config) -> dict[str, Any]:
    """SAM2 character instances of one chunk of frame rows (models loaded once per worker process)."""
    with worker_models("segment", cfg, segment.load_models) as models:
        instances, rejected = process_each(
            rows, lambda some: segment.process(some, cfg, models, run_dir=Path(run_dir)), "segmentation")
        return {"rows": instances, "rejected": rejected, "model_version": models.segmenter.model_version,
                "alpha": models.segmenter.alpha}


@task(name="write-segmentation-results")
def segment_results_task(run_dir: str, rows: list[dict[str, Any]], instances: list[dict[str, Any]], cfg: Config,
                         model_version: str, alpha: float) -> str:
    """``segmentation_results.json`` over every chunk's instances."""
    from castlab.segment.instances import write_results

    return str(write_results(Path(run_dir), rows, instances, cfg, model_version, alpha))


@task(name="push-masks-to-label-studio", **LABEL_STUDIO_RETRIES)
def push_masks_task(run_dir: str, cfg: Config, title: str | None) -> dict[str, Any]:
    from castlab.labelstudio.projects.masks import push_masks

    manifest = Manifest.for_run(Path(run_dir))
    summary = push_masks(labelstudio(cfg), manifest, Path(run_dir), cfg, title=title)
    return {**summary, "changes": manifest.changes()}


@flow(name="curate")
def curate(
    video: str | list[str],
    mode: str | None = None,
    config_files: list[str] | None = None,
    preset: str | None = None,
    profile: str | None = None,
    project_title: str | None = None,
    push: bool = True,
) -> dict[str, Any]:
    """Extract frames by shot, segment character instances and push them for mask review (`video`: a video file,
    a folder of videos, or a list of either)."""
    logger = get_run_logger()
    cfg = resolve_config(config_files, preset, profile)
    if runs_elsewhere(cfg):  # a deployment run under orchestration.task_runner: dask | ray
        return rerun_on_configured_runner(curate, cfg, {
            "video": video, "mode": mode, "config_files": config_files, "preset": preset, "profile": profile,
            "project_title": project_title, "push": push})
    run = Run.create("curate", cfg)
    run_dir = str(run.path)
    logger.info("run folder %s (profile %s)", run.path, cfg.profile)
    summary: dict[str, Any] = {"run_dir": run_dir, "profile": cfg.profile, "videos": []}
    videos = [path for item in ([video] if isinstance(video, str) else video) for path in find_videos_task(item)]
    extracted = [extract_frames_task.submit(path, run_dir, cfg, mode) for path in videos]
    for path, future in zip(videos, extracted, strict=True):
        rows = future.result()
        save_changes(run_dir, rows)
        summary["videos"].append({"video": path, **frames.stage.counts(rows)})
    summary["failed"] = failed_videos(Manifest.for_run(run.path).rows(kind="video"))
    if videos and len(summary["failed"]) == len(videos):  # the run folder keeps the record
        raise none_readable(video, summary["failed"])
    for failed in summary["failed"]:
        logger.warning("input skipped: %s", failed["reason"])
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
    kept = Manifest.for_run(run.path).rows(kind="frame", status="kept")
    chunks = [list(c) for c in chunked(kept, cfg.segmentation.chunk_frames)] or [[]]
    with gpu_resources(cfg):
        parts = segment_chunk_task.map(chunks, run_dir=unmapped(run_dir), cfg=unmapped(cfg)).result()
    instances = [row for part in parts for row in part["rows"]]
    rejected = [row for part in parts for row in part["rejected"]]
    if rejected:  # frames segmentation could not read or write: rejected with the reason, the report says so
        save_changes(run_dir, rejected)
        kept = Manifest.for_run(run.path).rows(kind="frame", status="kept")
        rewritten = report_task(run_dir, Manifest.for_run(run.path).rows(kind="frame"), cfg)
        summary["frames"] = {"stages": rewritten["stages"], "reasons": rewritten["reasons"]}
    segment_results_task(run_dir, kept, instances, cfg, parts[0]["model_version"], parts[0]["alpha"])
    save_changes(run_dir, instances)
    summary["failed"] += failed_frames(Manifest.for_run(run.path).rows(kind="frame"))
    summary["segmentation"] = {"instances": len(instances), "model_version": parts[0]["model_version"]}
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
    if summary.get("failed"):
        lines += ["", f"**Failed inputs ({len(summary['failed'])})**, skipped:", ""]
        lines += [f"- {f['reason']}" for f in summary["failed"]]
    seg = summary.get("segmentation", {})
    lines += ["", f"Instances: {seg.get('instances')} ({seg.get('model_version')})"]
    if "labelstudio" in summary:
        ls = summary["labelstudio"]
        lines.append(f"Label Studio project {ls['project_id']}: {ls['tasks']} tasks, {ls['new_tasks']} new")
    return "\n".join(lines)
