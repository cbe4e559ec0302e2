"""curate + identify on a real Dask LocalCluster (worker processes) give the manifest the thread runner gives.

Both runs use the tiny profile and small chunks (several segmentation and embedding chunks, so the chunks
really fan out), under the session's Prefect server, without Label Studio (push=False).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_thin_path import make_video

from castlab.config import load_config
from castlab.manifest import Manifest
from castlab.orchestration import clear_worker_models, loaded_models

pytestmark = pytest.mark.integration

# Path columns hold the run folder (runs/<timestamp>-curate-…/), which differs between two runs by design:
# they are compared relative to their run folder. Nothing else in a row is run-specific.
PATH_COLUMNS = ("path", "mask_path", "crop_path", "background_path")


def _plain(value: Any) -> Any:
    """Parquet's arrays as lists, NaN as None: values that compare with ``==``."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _normalised(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The run's manifest rows by row id, paths relative to the run folder."""
    rows: dict[str, dict[str, Any]] = {}
    for row in Manifest.load(run_dir / "manifest.parquet").rows():
        out = {key: _plain(value) for key, value in row.items()}
        for key in PATH_COLUMNS:
            if out.get(key):
                out[key] = Path(out[key]).relative_to(run_dir).as_posix()
        rows[row["row_id"]] = out
    return rows


def _curate_and_identify(runner: str, video: Path, override: Path, monkeypatch: pytest.MonkeyPatch
                         ) -> tuple[Path, float]:
    """Run as a deployment runs them: the flows as declared (thread runner); the runner comes from the settings
    (CASTLAB_TASK_RUNNER) and a flow on another one runs itself again on it."""
    from flows.curate import curate
    from flows.identify import identify

    monkeypatch.setenv("CASTLAB_TASK_RUNNER", runner)
    assert load_config(overrides=[str(override)]).orchestration.task_runner == runner
    started = time.monotonic()
    kwargs = {"config_files": [str(override)], "profile": "tiny"}
    run_dir = curate(video=str(video), mode="scene", push=False, **kwargs)["run_dir"]
    summary = identify(run_dir=run_dir, push=False, **kwargs)
    print(f"{runner}: {summary['instances']} instances, {summary['clusters']} clusters, {summary['noise']} noise")
    assert summary["instances"] > 0
    return Path(run_dir), time.monotonic() - started


def test_dask_local_cluster_gives_the_thread_runners_manifest(prefect_runtime, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CASTLAB_WORKSPACE", str(tmp_path / "workspace"))
    override = tmp_path / "chunks.yaml"  # several chunks per stage; clusters of 3 are enough for a tiny run
    override.write_text("frames:\n  frames_per_shot: 3\nsegmentation:\n  chunk_frames: 2\n"
                        "identity:\n  chunk_instances: 8\nclustering:\n  min_cluster_size: 3\n  min_samples: 1\n")
    video = make_video(tmp_path / "two shots.mp4", shots=2, frames_per_shot=24)

    # Dask starts its workers with OMP_NUM_THREADS=1, and torch's float reductions depend on its thread count
    # (a score differs in the 6th decimal otherwise): the thread runner gets one torch thread too.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        thread_run, thread_s = _curate_and_identify("thread", video, override, monkeypatch)
    finally:
        torch.set_num_threads(torch_threads)
    assert {"segment", "identity"} <= set(loaded_models())  # threads: loaded in this process, once per stage
    clear_worker_models()
    dask_run, dask_s = _curate_and_identify("dask", video, override, monkeypatch)
    assert loaded_models() == []  # Dask: every segmentation and embedding chunk ran in a worker process
    print(f"curate + identify: thread runner {thread_s:.1f} s, Dask LocalCluster (2 processes) {dask_s:.1f} s")

    assert thread_run != dask_run
    threads, dask = _normalised(thread_run), _normalised(dask_run)
    assert sum(r["kind"] == "instance" for r in threads.values()) >= 4  # more than one chunk of each stage
    assert set(dask) == set(threads)
    for row_id, row in threads.items():
        assert dask[row_id] == row, row_id
    for name in ("face", "clip"):  # the merged embedding chunks, vector for vector
        with np.load(thread_run / "embeddings" / "identity.npz") as a, \
                np.load(dask_run / "embeddings" / "identity.npz") as b:
            assert np.array_equal(a["row_ids"], b["row_ids"])
            assert np.array_equal(a[name], b[name], equal_nan=True), name
    assert not (dask_run / "embeddings" / "chunks").exists()  # chunk files are merged, then removed
