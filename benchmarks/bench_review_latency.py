"""Review latency: from the last annotation of a masks review in Label Studio to the next stage (identify) Running.

Starts its own stack in a temporary workspace (``CASTLAB_PROFILE=tiny``, free ports): Label Studio by
:class:`castlab.stack.LabelStudioServer` (from the migrated template in ``.cache/ls-template-<version>/`` when
present, else a first start with migrations), then ``castlab up --only prefect|worker|receiver`` with a config
override of the ports and work pool, as ``tests/integration/test_reviews_move_the_pipeline.py`` does. Each repeat
curates a synthetic clip (1 shot, 24 frames, ``--mode interval``), which pushes the run's tasks to the masks project
and registers castlab's webhook on it, then measures on that run, in this order:

- warm-up (first repeat only, not counted): one identify run started by hand, as below; the worker's first flow
  run process reads Prefect's and castlab's modules from disk, which would count against whichever path came first;
- baseline, a person starting the next stage by hand: ``POST /api/deployments/<identify>/create_flow_run`` with
  ``run_dir`` = the run (the parameters review-advance gives) → that flow run Running. No marker is written, so the
  run's review can still start identify afterwards; the same run, deployment and parameters make both paths start
  the same flow;
- webhook path: every task of the run but the last accepted through Label Studio's API (their review-advance runs
  are left to settle), then t0 just before the last annotation is created →
  ``castlab.review.annotation`` event (receiver) → review-advance created (the trigger) → review-advance Running →
  identify created (by review-advance) → identify Running.

Times come from the Prefect server's records (event ``occurred``, flow run ``created``, its Pending and Running
state timestamps), on this machine's clock; the REST API is polled every 0.25 s. Each identify run is cancelled
once Running (the benchmark measures the start, not identify). The ``review-reconcile`` schedule is paused so its
runs do not share the worker and CPUs with the measurement (reconciliation is the fallback for dropped webhooks,
not this path). Prints each stage's latency, the total and the ratio to the baseline, and what dominates: the
worker polls for scheduled runs every ``PREFECT_WORKER_QUERY_SECONDS`` (10 s, ±30 % jitter) on its own clock, so
review-advance's process start + work (of which its review-sync subflows, also printed) + the second poll wait
come to start + work rounded up to the worker's next poll; each flow run is a fresh Python process that imports
Prefect and the flow's module before it reports Running. Prefect API answers 503 (its SQLite busy) are retried.
Exit status 1 when the next stage does not start within ``--timeout`` seconds (the stack's runs, events and log
tails are printed then).

    .venv/bin/python benchmarks/bench_review_latency.py               # 2 repeats, ~4 min on 2 cores
    .venv/bin/python benchmarks/bench_review_latency.py --repeats 5   # more samples (a curate run each)
    .venv/bin/python benchmarks/bench_review_latency.py --worker-query-seconds 2   # a worker that polls faster
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import requests
import yaml

from castlab.config import PROJECT_ROOT, load_config
from castlab.labelstudio import client
from castlab.labelstudio.connection import load_credentials, load_or_create_credentials
from castlab.stack import LabelStudioServer, labelstudio_venv, labelstudio_version

POLL_S = 0.25
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
EVENT = "castlab.review.annotation"
T = TypeVar("T")


class Timeout(Exception):
    """The next stage did not start in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_video(path: Path, variant: int = 0, frames: int = 24, size: tuple[int, int] = (320, 256)) -> Path:
    """A one-shot h264 clip: a light ellipse moving across a plain blue set, `variant` pixels lower (another clip,
    so curate pushes new tasks: it never pushes the same frame twice)."""
    import av
    import numpy as np

    width, height = size
    yy, xx = np.mgrid[:height, :width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = np.empty((height, width, 3), np.uint8)
            img[:] = (30, 60, 200)
            img[((xx - 80 - 3 * i) ** 2 / 40**2 + (yy - height // 2 - variant) ** 2 / 70**2) < 1] = (225, 195, 55)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def ts(value: str) -> float:
    """Epoch seconds of an ISO timestamp from the Prefect API."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(POLL_S)
    raise Timeout(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Bench:
    """The stack this benchmark started, and the Prefect REST calls it makes."""

    def __init__(self, root: Path, timeout_s: float) -> None:
        self.root, self.timeout_s = root, timeout_s
        self.workspace = root / "workspace"
        self.workspace.mkdir()
        os.environ["CASTLAB_WORKSPACE"] = str(self.workspace)
        self.ls_server: LabelStudioServer | None = None
        self.up = False
        port = free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.override = root / "ports.yaml"
        self.override.write_text(yaml.safe_dump({
            "prefect": {"port": port, "worker_port": free_port(), "work_pool": "castlab-bench"},
            "reviews": {"port": free_port()}, "labelstudio": {"port": free_port()}}))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update(CASTLAB_WORKSPACE=str(self.workspace), CASTLAB_PROFILE="tiny")
        self.env.pop("CASTLAB_WEBHOOK_SECRET", None)
        self._ids: dict[str, str] = {}
        self.busy = 0  # 503 answers retried

    # -- the stack ---------------------------------------------------------------------------------------------
    def start_labelstudio(self) -> None:
        venv = labelstudio_venv()
        cache = PROJECT_ROOT / ".cache" / f"ls-template-{labelstudio_version(venv)}"
        state = self.root / "labelstudio"
        state.mkdir()
        data_dir = state / "data"
        if (cache / "data" / "label_studio.sqlite3").is_file() and (cache / "credentials.json").is_file():
            shutil.copytree(cache / "data", data_dir, symlinks=True)
            creds, how = load_credentials(cache / "credentials.json"), f"from the template {cache.name}"
        else:
            creds, how = load_or_create_credentials(state / "credentials.json"), "first start, with migrations"
        self.ls_server = LabelStudioServer(data_dir, self.workspace, free_port(), "127.0.0.1", creds,
                                           startup_timeout_s=float(load_config().labelstudio.startup_timeout_s),
                                           state_dir=state)
        started = time.monotonic()
        self.ls_server.start()
        print(f"Label Studio up in {time.monotonic() - started:.1f} s ({how}; not counted)", flush=True)
        self.env.update(LABEL_STUDIO_URL=self.ls_server.url, LABEL_STUDIO_API_KEY=self.ls_server.token)
        self.ls = client.connect(self.ls_server.url, self.ls_server.token)

    def castlab(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "flows.cli", *args, "--config", str(self.override)],
                              env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"castlab {' '.join(args)} exited with {done.returncode}:\n{done.stderr[-3000:]}")
        return done.stdout

    def start_stack(self) -> None:
        started = time.monotonic()
        self.up = True  # `down` from here on, whatever happens
        for service in ("prefect", "worker", "receiver"):
            self.castlab("up", "--only", service)
        reconcile = self.deployment("review-reconcile")
        self.call("POST", f"/deployments/{reconcile}/pause_deployment")
        print(f"Prefect server, worker (pool castlab-bench, deployments) and receiver up in "
              f"{time.monotonic() - started:.1f} s (not counted); review-reconcile schedule paused", flush=True)

    def stop(self) -> None:
        """Stop everything this benchmark started (idempotent: finally and atexit both call it)."""
        if self.up:
            self.up = False
            try:
                self.castlab("down")
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                print(f"castlab down: {exc}", file=sys.stderr)
        if self.ls_server is not None:
            server, self.ls_server = self.ls_server, None
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- Prefect REST ------------------------------------------------------------------------------------------
    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One REST call; 503 (the server's SQLite busy) is retried as Prefect's own client does."""
        for attempt in range(6):
            response = requests.request(method, f"{self.api}{path}", timeout=30, **kwargs)
            if response.status_code != 503 or attempt == 5:
                break
            self.busy += 1
            time.sleep(0.5 * 2**attempt)
        response.raise_for_status()
        return response.json() if response.content else None

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.call("POST", path, json=body)

    def deployment(self, name: str) -> str:
        if name not in self._ids:
            found = self.post("/deployments/filter", {"deployments": {"name": {"any_": [name]}}})
            self._ids[name] = found[0]["id"]
        return self._ids[name]

    def flow_runs(self, deployment: str) -> list[dict[str, Any]]:
        """Runs of `deployment` started by someone (not its schedule's future ones)."""
        body = {"flow_runs": {"deployment_id": {"any_": [self.deployment(deployment)]}}}
        return [r for r in self.post("/flow_runs/filter", body)
                if not (r.get("auto_scheduled") and r["state_type"] == "SCHEDULED")]

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/flow_runs/{flow_run_id}")

    def state_times(self, flow_run_id: str) -> dict[str, float]:
        """The first time the flow run entered each state type."""
        times: dict[str, float] = {}
        for state in sorted(self.call("GET", "/flow_run_states/", params={"flow_run_id": flow_run_id}),
                            key=lambda s: s["timestamp"]):
            times.setdefault(state["type"], ts(state["timestamp"]))
        return times

    def started(self, run: dict[str, Any]) -> dict[str, Any] | None:
        """`run` once it is Running (or past it), else None."""
        run = self.flow_run(run["id"])
        return run if run.get("start_time") or run["state_type"] in TERMINAL else None

    def start_times(self, run: dict[str, Any]) -> tuple[float, float, float]:
        """(created, Pending, Running) of a started flow run."""
        states = self.state_times(run["id"])
        running = ts(run["start_time"]) if run.get("start_time") else states.get("RUNNING", float("nan"))
        return ts(run["created"]), states.get("PENDING", float("nan")), running

    def cancel(self, flow_run_id: str) -> None:
        """Cancel a run and give the worker up to 60 s to end its process (so the next measurement has the CPUs)."""
        if self.flow_run(flow_run_id)["state_type"] in TERMINAL:
            return
        self.post(f"/flow_runs/{flow_run_id}/set_state", {"state": {"type": "CANCELLING", "name": "Cancelling"},
                                                         "force": True})
        try:
            wait_for(lambda: self.flow_run(flow_run_id)["state_type"] in TERMINAL, 60, "the cancellation")
        except Timeout:
            print(f"  (flow run {flow_run_id} not cancelled after 60 s; going on)", flush=True)

    def settle(self, deployment: str, timeout_s: float = 180) -> None:
        """Wait until every started run of `deployment` has finished (seen twice, 2 s apart)."""
        for _ in range(2):
            wait_for(lambda: all(r["state_type"] in TERMINAL for r in self.flow_runs(deployment)), timeout_s,
                     f"{deployment} runs to finish")
            time.sleep(2)

    def events_since(self, since: float, project_id: int | str) -> list[dict[str, Any]]:
        """castlab.review.annotation events of the project (``"*"``: any) that occurred since `since`."""
        resource = ({"id_prefix": ["castlab.labelstudio.project."]} if project_id == "*"
                    else {"id": [f"castlab.labelstudio.project.{project_id}"]})
        body = {"filter": {"occurred": {"since": datetime.fromtimestamp(since).astimezone().isoformat()},
                           "event": {"name": [EVENT]}, "resource": resource}, "limit": 50}
        return self.post("/events/filter", body)["events"]

    def diagnose(self, since: float) -> None:
        """What the stack did since `since` (printed when the next stage did not start)."""
        try:
            print(f"events {EVENT} since the start: {len(self.events_since(since, '*'))}")
            for name in ("review-advance", "identify"):
                for run in sorted(self.flow_runs(name), key=lambda r: r["created"]):
                    state = run.get("state") or {}
                    print(f"  {name} {run['name']}: {run['state_type']} {run['state_name']} created "
                          f"{run['created']} {(state.get('message') or '')[:300]}")
                    if name == "review-advance" and run["state_type"] in ("FAILED", "CRASHED"):
                        logs = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}},
                                                          "limit": 30, "sort": "TIMESTAMP_DESC"})
                        for entry in reversed(logs):
                            print(f"    {entry['message'][:500]}")
        except requests.RequestException as exc:
            print(f"(Prefect API: {exc})")
        try:
            body = {"filter": {"occurred": {"since": datetime.fromtimestamp(since).astimezone().isoformat()},
                               "event": {"prefix": ["prefect.automation"]}}, "limit": 50}
            for event in self.post("/events/filter", body)["events"]:
                print(f"  {event['occurred']} {event['event']} {str(event.get('payload'))[:300]}")
        except requests.RequestException as exc:
            print(f"(Prefect API: {exc})")
        for name in ("worker", "prefect", "receiver"):
            log = self.workspace / "stack" / f"{name}.log"
            lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
            if name == "prefect":
                lines = [ln for ln in lines if any(w in ln for w in ("ERROR", "WARNING", "locked", "Error", "dead"))]
            print(f"{name} log, last lines:\n" + "\n".join(lines[-40:]))

    # -- one run -----------------------------------------------------------------------------------------------
    def curate(self, video: Path) -> tuple[Path, int]:
        started = time.monotonic()
        before = set((self.workspace / "runs").glob("*-curate"))
        self.castlab("curate", str(video), "--mode", "interval")
        run_dir = max(set((self.workspace / "runs").glob("*-curate")) - before)
        project_id = int(yaml.safe_load((run_dir / "labelstudio_push.json").read_text())["project_id"])
        print(f"curate {run_dir.name}: {time.monotonic() - started:.1f} s (not counted)", flush=True)
        return run_dir, project_id

    def baseline(self, run_dir: Path) -> dict[str, float]:
        """By hand: create the identify run → it is Running."""
        requested = time.time()
        run = self.post(f"/deployments/{self.deployment('identify')}/create_flow_run",
                        {"parameters": {"run_dir": str(run_dir)}})
        run = wait_for(lambda: self.started(run), self.timeout_s, "the identify run started by hand to run")
        created, pending, running = self.start_times(run)
        self.cancel(run["id"])
        return {"request → created": created - requested, "created → Pending (worker poll)": pending - created,
                "Pending → Running (process start)": running - pending, "total": running - requested}

    def webhook_path(self, run_dir: Path, project_id: int) -> dict[str, float]:
        """A reviewer accepts every task of the run; the last annotation → identify Running."""
        run = f"runs/{run_dir.name}"
        tasks = [t for t in client.list_tasks(self.ls, project_id)
                 if client.in_run(t, run) and not client.latest_annotation(t)]
        if not tasks:
            raise RuntimeError(f"no task to annotate for {run} in project {project_id}")

        def accept(task: dict[str, Any]) -> int:
            predictions = task.get("predictions") or []
            return client.create_annotation(self.ls, int(task["id"]), predictions[-1]["result"] if predictions else [])

        if len(tasks) > 1:  # the review so far: its review-advance runs finish before the last annotation
            since = time.time() - 1
            for task in tasks[:-1]:
                accept(task)
            wait_for(lambda: len(self.events_since(since, project_id)) >= len(tasks) - 1, self.timeout_s,
                     "the events of the first annotations")
            self.settle("review-advance")
        advances_before = {r["id"] for r in self.flow_runs("review-advance")}
        t0 = time.time()
        annotation_id = accept(tasks[-1])
        print(f"  {len(tasks)} task(s) annotated; the last at t0", flush=True)

        def event() -> dict[str, Any] | None:
            found = [e for e in self.events_since(t0 - 1, project_id)
                     if (e.get("payload") or {}).get("annotation_id") == annotation_id]
            return found[0] if found else None

        def new_advance() -> dict[str, Any] | None:
            runs = [r for r in self.flow_runs("review-advance") if r["id"] not in advances_before]
            return min(runs, key=lambda r: r["created"]) if runs else None

        def identify() -> dict[str, Any] | None:
            runs = [r for r in self.flow_runs("identify") if (r.get("parameters") or {}).get("run_dir") == str(run_dir)
                    and ts(r["created"]) > t0]
            return self.started(runs[0]) if runs else None

        identify_run = wait_for(identify, self.timeout_s, "identify to be started by the review and run")
        advance = wait_for(lambda: (lambda r: self.started(r) if r else None)(new_advance()), 30,
                           "the review-advance run")
        received = wait_for(event, 30, "the annotation's event")  # persisted in batches: may come after the runs
        a_created, a_pending, a_running = self.start_times(advance)
        i_created, i_pending, i_running = self.start_times(identify_run)
        subflows = [r for r in self.post("/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {
            "any_": [advance["id"]]}}}) if r.get("start_time") and r.get("end_time") and ts(r["end_time"]) <= i_created]
        syncing = sum(ts(r["end_time"]) - ts(r["start_time"]) for r in subflows)
        runs = {str((r.get("parameters") or {}).get("run_dir")) for r in subflows}
        print(f"  review-advance ran review-sync {len(subflows)} time(s), on {len(runs)} run(s) of the project, in "
              f"{syncing:.2f} s", flush=True)
        self.cancel(identify_run["id"])
        self.settle("review-advance")
        return {
            "annotation → event (Label Studio webhook + receiver)": ts(received["occurred"]) - t0,
            "event → review-advance created (trigger)": a_created - ts(received["occurred"]),
            "review-advance created → Pending (worker poll)": a_pending - a_created,
            "review-advance Pending → Running (process start)": a_running - a_pending,
            "review-advance Running → identify created (review-sync, checks)": i_created - a_running,
            "identify created → Pending (worker poll)": i_pending - i_created,
            "identify Pending → Running (process start)": i_running - i_pending,
            "total": i_running - t0,
            "(inside review-advance's work: its review-sync subflows)": syncing,
        }


