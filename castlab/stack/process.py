"""Detached service processes: port checks, pid records, health polling and signals.

Each :class:`ManagedProcess` runs in its own session (so it outlives the command that started it) with
a pid file (JSON: pid, kernel start time, url) and an append-only log file in its state folder.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

from castlab.errors import StackError

logger = logging.getLogger(__name__)

STOP_GRACE_S = 20.0  # SIGTERM, then SIGKILL after this long (Label Studio stops in 1.5-3 s)
_POLL_S = 0.5
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # processes this interpreter started (reaped on stop)


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port or the port cannot be bound there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_port_free(host: str, port: int, setting: str, service: str) -> None:
    """Raise StackError naming the port and the setting to change when host:port is taken."""
    if port_in_use(host, port):
        raise StackError(
            f"{service}: port {port} on {host} is already in use by another program; stop that program "
            f"or choose another port with the setting '{setting}' (e.g. in a --config override file)"
        )


def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of a process (Linux), to tell a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start_time: str | None) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    if stat[stat.rfind(")") + 2 :].split()[0] == "Z":
        return False
    return start_time is None or _proc_start_time(pid) == start_time


def _get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> requests.Response | None:
    try:
        return requests.get(url, timeout=timeout, headers=headers, allow_redirects=False)
    except requests.RequestException:
        return None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One detached service: pid file + log file in `state_dir`, health URL, port check before start.

    `log_problem(new_log_text)` may return a message that aborts the start (e.g. a moved port).
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        host: str,
        port: int,
        health_path: str,
        setting: str,
        state_dir: Path,
        startup_timeout_s: float,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log_problem: Callable[[str], str | None] | None = None,
        health_check: Callable[[requests.Response], bool] | None = None,
        prepare: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.host = host
        self.port = int(port)
        self.health_path = health_path
        self.setting = setting
        self.state_dir = Path(state_dir)
        self.startup_timeout_s = float(startup_timeout_s)
        self.env = env
        self.cwd = cwd
        self.log_problem = log_problem
        self.health_check = health_check or (lambda response: response.status_code == 200)
        self.prepare = prepare
        self.pid_file = self.state_dir / f"{name}.pid"
        self.log_file = self.state_dir / f"{name}.log"
        self._log_offset = 0

    @property
    def url(self) -> str:
        """Base URL: the running process's (from its pid file), else the configured one."""
        record = self.record()
        return str(record["url"]) if record else f"http://{self.host}:{self.port}"

    def record(self) -> dict[str, Any] | None:
        """The pid file's content when its process is alive; a stale pid file is removed."""
        try:
            record = json.loads(self.pid_file.read_text(encoding="utf-8"))
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if _alive(pid, record.get("start_time")):
            return record
        self.pid_file.unlink(missing_ok=True)
        return None

    def pid(self) -> int | None:
        record = self.record()
        return int(record["pid"]) if record else None

    def healthy(self, timeout: float = 2.0) -> bool:
        response = _get(self.url + self.health_path, timeout=timeout)
        return response is not None and self.health_check(response)

    def status(self) -> dict[str, Any]:
        record = self.record()
        return {
            "running": record is not None,
            "pid": int(record["pid"]) if record else None,
            "url": self.url,
            "healthy": self.healthy(),
            "log": str(self.log_file),
        }

    def check_port(self) -> None:
        if self.record() is None:
            check_port_free(self.host, self.port, self.setting, self.name)

    def spawn(self) -> bool:
        """Start the process detached (no wait); False when it is already running."""
        if self.record() is not None:
            return False
        self.check_port()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.prepare is not None:
            self.prepare()
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as log:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            log.write(f"\n=== {stamp} castlab starts {self.name} on {self.host}:{self.port} ===\n".encode())
            log.flush()
            self._log_offset = log.tell()
            try:
                proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                problem = exc.strerror or str(exc)
                raise StackError(f"{self.name}: cannot run {self.command[0]} ({problem})") from exc
        _CHILDREN[proc.pid] = proc
        record = {
            "pid": proc.pid,
            "start_time": _proc_start_time(proc.pid),
            "url": f"http://{self.host}:{self.port}",
            "host": self.host,
            "port": self.port,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        tmp = self.pid_file.with_suffix(".pid.tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, self.pid_file)
        logger.info("%s: started pid %s, log %s", self.name, proc.pid, self.log_file)
        return True

    def _new_log_text(self) -> str:
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def wait_healthy(self) -> None:
        """Poll the health URL until it answers; on exit, a log problem or timeout stop and raise."""
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.record() is None:
                raise StackError(
                    f"{self.name} exited while starting; last lines of {self.log_file}:\n" + _tail(self.log_file)
                )
            problem = self.log_problem(self._new_log_text()) if self.log_problem else None
            if problem:
                self.stop()
                raise StackError(f"{self.name}: {problem} (log: {self.log_file})")
            if self.healthy(timeout=1.0):
                return
            if time.monotonic() > deadline:
                self.stop()
                setting = self.setting.rsplit(".", 1)[0] + ".startup_timeout_s"
                raise StackError(
                    f"{self.name} did not answer {self.url}{self.health_path} within "
                    f"{self.startup_timeout_s:g} s (setting '{setting}'); last lines of {self.log_file}:\n"
                    + _tail(self.log_file)
                )
            time.sleep(_POLL_S)

    def start(self) -> str:
        """Start and wait until healthy: "started", or "already running" (nothing done)."""
        if not self.spawn():
            return "already running"
        self.wait_healthy()
        return "started"

    def stop(self, grace_s: float = STOP_GRACE_S) -> str:
        """SIGTERM the process group, SIGKILL after `grace_s`: "stopped" or "not running"."""
        record = self.record()
        if record is None:
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        pid = int(record["pid"])
        self._signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _alive(pid, record.get("start_time")) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid, record.get("start_time")):
            logger.warning("%s: pid %s ignored SIGTERM for %.0f s, killing it", self.name, pid, grace_s)
            self._signal(pid, signal.SIGKILL)
            child = _CHILDREN.get(pid)
            if child is not None:
                child.wait(timeout=10)
        _CHILDREN.pop(pid, None)
        self.pid_file.unlink(missing_ok=True)
        return "stopped"

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            if os.getpgid(pid) == pid:  # started with its own session: stop its children too
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass
