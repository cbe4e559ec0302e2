"""Dask vs threads on one chunked stage: curate's SAM2 segmentation of N frames, one task per chunk.

Inputs (cached in ``.cache/bench/dask_frames``): ``--frames`` 1280x720 frames of Big Buck Bunny; the ``tiny``
profile (SAM2 Hiera-tiny at 256, random weights, offline) with ``segmentation.chunk_frames`` = ``--chunk``.
Both runs map the real curate task (``flows.curate.segment_chunk_task``) over the chunks in a Prefect flow,
under a temporary Prefect server (its start is not counted):

- thread (baseline): castlab's thread runner, ``orchestration.workers`` threads in this process; the chunks share
  one set of models (used one chunk at a time) and torch uses every core;
- dask: castlab's Dask runner, a LocalCluster of ``orchestration.workers`` processes with one thread each (Dask
  starts them with OMP_NUM_THREADS=1); each worker loads the models once.

Prints each run's wall time split into start (flow start → first chunk running: for Dask the cluster's start),
model loading (the slowest process), compute (the busiest process's chunk time) and the rest (per-task
overhead: Prefect's context serialisation, scheduling, results coming back), then the ratio and what
dominates. Exit status 1 when the two runs do not give the same instances.

    .venv/bin/python benchmarks/bench_dask.py                        # ~2 min on 2 cores
    .venv/bin/python benchmarks/bench_dask.py --frames 32 --chunk 8   # more work per task
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Before Prefect or Dask are imported: a throwaway Prefect home, quiet logs (worker processes inherit these).
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="castlab-bench-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

from castlab.runtime import setup_runtime  # noqa: E402

setup_runtime()

from prefect import flow, task, unmapped  # noqa: E402
from sample_frames import CACHE, frame_paths  # noqa: E402

from castlab import segment  # noqa: E402
from castlab.config import Config, load_config  # noqa: E402
from castlab.orchestration import clear_worker_models, configured, gpu_resources, worker_models  # noqa: E402
from castlab.rows import chunked  # noqa: E402


@task(name="timed-segment-chunk")
def timed_chunk(rows: list[dict[str, Any]], run_dir: str, cfg: Config) -> dict[str, Any]:
    """curate's segmentation task body (:func:`flows.curate.segment_chunk_task`) on one chunk, with where and
    when it ran, how long its models took to load and how long it computed."""
    started = time.time()
    load: list[float] = []

    def loader(c: Config) -> Any:
        t = time.time()
        models = segment.load_models(c)
        load.append(time.time() - t)
        return models

    with worker_models("segment", cfg, loader) as models:
        t = time.time()
        instances = segment.process(rows, cfg, models, run_dir=Path(run_dir))
        compute = time.time() - t
    return {"rows": instances, "pid": os.getpid(), "start": started, "end": time.time(), "load": sum(load),
            "compute": compute}


@flow(name="bench-segment-chunks")
def segment_chunks(rows: list[dict[str, Any]], run_dir: str, cfg: Config) -> dict[str, Any]:
    started = time.time()
    chunks = [list(c) for c in chunked(rows, cfg.segmentation.chunk_frames)]
    with gpu_resources(cfg):
        parts = timed_chunk.map(chunks, unmapped(run_dir), unmapped(cfg)).result()
    return {"start": started, "parts": parts}


def frame_rows(count: int) -> list[dict[str, Any]]:
    return [{"row_id": f"frame:bbb:{i}", "kind": "frame", "status": "kept", "path": str(p), "video_id": "bbb",
             "frame_index": i, "shot_id": "bbb:0", "split": "train"}
            for i, p in enumerate(frame_paths(count, CACHE / "dask_frames", "bbb"))]


def run(kind: str, rows: list[dict[str, Any]], chunk: int, workers: int, out: Path) -> dict[str, Any]:
    cfg = load_config(profile="tiny", extra={"segmentation": {"chunk_frames": chunk},
                                             "orchestration": {"task_runner": kind, "workers": workers}})
    clear_worker_models()  # both runs load their models
    run_dir = out / kind
    started = time.monotonic()
    result = configured(segment_chunks, cfg)(rows, str(run_dir), cfg)
    wall = time.monotonic() - started
    parts = result["parts"]
    first = min(p["start"] for p in parts)
    busy: dict[int, float] = {}
    for p in parts:
        busy[p["pid"]] = busy.get(p["pid"], 0.0) + p["compute"]
    split = {"wall": wall, "start": first - result["start"], "models": max(p["load"] for p in parts),
             "compute": max(busy.values())}
    split["overhead"] = max(0.0, wall - split["start"] - split["models"] - split["compute"])
    per_task = split["overhead"] / max(1, round(len(parts) / len(busy)))
    rows_out = [r for p in parts for r in p["rows"]]
    for r in rows_out:  # paths hold the run folder, which differs by design
        for key in ("mask_path", "crop_path", "background_path"):
            r[key] = Path(r[key]).relative_to(run_dir).as_posix() if r.get(key) else r.get(key)
    print(f"{kind:>6}: {wall:6.1f} s = start {split['start']:.1f} + models {split['models']:.1f} + compute "
          f"{split['compute']:.1f} + rest {split['overhead']:.1f} ({per_task * 1000:.0f} ms a task on the busiest "
          f"process); {len(parts)} tasks in {len(busy)} process(es), {len(rows_out)} instances", flush=True)
    return {"split": split, "rows": rows_out}


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[bool, int]:
    """(same instance row ids in the same order, how many rows differ in some value)."""
    same_ids = [r["row_id"] for r in a] == [r["row_id"] for r in b]
    return same_ids, sum(x != y for x, y in zip(a, b, strict=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16, help="frames to segment")
    parser.add_argument("--chunk", type=int, default=2, help="frames per task (segmentation.chunk_frames)")
    parser.add_argument("--workers", type=int, default=2, help="threads / Dask worker processes")
    args = parser.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    rows = frame_rows(args.frames)
    print(f"SAM2 tiny profile (Hiera-t at 256), {args.frames} Big Buck Bunny frames 1280x720, {args.chunk} a task, "
          f"{args.workers} workers, {os.cpu_count()} CPUs", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="castlab-bench-dask-") as out, \
            prefect_test_harness(server_startup_timeout=180):
        print(f"Prefect test server up in {time.monotonic() - started:.1f} s (not counted)", flush=True)
        threads = run("thread", rows, args.chunk, args.workers, Path(out))
        dask = run("dask", rows, args.chunk, args.workers, Path(out))
    ratio = dask["split"]["wall"] / threads["split"]["wall"]
    extra = {k: dask["split"][k] - threads["split"][k] for k in ("start", "models", "compute", "overhead")}
    main_cost = max(extra, key=lambda k: extra[k])
    print(f"Dask / threads wall time: x{ratio:.2f} ({'slower' if ratio > 1 else 'faster'}); the Dask run's "
          f"extra time is mostly {main_cost} (+{extra[main_cost]:.1f} s); compute alone x"
          f"{dask['split']['compute'] / threads['split']['compute']:.2f}")
    same_ids, differing = compare(threads["rows"], dask["rows"])
    if not same_ids:
        print("instance rows: NOT the same instances")
        return 1
    print(f"instance rows: the same {len(dask['rows'])} instances; {differing} differ in a value" + (
        " (torch reduces floats in another order on one thread a worker than on every core: scores move in the"
        " last digits, a mask pixel at the threshold can flip; with equal thread counts the rows are identical,"
        " see tests/integration/test_dask_runner.py)" if differing else ""))
    return 0

if __name__ == "__main__":
    sys.exit(main())