def show(title: str, samples: list[dict[str, float]]) -> None:
    print(f"\n{title} (median of {len(samples)}; each)")
    for key in samples[0]:
        values = [s[key] for s in samples]
        print(f"  {key:<66} {statistics.median(values):6.2f} s   [{', '.join(f'{v:.2f}' for v in values)}]")


def worker_query_seconds() -> float:
    """Prefect's default PREFECT_WORKER_QUERY_SECONDS (the worker gets no PREFECT_* variable from this shell)."""
    from prefect.settings.models.worker import WorkerSettings

    return float(WorkerSettings.model_fields["query_seconds"].default)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="curate runs to measure (both paths on each)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the next stage to start")
    parser.add_argument("--worker-query-seconds", type=float,
                        help="PREFECT_WORKER_QUERY_SECONDS for the worker (default: Prefect's)")
    args = parser.parse_args()
    bench = Bench(Path(tempfile.mkdtemp(prefix="castlab-bench-review-")), args.timeout)
    atexit.register(bench.stop)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    query_s = worker_query_seconds()
    if args.worker_query_seconds is not None:
        query_s = args.worker_query_seconds
        bench.env["PREFECT_WORKER_QUERY_SECONDS"] = f"{query_s:g}"
    print(f"{os.cpu_count()} CPUs; PREFECT_WORKER_QUERY_SECONDS = {query_s:g} (worker poll interval, ±30 % jitter)",
          flush=True)
    started = time.time()
    baselines: list[dict[str, float]] = []
    webhooks: list[dict[str, float]] = []
    try:
        bench.start_labelstudio()
        bench.start_stack()
        for i in range(args.repeats):
            print(f"\nrepeat {i + 1}/{args.repeats}", flush=True)
            run_dir, project_id = bench.curate(make_video(bench.root / f"clip{i}.mp4", variant=2 * i))
            if i == 0:  # the worker's first flow-run process pays cold imports: neither path should
                print(f"  warm-up: identify Running {bench.baseline(run_dir)['total']:.2f} s after create_flow_run "
                      "(not counted)", flush=True)
            baselines.append(bench.baseline(run_dir))
            print(f"  baseline: identify Running {baselines[-1]['total']:.2f} s after create_flow_run", flush=True)
            webhooks.append(bench.webhook_path(run_dir, project_id))
            print(f"  webhook path: identify Running {webhooks[-1]['total']:.2f} s after the annotation", flush=True)
    except Timeout as exc:
        print(f"FAILED: {exc}", flush=True)
        bench.diagnose(started)
        return 1
    finally:
        bench.stop()
    if bench.busy:
        print(f"\n(the Prefect API answered 503, its SQLite database busy, {bench.busy} time(s); retried)")
    show("baseline: identify started by hand", baselines)
    show("webhook path: last annotation → identify Running", webhooks)
    base = statistics.median(s["total"] for s in baselines)
    total = statistics.median(s["total"] for s in webhooks)
    med = {k: statistics.median(s[k] for s in webhooks) for k in webhooks[0]}
    keys = list(med)  # event, trigger, poll 1, start 1, review-advance's work, poll 2, start 2, total, review-sync
    work = med[keys[3]] + med[keys[4]]  # review-advance's process start + its work
    where = {"process starts (2 fresh Python processes importing Prefect and the flow)": med[keys[3]] + med[keys[6]],
             "worker poll waits": med[keys[2]] + med[keys[5]],
             "review-advance's work (review-sync, checks)": med[keys[4]],
             "webhook + receiver + trigger": med[keys[0]] + med[keys[1]]}
    print(f"\nannotation → identify Running: {total:.2f} s = x{total / base:.2f} the baseline ({base:.2f} s: one "
          f"worker poll wait + one process start), +{total - base:.2f} s.")
    ranked = sorted(where.items(), key=lambda kv: -kv[1])
    print("where the time goes: " + "; ".join(f"{k} {v:.2f} s" for k, v in ranked))
    print(f"review-advance's start + work + the second poll wait = {work + med[keys[5]]:.2f} s: the worker took "
          f"review-advance at one poll and takes identify at a later one, so this is start + work ({work:.2f} s) "
          f"rounded up to the worker's next poll (~{query_s:g} s cycles, ±30 % jitter, counted from the first).")
    if work < 0.7 * query_s:
        print("What dominates: the worker's polling. review-advance's start and work hide inside the second poll "
              "cycle (making them faster gains nothing); the webhook path costs about one poll cycle more than "
              "starting by hand. A faster poll (PREFECT_WORKER_QUERY_SECONDS, --worker-query-seconds here) cuts "
              f"it until start + work ({work:.2f} s) is the floor.")
    else:
        print(f"What dominates: review-advance, a fresh process ({med[keys[3]]:.2f} s to start) whose work "
              f"({med[keys[4]]:.2f} s, of which review-sync {med[keys[8]]:.2f} s: it syncs every run of the project, "
              f"so it grows with the runs there) ends past a poll cycle, then rounded up to the worker's next poll. "
              f"Start + work under one poll cycle would save about a cycle; a faster poll shrinks the rounding.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
