"""The ML backend, started for real (``python -m ml_backend``), driven by a real Label Studio server:
connect it to a masks project, batch predictions through the Data Manager action, then one interactive
smart-keypoint request through Label Studio's ``interactive-annotating`` endpoint."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from run_builder import instance_run

from castlab.config import PROJECT_ROOT
from castlab.labelstudio import client

pytestmark = pytest.mark.integration

LABEL_CONFIG = PROJECT_ROOT / "label_configs" / "masks.xml"
BACKEND_START_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _figure(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = rng.integers(20, 90, 3)
    yy, xx = np.mgrid[:height, :width]
    img[((xx - width / 2) / (width / 6)) ** 2 + ((yy - height / 2) / (height / 3)) ** 2 < 1] = 230
    return img


@contextlib.contextmanager
def _backend(ls_server, log_dir: Path, *extra: str) -> Iterator[str]:
    """``python -m ml_backend [extra]`` on a free loopback port, sharing Label Studio's media root."""
    port = _free_port()
    log_path = log_dir / f"backend-{port}.log"
    env = dict(
        os.environ,
        CASTLAB_WORKSPACE=str(ls_server.workspace),
        CASTLAB_PROFILE="tiny",
        LABEL_STUDIO_URL=ls_server.url,
        LABEL_STUDIO_API_KEY=ls_server.token,
        TORCHDYNAMO_DISABLE="1",
    )
    cmd = [sys.executable, "-m", "ml_backend", "--host", "127.0.0.1", "--port", str(port), *extra]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BACKEND_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ML backend exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                tail = log_path.read_text()[-3000:]
                pytest.fail(f"ML backend not healthy after {BACKEND_START_TIMEOUT_S} s:\n{tail}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_text = log_path.read_text(errors="replace")
        assert ls_server.token not in log_text, "the backend logged the Label Studio token"


@pytest.fixture(scope="module")
def backend_url(ls_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _backend(ls_server, tmp_path_factory.mktemp("ml_backend")) as url:
        yield url


@pytest.fixture(scope="module")
def masks_project(ls_server) -> dict:
    """A masks project with three frames served from local storage (no predictions pushed)."""
    ls = client.connect(ls_server.url, ls_server.token)
    frames = Path(ls_server.workspace) / "media" / "ml_backend_test"
    frames.mkdir(parents=True, exist_ok=True)
    paths = {}
    for n, (h, w) in enumerate([(144, 192), (160, 120), (180, 240)]):
        path = frames / f"frame_{n}.png"
        Image.fromarray(_figure(h, w, n)).save(path)
        paths[f"mlb:{n}"] = path
    project_id = client.ensure_project(ls, "ml backend test", LABEL_CONFIG.read_text(encoding="utf-8"))
    client.ensure_local_storage(ls, project_id, frames)
    tasks = [{"data": {"image": client.local_file_url(p), "castlab_key": key}} for key, p in paths.items()]
    mapping = client.push_tasks(ls, project_id, tasks)
    return {"ls": ls, "id": int(project_id), "tasks": {int(mapping[k]): p for k, p in paths.items()}}


def _api(ls_server, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Token {ls_server.token}"}
    return requests.request(method, f"{ls_server.url}{path}", headers=headers, timeout=300, **kwargs)


def test_backend_predicts_through_label_studio(ls_server, backend_url, masks_project):
    ls, project_id = masks_project["ls"], masks_project["id"]
    version = requests.post(f"{backend_url}/setup", json={"project": f"{project_id}.0"}, timeout=10).json()
    model_version = version["model_version"]
    assert model_version.startswith("tiny-")

    backend = ls.ml.create(url=backend_url, project=project_id, title="castlab", is_interactive=True)
    assert _api(ls_server, "GET", f"/api/ml/{backend.id}").json()["state"] == "CO"

    task_ids = sorted(masks_project["tasks"])[:2]  # the third image stays unseen until the interactive call
    started = time.perf_counter()
    action = _api(
        ls_server, "POST", "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project_id},
        json={"selectedItems": {"all": False, "included": task_ids}},
    )  # fmt: skip
    batch_s = time.perf_counter() - started
    assert action.status_code == 200, action.text

    for task_id, path in masks_project["tasks"].items():
        task = _api(ls_server, "GET", f"/api/tasks/{task_id}").json()
        predictions = [p for p in task.get("predictions") or [] if p["model_version"] == model_version]
        assert predictions, f"task {task_id}: no prediction by {model_version}: {task.get('predictions')}"
        regions = predictions[0]["result"]
        assert regions and all(r["type"] == "brushlabels" for r in regions)
        width, height = Image.open(path).size
        for region in regions:
            assert client.mask_from_result(region).shape == (height, width)

    # interactive: one smart keypoint on the unseen third task → one brush mask for that task
    task_id = sorted(masks_project["tasks"])[2]
    width, height = Image.open(masks_project["tasks"][task_id]).size
    keypoint = {
        "id": "kp1", "type": "keypointlabels", "from_name": "kp", "to_name": "image", "is_positive": True,
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": 50.0, "y": 50.0, "width": 1.0, "keypointlabels": ["character"]},
    }  # fmt: skip
    context = {"result": [keypoint]}
    timings, answers, misses = [], [], []
    for _ in range(3):
        started = time.perf_counter()
        response = _api(
            ls_server, "POST", f"/api/ml/{backend.id}/interactive-annotating",
            json={"task": task_id, "context": context},
        )  # fmt: skip
        timings.append(time.perf_counter() - started)
        misses.append(requests.get(f"{backend_url}/health", timeout=2).json()["embedding_cache"]["misses"])
        assert response.status_code == 200, response.text
        answers.append(response.json())
    data = answers[0].get("data")
    assert data is not None, answers[0]
    assert data["model_version"] == model_version
    assert len(data["result"]) == 1
    region = data["result"][0]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["character"]
    mask = client.mask_from_result(region).astype(bool)
    assert mask.shape == (height, width) and mask.any()
    assert all(a["data"]["result"][0]["value"]["rle"] == region["value"]["rle"] for a in answers[1:])
    assert misses[1] == misses[2] == misses[0], "repeated prompts on one task must reuse its image embedding"
    # Label Studio passed the prompt through unchanged: the backend asked directly answers the same mask
    task = _api(ls_server, "GET", f"/api/tasks/{task_id}").json()
    direct = requests.post(
        f"{backend_url}/predict",
        json={"tasks": [task], "label_config": LABEL_CONFIG.read_text(), "params": {"context": context}},
        timeout=60,
    ).json()
    assert direct["results"][0]["result"][0]["value"]["rle"] == region["value"]["rle"]

    # a task whose image lies outside the media root: Label Studio reports the backend's refusal
    bad = client.push_tasks(ls, project_id, [{"data": {"image": "/data/local-files/?d=../../etc/passwd",
                                                       "castlab_key": "mlb:outside"}}])
    refused = _api(
        ls_server, "POST", f"/api/ml/{backend.id}/interactive-annotating",
        json={"task": int(bad["mlb:outside"]), "context": {"result": [keypoint]}},
    )  # fmt: skip
    assert "data" not in refused.json() and refused.json().get("errors"), refused.text
    assert requests.get(f"{backend_url}/health", timeout=2).json()["status"] == "UP"

    health = requests.get(f"{backend_url}/health", timeout=2).json()
    print(
        f"\nML backend latency: retrieve_tasks_predictions for {len(task_ids)} tasks {batch_s:.2f} s; "
        f"interactive keypoint on an unseen image: first {timings[0]:.3f} s, "
        f"repeated {', '.join(f'{t:.3f}' for t in timings[1:])} s; "
        f"embedding cache {health['embedding_cache']}"
    )


def test_a_batch_over_its_budget_leaves_tasks_for_the_next_retrieval(ls_server, masks_project, tmp_path):
    """Label Studio skips the entries the backend left without a result: no empty predictions, and the
    next "Retrieve predictions" picks the tasks up."""
    override = tmp_path / "budget.yaml"
    override.write_text("ml_backend:\n  batch_budget_s: 0\n")
    ls = masks_project["ls"]
    project_id = client.ensure_project(ls, "ml backend budget", LABEL_CONFIG.read_text(encoding="utf-8"))
    frames = Path(masks_project["tasks"][sorted(masks_project["tasks"])[0]]).parent
    client.ensure_local_storage(ls, project_id, frames)
    paths = sorted(frames.glob("frame_*.png"))
    mapping = client.push_tasks(ls, project_id, [{"data": {"image": client.local_file_url(p),
                                                           "castlab_key": f"budget:{p.name}"}} for p in paths])
    task_ids = sorted(mapping.values())
    with _backend(ls_server, tmp_path, "--config", str(override)) as url:
        backend = ls.ml.create(url=url, project=project_id, title="castlab budget", is_interactive=False)
        predicted = []
        for _ in range(2):
            action = _api(ls_server, "POST", "/api/dm/actions",
                          params={"id": "retrieve_tasks_predictions", "project": project_id},
                          json={"selectedItems": {"all": False, "included": task_ids}})
            assert action.status_code == 200, action.text
            tasks = client.list_tasks(ls, project_id)  # (GET /api/tasks/<id> would predict the task itself)
            assert all(p["result"] for t in tasks for p in t.get("predictions") or [])  # never an empty one
            predicted.append(sum(1 for t in tasks if t.get("predictions")))
        ls.ml.delete(id=backend.id)
    assert predicted == [1, 2]  # one task per request within a zero budget, the rest left for later


def test_identity_suggestions_learn_from_label_studio_annotations(ls_server, tmp_path):
    """The backend connected to the identity project: no suggestion before any answer; a reviewer names one
    instance (Label Studio sends the webhook); the next instance's suggestion is that name, no restart."""
    from castlab.config import load_config
    from castlab.identity.stage import build_identities
    from castlab.labelstudio.projects.identity import push_identity_review

    run = Path(ls_server.workspace) / "runs" / "identity-backend-it"
    manifest = instance_run(run, 4, "b", seed=4, size=(96, 160), box=(10, 80, 30, 90))
    titles = {"identity_instances_title": "ids backend it", "identity_clusters_title": "idc backend it"}
    cfg = load_config(profile="tiny", extra={"labelstudio": titles, "clustering": {"min_cluster_size": 2}})
    summary = build_identities(run, manifest, cfg)
    ls = client.connect(ls_server.url, ls_server.token)
    pushed = push_identity_review(ls, manifest, run, cfg, {}, "tiny-clusters")
    project_id = pushed["instances"]["project_id"]
    tasks = {t["data"]["instance"]: t for t in client.list_tasks(ls, project_id)}
    assert len(tasks) == summary["instances"] == 4
    override = tmp_path / "suggest.yaml"  # the nearest answer always wins: the test is about learning
    override.write_text("identity:\n  suggest_k: 1\n  suggest_min_similarity: -1.0\n")

    def retrieve(instance: str) -> list:
        task_id = tasks[instance]["id"]
        action = _api(ls_server, "POST", "/api/dm/actions",
                      params={"id": "retrieve_tasks_predictions", "project": project_id},
                      json={"selectedItems": {"all": False, "included": [task_id]}})
        assert action.status_code == 200, action.text
        task = next(t for t in client.list_tasks(ls, project_id) if t["id"] == task_id)
        return [p for p in task.get("predictions") or [] if p["model_version"] == "castlab-identity-knn"]

    with _backend(ls_server, tmp_path, "--config", str(override)) as url:
        backend = ls.ml.create(url=url, project=project_id, title="castlab identity", is_interactive=False)
        first = retrieve("inst:b:1:0")
        assert first and first[0]["result"] == []  # nobody named yet: no suggestion
        client.create_annotation(ls, tasks["inst:b:0:0"]["id"], [
            {"from_name": "new_identity", "to_name": "crop", "type": "textarea", "value": {"text": ["Ann"]}}])
        deadline = time.monotonic() + 30
        while requests.get(f"{url}/health", timeout=2).json().get("identity_learnt", 0) < 1:
            assert time.monotonic() < deadline, "the backend never got the annotation webhook"
            time.sleep(0.5)
        learnt = retrieve("inst:b:2:0")
        assert learnt[0]["result"][0]["value"]["choices"] == ["Ann"]
        ls.ml.delete(id=backend.id)
