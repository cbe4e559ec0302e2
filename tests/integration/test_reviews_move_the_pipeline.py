"""Reviews move the pipeline, for real: Label Studio + Prefect server + worker + webhook receiver started by
`castlab up`. A scripted review through Label Studio's API starts the next stage's deployment run, which completes,
with nobody calling castlab; a webhook without the secret is refused; the same delivery twice starts one run; with
the webhook dropped, the reconciliation deployment catches up."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from browser import rendered_dom
from test_prefect_server import free_port

from castlab.config import PROJECT_ROOT
from castlab.labelstudio import client
from castlab.manifest import Manifest
from castlab.report.render import SECTIONS
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
        if not client.in_run(task, run) or client.latest_annotation(task):
            continue
        predictions = task.get("predictions") or []
        result = answer if answer is not None else (predictions[-1]["result"] if predictions else [])
        client.create_annotation(ls, int(task["id"]), result)
        done += 1
    return done


NAME_CLUSTER = [{"from_name": "decision", "to_name": "sheet", "type": "choices", "value": {"choices": ["name"]}},
                {"from_name": "name", "to_name": "sheet", "type": "textarea", "value": {"text": ["Zorvik"]}}]
NAME_INSTANCE = [{"from_name": "new_identity", "to_name": "crop", "type": "textarea", "value": {"text": ["Zorvik"]}}]


@dataclass
class Stack:
    """`castlab up` (Prefect server, worker, webhook receiver) beside the session's Label Studio."""

    workspace: Path
    override: Path
    env: dict[str, str]
    api: str
    receiver: str
    ls: Any

    def castlab(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "flows.cli", *args, "--config", str(self.override)],
                              env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 or not check, done.stderr[-3000:]
        return done


