"""castlab.stack.process: a detached ManagedProcess with its pid file, health URL, log and signals."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from castlab.errors import StackError
from castlab.stack.process import ManagedProcess, port_in_use


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process(tmp_path: Path, code: str, port: int, **kwargs) -> ManagedProcess:
    return ManagedProcess(
        "demo", [sys.executable, "-c", code], host="127.0.0.1", port=port, health_path="/",
        setting="demo.port", state_dir=tmp_path / "state", startup_timeout_s=20, **kwargs,
    )  # fmt: skip


def test_managed_process_start_is_idempotent_and_stop_frees_the_port(tmp_path: Path):
    port = free_port()
    serve = f"import http.server as h; h.HTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler)"
    serve += ".serve_forever()"
    proc = _process(tmp_path, serve, port, cwd=tmp_path)
    assert proc.start() == "started"
    try:
        pid = proc.pid()
        assert pid and proc.healthy() and proc.pid_file.is_file()
        assert proc.start() == "already running" and proc.pid() == pid
        assert os.getpgid(pid) == pid  # detached in its own session
    finally:
        assert proc.stop() == "stopped"
    assert not proc.pid_file.exists() and not port_in_use("127.0.0.1", port)
    assert proc.stop() == "not running"


def test_process_that_exits_while_starting_shows_its_log(tmp_path: Path):
    proc = _process(tmp_path, "print('boom: no config'); raise SystemExit(3)", free_port())
    with pytest.raises(StackError, match="boom: no config"):
        proc.start()
    assert proc.pid() is None


def test_stale_pid_file_is_dropped(tmp_path: Path):
    proc = _process(tmp_path, "pass", free_port())
    proc.state_dir.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    proc.pid_file.write_text(json.dumps({"pid": int(dead.stdout), "url": "http://127.0.0.1:1"}))
    assert proc.record() is None and not proc.pid_file.exists()
    assert proc.status()["running"] is False
