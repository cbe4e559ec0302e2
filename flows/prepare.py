"""prepare: a curate run → the candidates of one dataset type (background, style, lighting, pose, expression),
checked, embedded, labelled and captioned → the type's Label Studio review project.

One task plans (what is new since the last preparation), one task per chunk of candidates runs the models (fanned
out on the run's task runner, models loaded once per worker process), one task clusters scenes and writes the
records, one pushes the review tasks. Nothing here writes the manifest: a type's records live in ``<run>/<type>/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped

from castlab.config import Config
from castlab.orchestration import gpu_resources, worker_models
from castlab.workspace import Run
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config, results_with_progress


def _loader(name: str) -> Any:
    from castlab.typed.stage import load_models

    return lambda cfg: load_models(cfg, name)


@task(name="plan-preparation")
def plan_task(run_dir: str, name: str, force: bool, cfg: Config) -> dict[str, Any]:
    """The candidates to process now, the records reused and the frames skipped."""
    from castlab.typed.stage import plan

    with worker_models(f"typed-{name}", cfg, _loader(name)) as models:
        version = models.version
    todo, reused, skipped = plan(Path(run_dir), cfg, name, version, force)
    return {"todo": todo, "reused": reused, "skipped": skipped}


@task(name="prepare-chunk")
def chunk_task(rows: list[dict[str, Any]], name: str, cfg: Config) -> list[dict[str, Any]]:
    """Checks, quality, embeddings and VLM fields of one chunk of candidates."""
    from castlab.typed.stage import process

    with worker_models(f"typed-{name}", cfg, _loader(name)) as models:
        return process(rows, cfg, models, name=name)


@task(name="finish-preparation")
def finish_task(run_dir: str, name: str, records: list[dict[str, Any]], skipped: list[dict[str, Any]],
                cfg: Config) -> dict[str, Any]:
    from castlab.typed.stage import finish

    return finish(Path(run_dir), cfg, name, records, skipped)


@task(name="push-type-review", **LABEL_STUDIO_RETRIES)
def push_task(run_dir: str, name: str, cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.typed import push_typed

    return push_typed(labelstudio(cfg), Path(run_dir), name, cfg)


@flow(name="prepare")
def prepare(
    run_dir: str, dataset_type: str, push: bool = True, force: bool = False,
    config_files: list[str] | None = None, preset: str | None = None, profile: str | None = None,
) -> dict[str, Any]:
    """Prepare `dataset_type` on the curate run `run_dir` and push its review project."""
    from castlab.rows import chunked
    from castlab.typed.spec import dataset_type as known_type
    from castlab.typed.stage import CHUNK

    cfg = resolve_config(config_files, preset, profile)
    known_type(dataset_type)  # an unknown type fails before any work
    run = Run.open(run_dir, cfg)
    with gpu_resources(cfg):
        plan = plan_task.submit(str(run.path), dataset_type, force, cfg).result()
        chunks = [list(c) for c in chunked(plan["todo"], CHUNK)]
        futures = chunk_task.map(chunks, unmapped(dataset_type), unmapped(cfg))
        parts = results_with_progress(futures, [len(c) for c in chunks], f"prepare {dataset_type}", "image")
        records = plan["reused"] + [r for part in parts for r in part]
        summary = finish_task.submit(str(run.path), dataset_type, records, plan["skipped"], cfg).result()
    summary.update(processed_now=len(plan["todo"]), reused=len(plan["reused"]))
    if push:
        summary["labelstudio"] = push_task(str(run.path), dataset_type, cfg)
    get_run_logger().info("prepare %s on %s: %d candidates, %d ok (%s), %s %s labels %s", dataset_type,
                          run.path.name, summary["candidates"], summary["ok"], summary["reasons"] or "none rejected",
                          summary["scenes"], "scenes;", summary["labels"])
    return summary
