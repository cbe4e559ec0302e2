"""identify: who is who — face-first embeddings, clusters, and the identity review projects in Label Studio.

Embedding fans out on the run's task runner (``orchestration``): one GPU task per ``identity.chunk_instances``
instances, each returning its rows' routing fields and a vectors file; one task clusters the merged chunks.
The flow alone saves the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped

from castlab.config import Config
from castlab.manifest import Manifest
from castlab.orchestration import gpu_resources, rerun_on_configured_runner, runs_elsewhere, worker_models
from castlab.rows import chunked
from castlab.workspace import Run
from flows.common import LABEL_STUDIO_RETRIES, labelstudio, resolve_config, save_changes


@task(name="embed-chunk")
def embed_chunk_task(rows: list[dict[str, Any]], frames: dict[str, Any], index: int, run_dir: str,
                     cfg: Config) -> dict[str, Any]:
    """Face/open_clip embeddings of one chunk of instances (models loaded once per worker process)."""
    from castlab.identity.stage import embed_chunk, load_models

    with worker_models("identity", cfg, load_models) as models:
        return embed_chunk(rows, cfg, models, run_dir=Path(run_dir), frames=frames, index=index)


@task(name="cluster-identities")
def cluster_task(run_dir: str, chunks: list[dict[str, Any]], force: bool, cfg: Config) -> dict[str, Any]:
    from castlab.identity.stage import cluster_identities

    manifest = Manifest.for_run(Path(run_dir))
    summary = cluster_identities(Path(run_dir), manifest, cfg, chunks, force=force)
    return {**summary, "changes": manifest.changes()}


@task(name="push-identity-review", **LABEL_STUDIO_RETRIES)
def push_task(run_dir: str, summary: dict[str, Any], cfg: Config) -> dict[str, Any]:
    from castlab.labelstudio.projects.identity import push_identity_review

    manifest = Manifest.for_run(Path(run_dir))
    sheets = {int(k): Path(p) for k, p in summary["sheets"].items()}
    version = f"castlab-clusters-{summary['profile']}"
    pushed = push_identity_review(labelstudio(cfg), manifest, Path(run_dir), cfg, sheets, version)
    return {**pushed, "changes": manifest.changes()}


@flow(name="identify")
def identify(
    run_dir: str, push: bool = True, force: bool = False, config_files: list[str] | None = None,
    preset: str | None = None, profile: str | None = None,
) -> dict[str, Any]:
    """Embed the run's instances (InsightFace, open_clip), cluster them and push both identity projects."""
    from castlab.identity.stage import frames_of, identity_inputs

    cfg = resolve_config(config_files, preset, profile)
    if runs_elsewhere(cfg):  # a deployment run under orchestration.task_runner: dask | ray
        return rerun_on_configured_runner(identify, cfg, {
            "run_dir": run_dir, "push": push, "force": force, "config_files": config_files, "preset": preset,
            "profile": profile})
    run = Run.open(run_dir, cfg)
    instances, frames = identity_inputs(run.path, Manifest.for_run(run.path), cfg)
    chunks = [list(c) for c in chunked(instances, cfg.identity.chunk_instances)]
    with gpu_resources(cfg):
        embedded = embed_chunk_task.map(chunks, [frames_of(c, frames) for c in chunks], list(range(len(chunks))),
                                        unmapped(str(run.path)), unmapped(cfg)).result()
    summary = cluster_task.submit(str(run.path), embedded, force, cfg).result()
    save_changes(run.path, summary.pop("changes"))
    if push:
        pushed = push_task(str(run.path), summary, cfg)
        save_changes(run.path, pushed.pop("changes"))
        summary["labelstudio"] = pushed
    get_run_logger().info("identify %s: %d instances, %d clusters, %d noise", run.path.name, summary["instances"],
                          summary["clusters"], summary["noise"])
    return summary
