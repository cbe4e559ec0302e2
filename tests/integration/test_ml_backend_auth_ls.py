"""The ML backend behind HTTP basic auth (``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS``), started for real and
connected to a real Label Studio through castlab's ``ensure_ml_backend``: Label Studio refuses the connection
without the credentials (the backend saw 401s), works with them (predictions, its webhook to the backend), and
reports the backend disconnected once the backend's password changes, until castlab updates the connection."""

from __future__ import annotations

import contextlib
import os
import secrets
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

from castlab.config import PROJECT_ROOT
from castlab.errors import StackError
from castlab.labelstudio import client
from castlab.labelstudio.backends import BasicAuth, ensure_ml_backend, retrieve_predictions

pytestmark = pytest.mark.integration

LABEL_CONFIG = PROJECT_ROOT / "label_configs" / "masks.xml"
BACKEND_START_TIMEOUT_S = 180
USER = "castlab-it"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _backend(ls_server, log_path: Path, port: int, password: str) -> Iterator[str]:
    """``python -m ml_backend --lazy`` on 127.0.0.1:`port` with basic auth on (tiny profile, Label Studio's media
    root), its segmenter loaded by one authenticated ``/setup`` (Label Studio gives ``/setup`` 3 s)."""
    env = dict(
        os.environ,
        CASTLAB_WORKSPACE=str(ls_server.workspace),
        CASTLAB_PROFILE="tiny",
        LABEL_STUDIO_URL=ls_server.url,
        LABEL_STUDIO_API_KEY=ls_server.token,
        TORCHDYNAMO_DISABLE="1",
        BASIC_AUTH_USER=USER,
        BASIC_AUTH_PASS=password,
    )
    cmd = [sys.executable, "-m", "ml_backend", "--host", "127.0.0.1", "--port", str(port), "--lazy"]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BACKEND_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ML backend exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", auth=(USER, password), timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                tail = log_path.read_text()[-3000:]
                pytest.fail(f"ML backend not healthy after {BACKEND_START_TIMEOUT_S} s:\n{tail}")
            time.sleep(0.3)
        assert requests.post(f"{url}/setup", json={}, timeout=10).status_code == 401
        warm = requests.post(f"{url}/setup", json={}, auth=(USER, password), timeout=BACKEND_START_TIMEOUT_S)
        assert warm.status_code == 200 and warm.json()["model_version"].startswith("tiny-"), warm.text
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _log_lines_since(log_path: Path, offset: int, needle: str) -> list[str]:
    return [line for line in log_path.read_text(errors="replace")[offset:].splitlines() if needle in line]


@pytest.fixture
def masks_task(ls_server) -> tuple[object, int, int]:
    """A masks project with one frame served from local storage: (SDK client, project id, task id)."""
    ls = client.connect(ls_server.url, ls_server.token)
    frames = Path(ls_server.workspace) / "media" / "ml_backend_auth_test"
    frames.mkdir(parents=True, exist_ok=True)
    img = np.full((96, 128, 3), 40, np.uint8)
    img[24:72, 40:88] = 220
    path = frames / "frame.png"
    Image.fromarray(img).save(path)
    project_id = client.ensure_project(ls, "ml backend auth test", LABEL_CONFIG.read_text(encoding="utf-8"))
    client.ensure_local_storage(ls, project_id, frames)
    mapping = client.push_tasks(ls, project_id, [{"data": {"image": client.local_file_url(path),
                                                           "castlab_key": "mlb-auth:0"}}])
    return ls, int(project_id), int(mapping["mlb-auth:0"])


def test_label_studio_reaches_the_backend_only_with_the_credentials(ls_server, masks_task, tmp_path, monkeypatch):
    started = time.perf_counter()
    ls, project_id, task_id = masks_task
    password, rotated = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    port, log_path = _free_port(), tmp_path / "backend.log"
    phases: dict[str, float] = {}
    with _backend(ls_server, log_path, port, password) as url:
        phases["backend start"] = time.perf_counter() - started
        refused = requests.get(f"{url}/health", timeout=5)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic ")

        # without the credentials: Label Studio checks the backend, gets 401 and saves no connection
        monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
        monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)
        offset = log_path.stat().st_size
        with pytest.raises(StackError, match="authentication parameters"):
            ensure_ml_backend(ls, project_id, url)
        assert list(ls.ml.list(project=project_id)) == []
        assert _log_lines_since(log_path, offset, "GET /health from 127.0.0.1 -> 401: no credentials")

        # with them: the connection is made, Label Studio predicts through it and its webhook gets in
        monkeypatch.setenv("BASIC_AUTH_USER", USER)
        monkeypatch.setenv("BASIC_AUTH_PASS", password)
        backend_id = ensure_ml_backend(ls, project_id, url)
        (listed,) = ls.ml.list(project=project_id)
        assert (listed.state, listed.auth_method, listed.basic_auth_user) == ("CO", "BASIC_AUTH", USER)
        assert listed.basic_auth_pass_is_set
        t0 = time.perf_counter()
        retrieve_predictions(ls_server.url, ls_server.token, project_id, [task_id])
        phases["retrieve predictions"] = time.perf_counter() - t0
        (task,) = [t for t in client.list_tasks(ls, project_id) if t["id"] == task_id]
        assert [p for p in task["predictions"] if str(p["model_version"]).startswith("tiny-")], task["predictions"]
        offset = log_path.stat().st_size
        client.create_annotation(ls, task_id, [])
        deadline = time.monotonic() + 30
        while not _log_lines_since(log_path, offset, "webhook ANNOTATION_CREATED"):
            assert time.monotonic() < deadline, "Label Studio's webhook never got through to the backend"
            time.sleep(0.3)
        assert not _log_lines_since(log_path, offset, "-> 401")
        assert ensure_ml_backend(ls, project_id, url) == backend_id  # re-running reuses the connection

    # the backend's password changes: Label Studio reports it disconnected until castlab updates the connection
    t0 = time.perf_counter()
    with _backend(ls_server, log_path, port, rotated) as url:
        phases["backend restart"] = time.perf_counter() - t0
        offset = log_path.stat().st_size
        (listed,) = ls.ml.list(project=project_id)
        assert listed.state == "DI"
        assert _log_lines_since(log_path, offset, "-> 401: wrong credentials")
        monkeypatch.setenv("BASIC_AUTH_PASS", rotated)
        assert ensure_ml_backend(ls, project_id, url) == backend_id
        (listed,) = ls.ml.list(project=project_id)
        assert listed.state == "CO"
        hooks = [h for h in ls.webhooks.list(project=str(project_id)) if h.url == f"{url}/webhook"]
        assert [dict(h.headers or {}).get("Authorization") for h in hooks] == [BasicAuth(USER, rotated).header()]
        ls.ml.delete(id=backend_id)

    log_text = log_path.read_text(errors="replace")
    ls_log = Path(ls_server.server.process.log_file).read_text(errors="replace")
    for secret in (password, rotated, ls_server.token):
        assert secret not in log_text, "the backend logged a secret"
    assert password not in ls_log and rotated not in ls_log, "Label Studio logged the backend's password"
    phases["total"] = time.perf_counter() - started
    print("\nML backend auth test: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