@pytest.fixture(scope="module")
def stack(ls_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workspace = ls_server.workspace
    port, worker_port, receiver_port = free_port(), free_port(), free_port()
    override = tmp_path_factory.mktemp("stack") / "ports.yaml"
    override.write_text(yaml.safe_dump({
        "prefect": {"port": port, "worker_port": worker_port, "work_pool": "castlab-reviews"},
        "reviews": {"port": receiver_port},
        "labelstudio": {"port": free_port()}}))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(CASTLAB_WORKSPACE=str(workspace), CASTLAB_PROFILE="tiny", LABEL_STUDIO_URL=ls_server.url,
               LABEL_STUDIO_API_KEY=ls_server.token)
    env.pop("CASTLAB_WEBHOOK_SECRET", None)
    running = Stack(workspace, override, env, f"http://127.0.0.1:{port}/api",
                    f"http://127.0.0.1:{receiver_port}/labelstudio", client.connect(ls_server.url, ls_server.token))
    running.castlab("up", "--only", "prefect")
    try:
        running.castlab("up", "--only", "worker")
        running.castlab("up", "--only", "receiver")
        yield running
    finally:
        running.castlab("down")


def test_a_review_starts_the_next_stage_and_reconciliation_catches_up(stack: Stack, tmp_path: Path):
    from test_thin_path import make_video

    workspace, api, receiver, ls, castlab = stack.workspace, stack.api, stack.receiver, stack.ls, stack.castlab
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


def kill_flow_run_process(flow_run_id: str) -> int:
    """SIGKILL the process running `flow_run_id` (the worker's child, found by its PREFECT__FLOW_RUN_ID)."""
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no process runs flow run {flow_run_id}")


def start_reconcile(api: str) -> None:
    found = requests.post(f"{api}/deployments/filter",
                          json={"deployments": {"name": {"any_": ["review-reconcile"]}}}, timeout=30).json()
    requests.post(f"{api}/deployments/{found[0]['id']}/create_flow_run", json={}, timeout=30).raise_for_status()


PICK_LEFT = [{"from_name": "pick", "to_name": "pick", "type": "pairwise", "value": {"selected": "left"}}]


def test_the_pipeline_walks_to_the_registry_moved_only_by_reviews(stack: Stack, tmp_path: Path):
    """`castlab pipeline VIDEO --types style`: five reviews made through Label Studio's API, each resuming the
    suspended run, and a LoRA chosen by the reviewers in the registry for the character and for the style; the
    stages ran inside the pipeline run, never twice."""
    from test_thin_path import make_video

    from castlab.evaluate.registry import read_registry

    workspace, api, ls = stack.workspace, stack.api, stack.ls
    settings = tmp_path / "pipeline.yaml"  # small clusters, a small evaluation with open gates (the tiny models'
    settings.write_text(yaml.safe_dump({  # scores are noise)
        "clustering": {"min_cluster_size": 3, "min_samples": 1}, "dataset": {"min_instances": 2},
        "evaluation": {"seeds": [1, 2], "steps": 2, "lora_weights": [1.0], "caption_prompts": 0, "bootstrap": 10,
                       "pairs_per_matchup": 2, "gates": {"max_leakage_gain": 9, "max_drift": 2,
                                                         "max_memorisation": 1, "min_diversity_ratio": 0}}}))
    # footage of its own: the other test's clip has its masks reviewed already, and reviewed work is never asked for
    # twice (a second run of it would pass the masks review at once)
    video = make_video(tmp_path / "clip.mp4", shots=1, frames_per_shot=26)
    started = json.loads(stack.castlab("pipeline", str(video), "--mode", "interval", "--types", "style", "--config",
                                       str(settings)).stdout)
    flow_run_id = started["flow_run"]
    state_file = workspace / "pipelines" / f"{flow_run_id}.json"

    def pipeline_state(crash_ok: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        data = json.loads(state_file.read_text()) if state_file.is_file() else {}
        run = requests.get(f"{api}/flow_runs/{flow_run_id}", timeout=30).json()
        bad = ("FAILED",) if crash_ok else ("FAILED", "CRASHED")
        assert data.get("status") not in ("failed", "stopped") and run["state_type"] not in bad, (
            data.get("reason"), run["state"])
        return data, run

    def suspended_for(step: str, crash_ok: bool = False) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            data, run = pipeline_state(crash_ok)
            waits = (data.get("waiting") or {}).get("step") == step
            return data if waits and run["state_type"] == "PAUSED" and run["state_name"] == "Suspended" else None
        return wait_until(check, 600, f"the pipeline run to suspend for its {step}")

    data = suspended_for("masks-review")
    run_dir = Path(data["steps"]["curate"]["result"]["run_dir"])
    run = f"runs/{run_dir.name}"
    shown = stack.castlab("status", started["name"]).stdout
    assert run_dir.name in shown and re.search(r"masks-review\s+waiting", shown) and re.search(r"curate\s+done", shown)
    assert re.search(r"identify\s+pending", shown) and "prefect: Suspended" in shown

    assert annotate_run(ls, json.loads((run_dir / "labelstudio_push.json").read_text())["project_id"], run) > 0

    suspended_for("identities-review")
    identity = json.loads((run_dir / "identity_push.json").read_text())
    for kind, answer in (("instances", NAME_INSTANCE), ("clusters", NAME_CLUSTER)):
        annotate_run(ls, int(identity[kind]["project_id"]), run, answer)

    # the run's process dies inside caption (the VLM takes seconds per instance): the worker marks it Crashed,
    # review-reconcile schedules it again and it redoes caption only, with no task pushed twice, no row lost
    deadline = time.monotonic() + 300
    while (pipeline_state()[0]["steps"].get("caption") or {}).get("status") != "running":
        assert time.monotonic() < deadline, "the pipeline run never began caption"
        time.sleep(0.25)
    rows_before = len(Manifest.for_run(run_dir).rows())
    kill_flow_run_process(flow_run_id)
    wait_until(lambda: pipeline_state(crash_ok=True)[1]["state_type"] == "CRASHED", 120,
               "the worker to mark the killed run Crashed")
    start_reconcile(api)
    data = suspended_for("captions-review", crash_ok=True)
    assert data["steps"]["caption"]["attempts"] == 2 and data["steps"]["identify"]["attempts"] == 1
    assert len(Manifest.for_run(run_dir).rows()) >= rows_before
    captions = json.loads((run_dir / "captions" / "captions_push.json").read_text())
    ours = [t for t in client.list_tasks(ls, int(captions["project_id"])) if client.in_run(t, run)]
    assert len(ours) == len({t["data"]["castlab_key"] for t in ours}) > 0  # none pushed twice
    annotate_run(ls, json.loads((run_dir / "captions" / "captions_push.json").read_text())["project_id"], run)

    data = suspended_for("style-review")  # the style type was prepared after the captions review
    assert data["steps"]["prepare"]["result"]["style"]["ok"] > 0
    assert annotate_run(ls, json.loads((run_dir / "style" / "push.json").read_text())["project_id"], run) > 0

    data = suspended_for("checkpoints-review")  # dataset → train → evaluate ran without anybody
    built = data["steps"]["dataset"]["result"]["datasets"]
    assert set(built) == {"Zorvik", "style"} and Path(built["style"]["out_dir"]).parent == \
        Path(built["Zorvik"]["out_dir"]).parent  # the style dataset beside the character's
    for name in ("Zorvik", "style"):
        evaluation = data["steps"]["evaluate"]["result"][name]
        eval_dir = Path(evaluation["out_dir"])
        assert annotate_run(ls, int(evaluation["project_id"]), f"runs/{eval_dir.name}", PICK_LEFT) > 0

    data = wait_until(lambda: (lambda d, r: d if r["state_type"] == "COMPLETED" else None)(*pipeline_state()), 600,
                      "the pipeline run to complete after the checkpoints review")
    assert data["status"] == "completed" and all(data["steps"][s]["status"] == "done" for s in data["steps"])
    chosen = data["steps"]["registry"]["result"]["Zorvik"]
    assert chosen["chosen"] and Path(chosen["registry"]).is_file()
    assert data["steps"]["registry"]["result"]["style"]["chosen"]  # the style LoRA is registered too
    entry = next(e for e in read_registry().values() if Path(e["file"]).stem == chosen["chosen"])
    assert entry["chosen_by"] == "reviewers"
    assert re.search(r"registry\s+done", stack.castlab("status", str(run_dir)).stdout)
    page = Path(data["steps"]["report"]["result"]["html"])  # the run report, lead times from Label Studio
    assert page.parent == run_dir / "report" and "Label Studio was not asked" not in page.read_text()
    dom = rendered_dom(page, tmp_path / "browser")  # what a lead opens after the night: every section, drawn
    assert all(f'<section id="{section}">' in dom for section in SECTIONS)
    assert "Zorvik" in dom and chosen["chosen"] in dom  # the character, and the checkpoint reviewers picked
    assert dom.count('src="data:image/png;base64,') >= 4  # contact sheet, UMAP, loss curve, comparison embedded
    assert (run_dir / "report" / "lead_times.csv").read_text().count("\n") >= 3  # header + masks + identities
    for stage in ("identify", "caption", "dataset"):  # the pipeline ran them: review-advance started none
        assert not [r for r in flow_runs(api, stage) if str(run_dir) in json.dumps(r["parameters"])]
