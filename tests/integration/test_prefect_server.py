"""`castlab up` starts a real Prefect server; a flow run by the CLI shows up in it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from castlab.config import PROJECT_ROOT

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_flow_run_is_recorded_by_the_local_prefect_server(tmp_path: Path):
    from tests.integration.test_thin_path import make_video

    workspace = tmp_path / "ws"
    workspace.mkdir()
    port = free_port()
    override = tmp_path / "ports.yaml"
    override.write_text(yaml.safe_dump({"prefect": {"port": port}, "labelstudio": {"port": free_port()}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(CASTLAB_WORKSPACE=str(workspace), CASTLAB_PROFILE="tiny")
    castlab = [sys.executable, "-m", "flows.cli"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*castlab, *args, "--config", str(override)], env=env, cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=300)

    up = run("up", "--only", "prefect")
    assert up.returncode == 0, up.stderr
    try:
        again = run("up", "--only", "prefect")  # idempotent
        assert again.returncode == 0, again.stderr
        status = run("status")
        assert f"http://127.0.0.1:{port}" in status.stdout
        video = make_video(tmp_path / "clip.mp4", shots=1, frames_per_shot=24)
        curate = run("curate", str(video), "--mode", "interval", "--no-push")
        assert curate.returncode == 0, curate.stderr[-3000:]
        assert f"server http://127.0.0.1:{port}/api" in curate.stderr
        runs = requests.post(f"http://127.0.0.1:{port}/api/flow_runs/filter", json={}, timeout=30).json()
        assert [(r["name"] and r["state_type"]) for r in runs] and any(r["state_type"] == "COMPLETED" for r in runs)
        flows = requests.post(f"http://127.0.0.1:{port}/api/flows/filter", json={}, timeout=30).json()
        assert "curate" in {f["name"] for f in flows}
        assert (workspace / "stack" / "prefect").is_dir()
    finally:
        down = run("down")
        assert down.returncode == 0, down.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/api/health", timeout=5)
