"""review-advance and review-reconcile: reviews move the pipeline (see castlab.reviews).

``review-advance`` is started by the trigger on ``castlab.review.annotation`` events (prefect.yaml): for every run
whose review lives in the event's project it runs review-sync, and when the run's review is complete it starts the
next stage's deployment, once. ``review-reconcile`` runs on a schedule and emits the events that dropped webhooks
missed.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.deployments import run_deployment

from castlab.reviews import advance
from castlab.reviews.reconcile import missed, newest_update, read_watermarks, save_watermarks
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config
from flows.review_sync import review_sync

MAX_ROUNDS = 5  # annotations that keep arriving while a round syncs: at most this many rounds per run
DEBOUNCE_S = 10  # the trigger's `within` (prefect.yaml): a project's events this soon after one start no run
CRASH_ATTEMPTS = 3  # a pipeline step whose process keeps dying is retried until it was begun this many times


@task(name="list-project-tasks", **LABEL_STUDIO_RETRIES)
def project_tasks_task(project_id: int, cfg: Any) -> list[dict[str, Any]]:
    from castlab.labelstudio.client import list_tasks

    return list_tasks(labelstudio(cfg), project_id)


@task(name="resume-pipeline")
def resume_task(flow_run_id: str, attempts: int = 15) -> bool:
    """Resume a pipeline run waiting for a review. It records the wait before it suspends: a run still on its way
    to Suspended is tried again for a while (the scheduled reconciliation resumes any left)."""
    from prefect.exceptions import NotPausedError
    from prefect.flow_runs import resume_flow_run

    for attempt in range(attempts):
        try:
            resume_flow_run(UUID(flow_run_id))
            return True
        except NotPausedError:
            if attempt + 1 < attempts:
                time.sleep(2)
    return False


@task(name="retry-crashed-pipeline")
def retry_crashed_task(flow_run_id: str) -> bool:
    """Schedule a pipeline run whose process died (the worker marked it Crashed) to run again: it goes on from its
    state file, redoing only the step it was in."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import AwaitingRetry

    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(UUID(flow_run_id))
        except ObjectNotFound:  # deleted from the server: nothing to retry
            return False
        if run.state is None or not run.state.is_crashed():
            return False
        client.set_flow_run_state(run.id, AwaitingRetry(), force=True)
    get_run_logger().warning("pipeline run %s crashed (%s): scheduled again", run.name, run.state.message)
    return True


def resume_waiting(review: advance.Review) -> list[dict[str, Any]]:
    """Resume the pipeline runs waiting for `review` (complete): their ids and whether each was resumed."""
    from castlab.pipeline.state import waiting_for

    return [{"flow_run": s.flow_run_id, "resumed": resume_task(s.flow_run_id)}
            for s in waiting_for(review.run_dir, review.stage)]


@task(name="start-next-stage")
def start_next_task(review: advance.Review, params: dict[str, Any]) -> str | None:
    """Start the next stage's deployment (not as a subflow: a run of its own); its flow run id."""
    stage, claim = str(review.next_stage), str(review.claim_name)
    if not advance.claim(review.run_dir, claim, {"after": review.stage, "parameters": params}):
        return None
    try:
        started = run_deployment(f"{stage}/{stage}", parameters=params, timeout=0, as_subflow=False)
    except Exception:
        advance.release(review.run_dir, claim)
        raise
    return str(started.id)


def review_state(review: advance.Review, cfg: Any, listed: dict[int, list[dict[str, Any]]] | None = None
                 ) -> tuple[int, int, str | None]:
    """(annotated, total) of the run's tasks in the first counted project that holds any, and the newest
    annotation time stamp over the counted projects (`listed`: project tasks this flow run already has)."""
    progress, stamps = (0, 0), []
    for project_id in review.counted_projects:
        tasks = (listed or {}).get(project_id)
        if tasks is None:
            tasks = project_tasks_task(project_id, cfg)
        stamps.append(newest_update(tasks) or "")
        if progress[1] == 0:
            progress = advance.review_progress(tasks, review)
    return progress[0], progress[1], max(stamps, default="") or None


