"""`castlab up` deploys prefect.yaml on a process work pool and starts a worker; a run started through the Prefect
API (as the UI does) runs on that worker like the CLI would, with nobody calling castlab."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from test_prefect_server import free_port

from castlab.config import PROJECT_ROOT
from castlab.manifest import MANIFEST_NAME, Manifest
from castlab.stack.deployments import declared_deployments

pytestmark = pytest.mark.integration


def wait_for_run(api: str, run_id: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = requests.get(f"{api}/flow_runs/{run_id}", timeout=30).json()
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} did not finish within {timeout_s} s: {run['state_type']}")


def test_up_deploys_prefect_yaml_and_the_worker_runs_a_deployment(tmp_path: Path):
    from test_thin_path import make_video

    workspace = tmp_path / "ws"
    workspace.mkdir()
    port, worker_port = free_port(), free_port()
    override = tmp_path / "ports.yaml"
    override.write_text(yaml.safe_dump({"prefect": {"port": port, "worker_port": worker_port, "work_pool": "castlab-t"},
                                        "labelstudio": {"port": free_port()}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(CASTLAB_WORKSPACE=str(workspace), CASTLAB_PROFILE="tiny")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flows.cli", *args, "--config", str(override)], env=env,
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)

    api = f"http://127.0.0.1:{port}/api"
    up = run("up", "--only", "prefect")
    assert up.returncode == 0, up.stderr
    try:
        worker = run("up", "--only", "worker")
        assert worker.returncode == 0, worker.stderr[-3000:]
        # the deployments the server lists are prefect.yaml's, on the configured pool, run from this project
        listed = requests.post(f"{api}/deployments/filter", json={}, timeout=30).json()
        declared = declared_deployments()
        assert {d["name"]: d["entrypoint"] for d in listed} == declared
        assert {"curate", "review-sync", "identify", "caption", "dataset", "train", "evaluate",
                "propagate"} <= set(declared)
        assert {d["work_pool_name"] for d in listed} == {"castlab-t"}
        for d in listed:
            (step,) = d["pull_steps"]
            assert step["prefect.deployments.steps.set_working_directory"]["directory"] == str(PROJECT_ROOT)
        status = run("status")
        assert f"http://127.0.0.1:{worker_port}" in status.stdout and status.returncode == 0
        assert requests.get(f"http://127.0.0.1:{worker_port}/health", timeout=10).status_code == 200
        again = run("up", "--only", "worker")  # idempotent: deployments updated, the same worker kept
        assert again.returncode == 0 and "already running" in again.stdout, again.stderr[-2000:]
        assert len(requests.post(f"{api}/deployments/filter", json={}, timeout=30).json()) == len(declared)

        # a run created through the API (what the UI's "Run" does) is picked up by the worker and completes
        video = make_video(tmp_path / "clip.mp4", shots=1, frames_per_shot=24)
        curate = next(d for d in listed if d["name"] == "curate")
        created = requests.post(f"{api}/deployments/{curate['id']}/create_flow_run", timeout=30, json={
            "parameters": {"video": str(video), "mode": "interval", "push": False}}).json()
        finished = wait_for_run(api, created["id"])
        assert finished["state_type"] == "COMPLETED", finished["state"]
        runs = sorted((workspace / "runs").glob("*-curate"))
        assert len(runs) == 1 and (runs[0] / MANIFEST_NAME).is_file()
        assert Manifest.for_run(runs[0]).rows(kind="instance")  # segmented by the deployed flow
        worker_log = (workspace / "stack" / "worker.log").read_text()
        assert created["id"] in worker_log
    finally:
        down = run("down")
        assert down.returncode == 0, down.stderr
    assert "worker" in down.stdout
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{worker_port}/health", timeout=5)
