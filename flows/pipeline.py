"""pipeline: videos walked from curation to a registered LoRA, waiting for each review in Label Studio.

curate → masks review → identify → identities review → caption → captions review → prepare (each dataset type
asked for: background, style, lighting, pose, expression) → each type's review → dataset (each character and each
type) → train (each) → evaluate → checkpoints review → registry → the run report. Before each wait the run records
what it waits for (:mod:`castlab.pipeline.state`); run from its deployment it then suspends (the worker's process exits,
the Prefect UI shows the run Suspended), run in process it pauses. ``review-advance`` resumes it when the review
is complete (:mod:`castlab.reviews`); a run resumed while its review is still incomplete waits again. A resumed
run starts again from the top and skips the steps it has done; a step it had begun and not finished (the worker
died) is redone, replacing that step's own partial output. A failed run is retried once in place; a run whose
process died is scheduled again by review-reconcile (flows/review_advance.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import Pause
from prefect.flow_runs import pause_flow_run, suspend_flow_run

from castlab.pipeline.state import REVIEW_OF_STEP, PipelineState
from castlab.reviews import advance
from flows.caption import caption
from flows.common import resolve_config
from flows.curate import curate
from flows.dataset import dataset
from flows.evaluate import evaluate
from flows.identify import identify
from flows.prepare import prepare
from flows.report import report
from flows.review_advance import review_counts
from flows.review_sync import review_sync
from flows.train import train


class Stop(Exception):
    """Nothing left to do (no task to review, no character to train): the run ends, completed, with the reason."""


def _step(state: PipelineState, step: str, work: Callable[[bool], dict[str, Any]]) -> dict[str, Any]:
    """Run `work` once: skipped when done; `work(redo)` is told when an earlier attempt began and never finished."""
    if not state.done(step):
        redo = step in state.data["steps"]
        state.begin(step)
        state.finish(step, work(redo))
    return state.result(step)


def _each(state: PipelineState, step: str, items: dict[str, Any], work: Callable[[str, Any, bool], Any]) -> dict:
    """`work` per item (a character), each result saved as it comes: a resumed run redoes only the unfinished."""
    if state.done(step):
        return state.result(step)
    entry = state.data["steps"].get(step) or {}
    results, begun = dict(entry.get("partial") or {}), set(entry.get("begun") or [])
    state.begin(step)
    for name, item in items.items():
        if name in results:
            continue
        state.data["steps"][step]["begun"] = sorted(begun | {name})
        state.save()
        results[name] = work(name, item, name in begun)
        state.data["steps"][step]["partial"] = results
        state.save()
    state.finish(step, results)
    return results


def _wait_for_review(state: PipelineState, step: str, run_dirs: list[str], cfg: Any, sync: dict[str, Any] | None
                     ) -> None:
    """Wait until the review of `run_dirs` is complete (suspended or paused), then sync it (`sync`: review-sync's
    settings; None leaves the sync to the next step)."""
    if state.done(step):
        return
    review = REVIEW_OF_STEP[step]
    state.wait(step, run_dirs)  # recorded first: review-advance resumes only runs it sees waiting
    annotated, total = review_counts(run_dirs, review, cfg)
    if total == 0:
        raise Stop(f"the {review} review has no task of this run")
    while not advance.is_complete(annotated, total, cfg.reviews.complete_share):
        get_run_logger().info("waiting for the %s review: %d/%d tasks annotated", review, annotated, total)
        _suspend(state, step, cfg)
        annotated, total = review_counts(run_dirs, review, cfg)
    if sync is not None:
        for run_dir in run_dirs:
            review_sync(run_dir=run_dir, **sync)
    state.finish(step, {"annotated": annotated, "tasks": total})


def _suspend(state: PipelineState, step: str, cfg: Any) -> None:
    """Suspend the run (from a deployment: the process exits here) or pause it (in process) until resumed. Each
    wait has a key of its own: a resumed run whose review is still incomplete waits again."""
    entry = state.data["steps"][step]
    key = f"{step}-{entry.get('suspends', 0)}"
    entry["suspends"] = entry.get("suspends", 0) + 1
    state.save()
    context = FlowRunContext.get()
    timeout = cfg.reviews.wait_timeout_s or None
    if context and context.flow_run and context.flow_run.deployment_id:
        suspend_flow_run(key=key, timeout=timeout)
    else:
        pause_flow_run(key=key, timeout=timeout or 10 * 365 * 86400)


@flow(name="pipeline", retries=1, retry_delay_seconds=60)
def pipeline(videos: list[str], mode: str | None = None, types: list[str] | None = None,
             config_files: list[str] | None = None, preset: str | None = None, profile: str | None = None
             ) -> dict[str, Any]:
    """Walk `videos` through every stage to a registered LoRA per reviewed character (and per dataset type in
    `types`); each review is a wait."""
    from castlab.typed.spec import dataset_type

    logger = get_run_logger()
    settings: dict[str, Any] = {"config_files": config_files, "preset": preset, "profile": profile}
    cfg = resolve_config(**settings)
    types = [dataset_type(t).name for t in dict.fromkeys(types or [])]  # an unknown type fails before any work
    context = FlowRunContext.get()
    flow_run_id, name = (str(context.flow_run.id), context.flow_run.name) if context and context.flow_run else ("", "")
    state = PipelineState.open(flow_run_id, name, {"videos": videos, "mode": mode, "types": types, **settings})
    try:
        curated = _step(state, "curate", lambda _: _curate_summary(curate(video=videos, mode=mode, **settings)))
        run_dir = str(curated["run_dir"])
        for stage in ("identify", "caption", "dataset", *(f"dataset-{t}" for t in types)):  # this run walks them:
            advance.claim(Path(run_dir), stage, {"by": "pipeline", "flow_run": flow_run_id})  # review-advance won't
        _wait_for_review(state, "masks-review", [run_dir], cfg, settings)
        _step(state, "identify", lambda redo: _pick(identify(run_dir=run_dir, force=redo, **settings),
                                                    "instances", "clusters", "noise"))
        _wait_for_review(state, "identities-review", [run_dir], cfg, settings)
        _step(state, "caption", lambda _: _pick(caption(run_dir=run_dir, **settings), "instances", "flagged"))
        _wait_for_review(state, "captions-review", [run_dir], cfg, settings)
        _each(state, "prepare", dict.fromkeys(types), lambda t, _, redo: _pick(
            prepare(run_dir=run_dir, dataset_type=t, force=redo, **settings), "candidates", "ok", "labels"))
        for t in types:
            _wait_for_review(state, f"{t}-review", [run_dir], cfg, settings)
        built = _step(state, "dataset", lambda _: _all_datasets(run_dir, types, settings))
        if not built["datasets"]:
            raise Stop(f"no character dataset was built ({built.get('skipped')})")
        trained = _each(state, "train", built["datasets"], lambda _, data, redo: train(
            training_toml=data["training_toml"], force=redo, **settings))
        evaluated = _each(state, "evaluate", trained, lambda character, checkpoints, _: _evaluation(evaluate(
            checkpoints=checkpoints, dataset=built["datasets"][character]["out_dir"], **settings)))
        eval_dirs = [e["out_dir"] for e in evaluated.values()]
        _wait_for_review(state, "checkpoints-review", eval_dirs, cfg, None)
        _each(state, "registry", evaluated, lambda _, e, __: _pick(
            review_sync(run_dir=e["out_dir"], **settings).get("checkpoints") or {}, "chosen", "agreement",
            "registry"))
        _step(state, "report", lambda _: _report(run_dir, settings))
        state.end("completed")
    except Stop as stop:
        logger.warning("pipeline stopped: %s", stop)
        if state.run_dir:  # what was done so far, and why it stopped, on one page
            _step(state, "report", lambda _: _report(str(state.run_dir), settings))
        state.end("stopped", str(stop))
    except Pause:
        raise  # suspended: the state file says what the run waits for
    except BaseException as exc:
        state.end("failed", f"{type(exc).__name__}: {exc}")
        raise
    logger.info("pipeline %s: %s", state.data["status"], state.run_dir)
    return state.data


def _report(run_dir: str, settings: dict[str, Any]) -> dict[str, Any]:
    written = report(run_dirs=[run_dir], **settings)
    return {"html": next(iter(written.values()))["html"]}


def _pick(result: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: result.get(k) for k in keys}


def _curate_summary(summary: dict[str, Any]) -> dict[str, Any]:
    return {"run_dir": summary["run_dir"], "instances": summary["segmentation"]["instances"],
            "tasks": (summary.get("labelstudio") or {}).get("tasks")}


def _datasets(built: dict[str, Any]) -> dict[str, Any]:
    return {"datasets": {n: _pick(d, "out_dir", "training_toml", "images") for n, d in built["datasets"].items()},
            "skipped": built.get("skipped")}


def _all_datasets(run_dir: str, types: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """The characters' datasets, then one per dataset type beside them (in the same dataset run folder)."""
    built = _datasets(dataset(run_dirs=[run_dir], **settings))
    root = str(Path(next(iter(built["datasets"].values()))["out_dir"]).parent) if built["datasets"] else None
    for t in types:
        built["datasets"].update(_datasets(dataset(run_dirs=[run_dir], dataset_type=t, out_dir=root, **settings))
                                 ["datasets"])
    return built


def _evaluation(result: dict[str, Any]) -> dict[str, Any]:
    return {"out_dir": result["out_dir"], "recommended": result.get("recommended_file"),
            "project_id": (result.get("labelstudio") or {}).get("project_id")}