def review_counts(run_dirs: list[str], stage: str, cfg: Any,
                  listed: dict[int, list[dict[str, Any]]] | None = None) -> tuple[int, int]:
    """(annotated, total) of the runs' tasks in the projects of their `stage` review."""
    annotated = total = 0
    for run_dir in run_dirs:
        for review in advance.run_reviews(Path(run_dir)):
            if review.stage == stage:
                done, count, _ = review_state(review, cfg, listed)
                annotated, total = annotated + done, total + count
    return annotated, total


def settle(event_time: str | None, window_s: float = DEBOUNCE_S) -> float:
    """Wait until `window_s` after the event that started this run: the events of that window start no run of
    their own, so their annotations must be in Label Studio before this run syncs. The seconds waited."""
    if not event_time:
        return 0.0
    try:
        occurred = datetime.fromisoformat(str(event_time).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if occurred.tzinfo is None:
        occurred = occurred.replace(tzinfo=timezone.utc)
    wait = (occurred - datetime.now(timezone.utc)).total_seconds() + window_s
    if 0 < wait <= window_s:
        time.sleep(wait)
        return wait
    return 0.0


@flow(name="review-advance")
def review_advance(project_id: str, event_time: str | None = None, config_files: list[str] | None = None,
                   preset: str | None = None, profile: str | None = None) -> list[dict[str, Any]]:
    """Sync the reviews of `project_id`'s runs and start each complete run's next stage (once). (`project_id` is
    text: the trigger fills it from the event's resource labels, which are strings; `event_time`: when the event
    that started the run occurred, see :func:`settle`.)"""
    logger = get_run_logger()
    settle(event_time)
    cfg = resolve_config(config_files, preset, profile)
    settings = {"config_files": config_files, "preset": preset, "profile": profile}
    results = []
    for review in advance.reviews_of_project(cfg, int(project_id)):
        before = review_state(review, cfg)[2]
        for _ in range(MAX_ROUNDS):
            review_sync(run_dir=str(review.run_dir), **settings)
            annotated, total, newest = review_state(review, cfg)
            if newest == before:
                break  # nothing new arrived while this round synced
            before = newest
        entry: dict[str, Any] = {"run": review.run, "stage": review.stage, "annotated": annotated, "tasks": total}
        complete = advance.is_complete(annotated, total, cfg.reviews.complete_share)
        pipelines = resume_waiting(review) if complete else []
        if pipelines:  # a pipeline run walks this run: it goes on by itself
            entry["pipelines"] = pipelines
        elif review.next_stage and complete:
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
    from castlab.pipeline.state import all_states
    from castlab.reviews.events import post_events

    cfg = resolve_config(config_files, preset, profile)
    api = os.environ.get("PREFECT_API_URL", "").strip()
    marks = read_watermarks()
    found: dict[str, int] = {}
    listed: dict[int, list[dict[str, Any]]] = {}  # each project listed once, also for the pipeline runs below
    for project_id in sorted({p for r in advance.all_reviews(cfg) for p in r.project_ids}):
        tasks = listed[project_id] = project_tasks_task(project_id, cfg)
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
    for state in all_states():
        waiting = state.data.get("waiting") or {}
        if state.data.get("status") == "running" and state.attempts() < CRASH_ATTEMPTS:  # its process may have died
            retry_crashed_task(state.flow_run_id)
        elif state.data.get("status") == "waiting" and advance.is_complete(
                *review_counts(waiting.get("run_dirs") or [], str(waiting.get("review")), cfg, listed),
                cfg.reviews.complete_share):  # suspended just after its review completed: resume it now
            resume_task(state.flow_run_id, attempts=1)
    get_run_logger().info("review-reconcile: annotations found after the watermarks: %s", found or "none")
    return found
