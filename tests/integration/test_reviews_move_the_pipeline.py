"""Reviews move the pipeline, for real: Label Studio + Prefect server + worker + webhook receiver started by
`castlab up`. A scripted review through Label Studio's API starts the next stage's deployment run, which completes,
with nobody calling castlab; a webhook without the secret is refused; the same delivery twice starts one run; with
the webhook dropped, the reconciliation deployment catches up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from test_prefect_server import free_port

from castlab.config import PROJECT_ROOT
from castlab.labelstudio import client
from castlab.reviews.secret import HEADER

pytestmark = pytest.mark.integration
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def flow_runs(api: str, deployment: str) -> list[dict[str, Any]]:
    found = requests.post(f"{api}/deployments/filter", json={"deployments": {"name": {"any_": [deployment]}}},
                          timeout=30).json()
    if not found:
        return []
    body = {"flow_runs": {"deployment_id": {"any_": [found[0]["id"]]}}}
    return requests.post(f"{api}/flow_runs/filter", json=body, timeout=30).json()


def wait_until(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def settled(api: str, deployment: str) -> bool:
    """Every run of `deployment` that was started (not the schedule's future ones) has finished."""
    runs = [r for r in flow_runs(api, deployment) if not (r.get("auto_scheduled") and r["state_type"] == "SCHEDULED")]
    return bool(runs) and all(r["state_type"] in TERMINAL for r in runs)


def annotate_run(ls: Any, project_id: int, run: str, answer: list[dict[str, Any]] | None = None) -> int:
    """A scripted reviewer: `answer` on every task of the run (default: accept its prediction, or an empty
    answer where there is none)."""
    done = 0
    for task in client.list_tasks(ls, project_id):
        if (task.get("data") or {}).get("castlab_run") != run or client.latest_annotation(task):
            continue
        predictions = task.get("predictions") or []
        result = answer if answer is not None else (predictions[-1]["result"] if predictions else [])
        client.create_annotation(ls, int(task["id"]), result)
        done += 1
    return done


NAME_CLUSTER = [{"from_name": "decision", "to_name": "sheet", "type": "choices", "value": {"choices": ["name"]}},
                {"from_name": "name", "to_name": "sheet", "type": "textarea", "value": {"text": ["Zorvik"]}}]
NAME_INSTANCE = [{"from_name": "new_identity", "to_name": "crop", "type": "textarea", "value": {"text": ["Zorvik"]}}]


def test_a_review_starts_the_next_stage_and_reconciliation_catches_up(ls_server, tmp_path: Path):
    from test_thin_path import make_video

    workspace = ls_server.workspace
    port, worker_port, receiver_port = free_port(), free_port(), free_port()
    override = tmp_path / "ports.yaml"
    override.write_text(yaml.safe_dump({
        "prefect": {"port": port, "worker_port": worker_port, "work_pool": "castlab-reviews"},
        "reviews": {"port": receiver_port},
        "labelstudio": {"port": free_port()}}))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(CASTLAB_WORKSPACE=str(workspace), CASTLAB_PROFILE="tiny", LABEL_STUDIO_URL=ls_server.url,
               LABEL_STUDIO_API_KEY=ls_server.token)
    env.pop("CASTLAB_WEBHOOK_SECRET", None)

    def castlab(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "flows.cli", *args, "--config", str(override)], env=env,
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    api = f"http://127.0.0.1:{port}/api"
    receiver = f"http://127.0.0.1:{receiver_port}/labelstudio"
    ls = client.connect(ls_server.url, ls_server.token)
    castlab("up", "--only", "prefect")
    try:
        castlab("up", "--only", "worker")
        castlab("up", "--only", "receiver")
        secret = (workspace / "stack" / "webhook.secret").read_text().strip()
        assert (workspace / "stack" / "webhook.secret").stat().st_mode & 0o077 == 0

        # the one command a person runs; from here on nobody calls castlab
        castlab("curate", str(make_video(tmp_path / "clip.mp4", shots=1, frames_per_shot=24)), "--mode", "interval")
        run_dir = max((workspace / "runs").glob("*-curate"))
        run = f"runs/{run_dir.name}"
        push = yaml.safe_load((run_dir / "labelstudio_push.json").read_text())
        masks_project = int(push["project_id"])
        hooks = [h for h in ls.webhooks.list(project=str(masks_project)) if h.url == receiver]
        assert len(hooks) == 1 and hooks[0].headers == {HEADER: secret}  # castlab watches its project

        # without the secret: 401, and nothing runs
        refused = requests.post(receiver, json={"action": "ANNOTATION_CREATED", "project": {"id": masks_project},
                                                "annotation": {"id": 1}}, timeout=5)
        assert refused.status_code == 401
        assert requests.post(receiver, headers={HEADER: "wrong"}, json={}, timeout=5).status_code == 401

        assert annotate_run(ls, masks_project, run) > 0  # the masks review, through Label Studio's API
        identify = wait_until(lambda: [r for r in flow_runs(api, "identify") if r["state_type"] == "COMPLETED"],
                              420, "the identify deployment to run and complete after the masks review")
        assert len(identify) == 1 and identify[0]["parameters"]["run_dir"] == str(run_dir)
        assert (run_dir / "identity_push.json").is_file() and (run_dir / "pipeline" / "identify.started").is_file()
        wait_until(lambda: settled(api, "review-advance"), 300, "review-advance runs to settle")

        # the same delivery twice: review-advance runs again, the next stage does not
        body = {"action": "ANNOTATION_UPDATED", "project": {"id": masks_project}, "annotation": {"id": 1}}
        for _ in range(2):
            answered = requests.post(receiver, headers={HEADER: secret}, json=body, timeout=5)
            assert answered.status_code == 202
        before = len(flow_runs(api, "review-advance"))
        wait_until(lambda: len(flow_runs(api, "review-advance")) >= before and settled(api, "review-advance"), 300,
                   "the duplicated deliveries to be handled")
        assert len(flow_runs(api, "identify")) == 1

        # the identity review with its webhooks dropped: only the reconciliation deployment can see it. Its first
        # run only sets watermarks (reviews finished before it watched start nothing, e.g. other tests' runs here)
        reconcile = requests.post(f"{api}/deployments/filter",
                                  json={"deployments": {"name": {"any_": ["review-reconcile"]}}}, timeout=30).json()
        requests.post(f"{api}/deployments/{reconcile[0]['id']}/create_flow_run", json={}, timeout=30)
        wait_until(lambda: settled(api, "review-reconcile"), 300, "the first reconciliation")
        identity = yaml.safe_load((run_dir / "identity_push.json").read_text())
        for kind, answer in (("instances", NAME_INSTANCE), ("clusters", NAME_CLUSTER)):
            project_id = int(identity[kind]["project_id"])
            for hook in ls.webhooks.list(project=str(project_id)):
                ls.webhooks.delete(id=int(hook.id))
            annotate_run(ls, project_id, run, answer)  # every instance named: the character to caption
        requests.post(f"{api}/deployments/{reconcile[0]['id']}/create_flow_run", json={}, timeout=30)
        caption = wait_until(lambda: [r for r in flow_runs(api, "caption") if r["state_type"] in TERMINAL], 420,
                             "the caption deployment to run after reconciliation")
        assert caption[0]["parameters"]["run_dir"] == str(run_dir)
        assert len(caption) == 1 and caption[0]["state_type"] == "COMPLETED", caption[0]["state"]
        assert (workspace / "stack" / "review_watermark.json").is_file()
        assert sum(r["state_type"] == "COMPLETED" for r in flow_runs(api, "review-reconcile")) >= 2
    finally:
        castlab("down")
