"""review-advance and review-reconcile: reviews move the pipeline (see castlab.reviews).

``review-advance`` is started by the trigger on ``castlab.review.annotation`` events (prefect.yaml): for every run
whose review lives in the event's project it runs review-sync, and when the run's review is complete it starts the
next stage's deployment, once. ``review-reconcile`` runs on a schedule and emits the events that dropped webhooks
missed.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.deployments import run_deployment

from castlab.reviews import advance
from castlab.reviews.reconcile import missed, newest_update, read_watermarks, save_watermarks
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config
from flows.review_sync import review_sync

MAX_ROUNDS = 5  # annotations that keep arriving while a round syncs: at most this many rounds per run


@task(name="list-project-tasks", **LABEL_STUDIO_RETRIES)
def project_tasks_task(project_id: int, cfg: Any) -> list[dict[str, Any]]:
    from castlab.labelstudio.client import list_tasks

    return list_tasks(labelstudio(cfg), project_id)


@task(name="start-next-stage")
def start_next_task(review: advance.Review, params: dict[str, Any]) -> str | None:
    """Start the next stage's deployment (not as a subflow: a run of its own); its flow run id."""
    stage = str(review.next_stage)
    if not advance.claim(review.run_dir, stage, {"after": review.stage, "parameters": params}):
        return None
    try:
        started = run_deployment(f"{stage}/{stage}", parameters=params, timeout=0, as_subflow=False)
    except Exception:
        advance.release(review.run_dir, stage)
        raise
    return str(started.id)


def _progress(review: advance.Review, cfg: Any) -> tuple[int, int, str | None]:
    """(annotated, total) of the run's tasks in the first counted project that holds any, and the newest
    annotation time stamp over the counted projects."""
    progress, stamps = (0, 0), []
    for project_id in review.counted_projects:
        tasks = project_tasks_task(project_id, cfg)
        stamps.append(newest_update(tasks) or "")
        if progress[1] == 0:
            progress = advance.review_progress(tasks, review)
    return progress[0], progress[1], max(stamps, default="") or None


@flow(name="review-advance")
def review_advance(project_id: str, config_files: list[str] | None = None, preset: str | None = None,
                   profile: str | None = None) -> list[dict[str, Any]]:
    """Sync the reviews of `project_id`'s runs and start each complete run's next stage (once). (`project_id` is
    text: the trigger fills it from the event's resource labels, which are strings.)"""
    logger = get_run_logger()
    cfg = resolve_config(config_files, preset, profile)
    settings = {"config_files": config_files, "preset": preset, "profile": profile}
    results = []
    for review in advance.reviews_of_project(cfg, int(project_id)):
        before = _progress(review, cfg)[2]
        for _ in range(MAX_ROUNDS):
            review_sync(run_dir=str(review.run_dir), **settings)
            annotated, total, newest = _progress(review, cfg)
            if newest == before:
                break  # nothing new arrived while this round synced
            before = newest
        entry: dict[str, Any] = {"run": review.run, "stage": review.stage, "annotated": annotated, "tasks": total}
        if review.next_stage and advance.is_complete(annotated, total, cfg.reviews.complete_share):
            flow_run = start_next_task(review, {**advance.next_parameters(review), **settings})
            entry["next"] = {"stage": review.next_stage, "flow_run": flow_run, "already_started": flow_run is None}
        logger.info("review-advance project %s: %s", project_id, entry)
        results.append(entry)
    if not results:
        logger.info("review-advance: project %s belongs to no castlab run in this workspace", project_id)
    return results


@flow(name="review-reconcile")
def review_reconcile(config_files: list[str] | None = None, preset: str | None = None,
                     profile: str | None = None) -> dict[str, int]:
    """Emit one event per castlab project with annotations newer than its watermark (webhooks that never came).
    A project seen for the first time only gets its watermark: reviews finished before reconciliation watched
    them start nothing (`castlab review-sync` or an annotation moves them)."""
    from castlab.reviews.events import post_events

    cfg = resolve_config(config_files, preset, profile)
    api = os.environ.get("PREFECT_API_URL", "").strip()
    marks = read_watermarks()
    found: dict[str, int] = {}
    for project_id in sorted({p for r in advance.all_reviews(cfg) for p in r.project_ids}):
        tasks = project_tasks_task(project_id, cfg)
        if str(project_id) not in marks:  # first sight: start from now, so old reviews start nothing
            marks[str(project_id)] = newest_update(tasks) or ""
            continue
        count, event, newest = missed(project_id, tasks, marks[str(project_id)])
        if event is not None:
            if api:
                post_events(api, [event])
            else:  # no server to take events (ephemeral run): advance in this run
                review_advance(project_id=str(project_id), config_files=config_files, preset=preset, profile=profile)
            found[str(project_id)] = count
        if newest:
            marks[str(project_id)] = newest
    save_watermarks(marks)
    get_run_logger().info("review-reconcile: annotations found after the watermarks: %s", found or "none")
    return found
