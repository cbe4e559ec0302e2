"""castlab.stack without the real servers: a stand-in `label-studio` script plays Label Studio."""

from __future__ import annotations

import json
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from castlab import stack
from castlab.config import load_config
from castlab.errors import StackError
from castlab.labelstudio.connection import labelstudio_connection, load_credentials

FAKE_LABEL_STUDIO = """#!{python}
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

args = sys.argv[1:]
port, host = int(args[args.index("--port") + 1]), args[args.index("--internal-host") + 1]
data = os.environ["LABEL_STUDIO_BASE_DATA_DIR"]
os.makedirs(data, exist_ok=True)
keys = [k for k in os.environ if k.startswith("LABEL_STUDIO_") or k in ("SENTRY_DSN", "FRONTEND_SENTRY_DSN",
        "LATEST_VERSION_CHECK", "COLLECT_ANALYTICS")]
with open(os.path.join(data, "seen.json"), "w") as fh:
    json.dump({{"argv": sys.argv, "env": {{k: os.environ[k] for k in keys}}}}, fh)
print("stand-in Label Studio starting", flush=True)
if os.environ.get("FAKE_LS_MODE") == "move":
    print(f"* Port {{port}} is in use.\\n* Trying to start at {{port + 1}}", flush=True)
    time.sleep(60)


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"status": "UP"}}).encode()
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer((host, port), Health).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fake_ls_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    venv = tmp_path / "fake-ls-venv"
    script = venv / "bin" / "label-studio"
    script.parent.mkdir(parents=True)
    script.write_text(FAKE_LABEL_STUDIO.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("CASTLAB_LS_VENV", str(venv))
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_API_KEY_FILE", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    return venv


@pytest.fixture
def ports_cfg(workspace: Path):
    return load_config(extra={
        "labelstudio": {"host": "127.0.0.1", "port": free_port(), "startup_timeout_s": 20},
        "prefect": {"host": "127.0.0.1", "port": free_port(), "startup_timeout_s": 20, "worker_port": free_port()},
        "ml_backend": {"host": "127.0.0.1", "port": free_port(), "startup_timeout_s": 20},
        "reviews": {"host": "127.0.0.1", "port": free_port(), "startup_timeout_s": 20},
    })  # fmt: skip


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("service, setting", [("labelstudio", "labelstudio.port"), ("prefect", "prefect.port")])
def test_busy_port_is_refused_before_anything_starts(workspace, busy_port, service, setting, fake_ls_venv):
    cfg = load_config(extra={service: {"port": busy_port}})
    with pytest.raises(StackError) as err:
        stack.up(cfg, services=("labelstudio", "prefect"))
    assert str(busy_port) in str(err.value) and setting in str(err.value)
    assert not list((workspace / "stack").glob("*.pid")), "a service started although a port was busy"


def test_status_reads_hosts_and_ports_from_config(ports_cfg):
    status = stack.status(ports_cfg)
    assert set(status) == {"labelstudio", "prefect", "worker", "receiver", "ml_backend"}
    ports = {"labelstudio": ports_cfg.labelstudio.port, "prefect": ports_cfg.prefect.port,
             "worker": ports_cfg.prefect.worker_port, "receiver": ports_cfg.reviews.port,
             "ml_backend": ports_cfg.ml_backend.port}
    for name, entry in status.items():
        assert entry["url"] == f"http://127.0.0.1:{ports[name]}"
        assert entry["running"] is False and entry["pid"] is None and entry["healthy"] is False
    assert stack.prefect_api_url(ports_cfg) is None


@pytest.mark.parametrize("service", ["worker", "receiver"])
def test_the_worker_and_the_receiver_need_a_prefect_server(ports_cfg, workspace, service):
    with pytest.raises(StackError, match="no Prefect server answers"):
        stack.up(ports_cfg, services=(service,))
    assert not list((workspace / "stack").glob("*.pid"))


def test_unknown_service_is_refused(ports_cfg):
    with pytest.raises(StackError, match="unknown service"):
        stack.up(ports_cfg, services=("labelstudio", "redis"))


def test_up_status_down_with_a_stand_in_label_studio(workspace, ports_cfg, fake_ls_venv):
    port = ports_cfg.labelstudio.port
    first = stack.up(ports_cfg, services=("labelstudio",))
    try:
        assert first["labelstudio"]["state"] == "started"
        assert first["labelstudio"]["url"] == f"http://127.0.0.1:{port}"
        creds_path = workspace / "stack" / "labelstudio.credentials.json"
        assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600
        creds = load_credentials(creds_path)
        again = stack.up(ports_cfg, services=("labelstudio",))
        assert again["labelstudio"]["state"] == "already running"
        assert again["labelstudio"]["pid"] == first["labelstudio"]["pid"]
        status = stack.status(ports_cfg)["labelstudio"]
        assert status["running"] and status["healthy"] and status["pid"] == first["labelstudio"]["pid"]
        assert labelstudio_connection(ports_cfg) == (f"http://127.0.0.1:{port}", creds.token)

        seen = json.loads((workspace / "stack" / "labelstudio" / "seen.json").read_text())
        env = seen["env"]
        assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(workspace.resolve())
        assert env["LABEL_STUDIO_BASE_DATA_DIR"] == str((workspace / "stack" / "labelstudio").resolve())
        assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
        assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
        assert env["LABEL_STUDIO_ML_BLOCK_LOCAL_IP"] == "false"
        assert env["LABEL_STUDIO_SSRF_PROTECTION_ENABLED"] == "false"
        assert env["SENTRY_DSN"] == env["FRONTEND_SENTRY_DSN"] == ""
        assert env["COLLECT_ANALYTICS"] == env["LATEST_VERSION_CHECK"] == "false"
        assert env["LABEL_STUDIO_USER_TOKEN"] == creds.token
        expected_argv = ["start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
        assert seen["argv"][1:] == expected_argv
        shown = json.dumps([first, again, stack.status(ports_cfg)])
        log = (workspace / "stack" / "labelstudio.log").read_text()
        for secret in (creds.token, creds.password):
            assert secret not in shown and secret not in log and secret not in " ".join(seen["argv"])
    finally:
        down = stack.down(ports_cfg)
    assert down == {"ml_backend": "not running", "receiver": "not running", "worker": "not running",
                    "prefect": "not running", "labelstudio": "stopped"}
    assert not stack.port_in_use("127.0.0.1", port)
    assert stack.status(ports_cfg)["labelstudio"]["running"] is False
    assert stack.down(ports_cfg)["labelstudio"] == "not running"


def test_label_studio_moving_to_another_port_is_an_error(workspace, ports_cfg, fake_ls_venv, monkeypatch):
    monkeypatch.setenv("FAKE_LS_MODE", "move")
    port = ports_cfg.labelstudio.port
    with pytest.raises(StackError) as err:
        stack.up(ports_cfg, services=("labelstudio",))
    assert f"port {port}" in str(err.value) and "labelstudio.port" in str(err.value)
    assert stack.status(ports_cfg)["labelstudio"]["running"] is False
    assert not (workspace / "stack" / "labelstudio.pid").exists()


def test_missing_label_studio_venv_is_a_clear_error(workspace, ports_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("CASTLAB_LS_VENV", str(tmp_path / "nowhere"))
    with pytest.raises(StackError, match="labelstudio-venv"):
        stack.up(ports_cfg, services=("labelstudio",))
    with pytest.raises(StackError, match="not installed"):
        stack.labelstudio_version()


def test_prefect_api_url_prefers_the_environment(ports_cfg, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    assert stack.prefect_api_url(ports_cfg) == "http://prefect.example:4200/api"
    monkeypatch.delenv("PREFECT_API_URL")
    assert stack.prefect_api_url(ports_cfg) is None
