"""caption: VLM schema captions for the identified instances → QC → the Label Studio captions project.

Captioning fans out on the run's task runner (``orchestration``): one task plans the run (what is new since the
last one), one GPU task captions each ``captions.chunk_size`` instances to caption, one task does what needs
every record (identity majorities, QC, cluster labels, report, ``captions.jsonl``). Tasks pass rows and
records; the VLM is loaded once per worker process. The flow alone saves the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped

from castlab.config import Config
from castlab.manifest import Manifest
from castlab.orchestration import gpu_resources, rerun_on_configured_runner, runs_elsewhere, worker_models
from castlab.workspace import Run
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config, results_with_progress, save_changes

MODELS = "captions"  # the worker_models name of the captioner and open_clip


@task(name="plan-captions")
def plan_task(run_dir: str, style: str | None, force: bool, cfg: Config) -> dict[str, Any]:
    """The run's instances, the records settled now (no identity, reused) and those to caption."""
    from castlab.captions.stage import caption_inputs, load_models, plan_captions

    rows = caption_inputs(Path(run_dir), Manifest.for_run(Path(run_dir)))
    with worker_models(MODELS, cfg, load_models) as models:  # the model version decides what is reused
        version = models.captioner.model_version
    return plan_captions(Path(run_dir), rows, cfg, version, style=style, force=force)


@task(name="caption-chunk")
def caption_chunk_task(rows: list[dict[str, Any]], style: str, cfg: Config) -> list[dict[str, Any]]:
    """The VLM's schema fields for one chunk of instance rows (models loaded once per worker process)."""
    from castlab.captions.stage import load_models, process

    with worker_models(MODELS, cfg, load_models) as models:
        return process(rows, cfg, models, style=style)


@task(name="finish-captions")
def finish_task(run_dir: str, plan: dict[str, Any], parts: list[list[dict[str, Any]]], sequences: bool,
                cfg: Config) -> dict[str, Any]:
    """Assembly, QC, cluster labels and the files over every record; the manifest changes come back."""
    from castlab.captions.stage import finish_captions, load_models

    manifest = Manifest.for_run(Path(run_dir))
    with worker_models(MODELS, cfg, load_models) as models:
        summary = finish_captions(Path(run_dir), manifest, cfg, models, plan, parts, sequences=sequences)
    return {**summary, "changes": manifest.changes()}


@task(name="push-captions", **LABEL_STUDIO_RETRIES)
def push_task(run_dir: str, cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.captions import push_captions

    return push_captions(labelstudio(cfg), Manifest.for_run(Path(run_dir)), Path(run_dir), cfg)


@flow(name="caption")
def caption(
    run_dir: str, push: bool = True, style: str | None = None, force: bool = False, sequences: bool = False,
    config_files: list[str] | None = None, preset: str | None = None, profile: str | None = None,
) -> dict[str, Any]:
    """Caption the run's identified instances, flag them, and push the captions review project."""
    from castlab.captions.stage import caption_chunks

    cfg = resolve_config(config_files, preset, profile)
    if runs_elsewhere(cfg):  # a deployment run under orchestration.task_runner: dask | ray
        return rerun_on_configured_runner(caption, cfg, {
            "run_dir": run_dir, "push": push, "style": style, "force": force, "sequences": sequences,
            "config_files": config_files, "preset": preset, "profile": profile})
    run = Run.open(run_dir, cfg)
    with gpu_resources(cfg):
        plan = plan_task.submit(str(run.path), style, force, cfg).result()
        chunks = caption_chunks(plan, int(cfg.captions.chunk_size))
        futures = caption_chunk_task.map(chunks, unmapped(plan["style"]), unmapped(cfg))
        parts = results_with_progress(futures, [len(c) for c in chunks], "captions")
        summary = finish_task.submit(str(run.path), plan, parts, sequences, cfg).result()
    save_changes(run.path, summary.pop("changes"))
    if push:
        summary["labelstudio"] = push_task(str(run.path), cfg)
    get_run_logger().info("caption %s: %d instances %s, %d flagged (%d captioned now in %d chunks)", run.path.name,
                          summary["instances"], summary["status"], summary["flagged"], summary["captioned_now"],
                          summary["chunks"])
    return summary
