"""castlab.labelstudio.connection: the environment wins, else the local stack's Label Studio (checked by /health)."""

from __future__ import annotations

import json
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from castlab.config import Config, load_config
from castlab.errors import StackError
from castlab.labelstudio import connection
from castlab.labelstudio.connection import labelstudio_connection, load_credentials, load_or_create_credentials

ENV_NAMES = ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_API_KEY_FILE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(port: int) -> Config:
    return load_config(extra={"labelstudio": {"host": "127.0.0.1", "port": port}})


@pytest.fixture
def no_env(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return workspace


def _serve_health(status: str) -> Iterator[int]:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": status}).encode()
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def healthy_port() -> Iterator[int]:
    yield from _serve_health("UP")


@pytest.fixture
def unhealthy_port() -> Iterator[int]:
    yield from _serve_health("DOWN")


def test_connection_module_does_not_import_the_supervisor():
    code = "import sys, castlab.labelstudio.connection; print(any(m.startswith('castlab.stack') for m in sys.modules))"
    out = __import__("subprocess").run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_credentials_file_is_private_and_reused(tmp_path: Path):
    path = tmp_path / "stack" / "labelstudio.credentials.json"
    creds = load_or_create_credentials(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(creds.token) >= 32 and len(creds.password) >= 24 and "@" in creds.username
    assert creds.token not in repr(creds) and creds.password not in repr(creds)
    assert creds.token not in str(creds) and creds.password not in str(creds)
    assert load_or_create_credentials(path) == creds
    path.chmod(0o644)
    assert load_or_create_credentials(path) == creds
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other = load_or_create_credentials(tmp_path / "other.json")
    assert other.token != creds.token and other.password != creds.password


def test_broken_credentials_file_is_named(tmp_path: Path):
    path = tmp_path / "creds.json"
    with pytest.raises(StackError, match="castlab up"):
        load_credentials(path)
    path.write_text('{"username": "u"}')
    with pytest.raises(StackError, match="not a valid Label Studio credentials file") as err:
        load_credentials(path)
    assert str(path) in str(err.value)


def test_environment_wins_over_the_local_stack(no_env: Path, healthy_port: int, monkeypatch):
    load_or_create_credentials(connection.credentials_path())  # a local stack that would answer
    cfg = _config(healthy_port)
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls.example:8080/")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "env-token")
    assert labelstudio_connection(cfg) == ("http://ls.example:8080", "env-token")


def test_environment_rules(no_env: Path, tmp_path: Path, monkeypatch):
    cfg = _config(free_port())
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls.example:8080/")
    with pytest.raises(StackError, match="LABEL_STUDIO_API_KEY"):
        labelstudio_connection(cfg)
    key_file = tmp_path / "key"
    key_file.write_text("file-token\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY_FILE", str(key_file))
    assert labelstudio_connection(cfg) == ("http://ls.example:8080", "file-token")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "env-token")
    assert labelstudio_connection(cfg) == ("http://ls.example:8080", "env-token")
    monkeypatch.delenv("LABEL_STUDIO_URL")
    with pytest.raises(StackError, match="LABEL_STUDIO_URL is not"):
        labelstudio_connection(cfg)
    key_file.write_text("\n")
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls.example:8080")
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    with pytest.raises(StackError, match="is empty"):
        labelstudio_connection(cfg)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(StackError, match="cannot read LABEL_STUDIO_API_KEY_FILE"):
        labelstudio_connection(cfg)


def test_key_file_readable_by_others_is_refused(no_env: Path, tmp_path: Path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("file-token\n")
    key_file.chmod(0o644)
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls.example:8080")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY_FILE", str(key_file))
    with pytest.raises(StackError, match="chmod 600") as err:
        labelstudio_connection(_config(free_port()))
    assert str(key_file) in str(err.value) and "file-token" not in str(err.value)


def test_no_credentials_file_says_castlab_up(no_env: Path, healthy_port: int):
    with pytest.raises(StackError, match="castlab up") as err:
        labelstudio_connection(_config(healthy_port))
    assert "LABEL_STUDIO_URL" in str(err.value)


def test_local_server_that_does_not_answer_health(no_env: Path):
    creds = load_or_create_credentials(connection.credentials_path())
    port = free_port()
    with pytest.raises(StackError, match="does not answer /health") as err:
        labelstudio_connection(_config(port))
    assert f"http://127.0.0.1:{port}" in str(err.value) and creds.token not in str(err.value)


def test_local_server_that_is_not_up_yet(no_env: Path, unhealthy_port: int):
    load_or_create_credentials(connection.credentials_path())
    with pytest.raises(StackError, match="does not answer /health"):
        labelstudio_connection(_config(unhealthy_port))


def test_local_stack_url_from_config_and_token_from_credentials(no_env: Path, healthy_port: int):
    path = no_env / "stack" / "labelstudio.credentials.json"
    creds = load_or_create_credentials(path)
    assert connection.credentials_path() == path
    assert labelstudio_connection(_config(healthy_port)) == (f"http://127.0.0.1:{healthy_port}", creds.token)
