"""Shared plumbing for flows: config resolution and the Label Studio connection."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from castlab.config import Config, load_config
from castlab.manifest import Manifest


def resolve_config(
    config_files: list[str] | None = None,
    preset: str | None = None,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    return load_config(overrides=list(config_files or []), preset=preset, profile=profile, extra=overrides)


def labelstudio(cfg: Config) -> Any:
    from castlab.labelstudio import client
    from castlab.labelstudio.connection import labelstudio_connection

    url, token = labelstudio_connection(cfg)
    return client.connect(url, token)


# Label Studio pushes and syncs are idempotent (stable task keys, annotations read again): a dropped connection
# or a restarting server is retried instead of failing the flow.
LABEL_STUDIO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 5}


def save_changes(run_dir: str | Path, changes: list[dict[str, Any]]) -> int:
    """The one manifest writer of a flow run: merge a task's row changes into the run's manifest and save it.

    Load, merge and save happen under an exclusive lock on ``<run>/manifest.lock``: a review-sync started by a
    reviewer's webhook while a stage runs on the same run merges its changes instead of overwriting the stage's
    (changes are column-wise upserts by row id)."""
    import fcntl

    lock = Path(run_dir) / "manifest.lock"
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            manifest = Manifest.for_run(Path(run_dir))
            manifest.add_rows(changes)
            manifest.save()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return len(changes)


def results_with_progress(futures: Sequence[Any], sizes: Sequence[int], desc: str, unit: str = "instance") -> list[Any]:
    """The futures' results in order, with a progress bar counting `sizes` (items per future)."""
    results = []
    with tqdm(total=sum(sizes), desc=desc, unit=unit) as bar:
        for future, size in zip(futures, sizes, strict=True):
            results.append(future.result())
            bar.update(size)
    return results
