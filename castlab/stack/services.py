"""The local stack on 127.0.0.1: Label Studio, the Prefect server and (optionally) castlab's ML backend.

Each service runs as a detached process (its own session, so it outlives the command that started
it) with a pid file and a log file under ``<workspace>/stack/``. ``up`` checks every port before it
starts anything and is idempotent; ``down`` stops what ``up`` started. Label Studio runs from its own
virtualenv (``CASTLAB_LS_VENV``, default ``<project>/.venv-labelstudio``) with SQLite data in
``<workspace>/stack/labelstudio``, the workspace as its local-files document root and telemetry off.
Its admin login is generated once and kept in ``<workspace>/stack/labelstudio.credentials.json``
(mode 0600); it is never printed or logged.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests
import yaml

from castlab.config import PROJECT_ROOT, Config
from castlab.errors import StackError
from castlab.workspace import stack_dir, workspace_root, write_text_atomic

logger = logging.getLogger(__name__)

SERVICES = ("labelstudio", "prefect", "ml_backend")
DEFAULT_SERVICES = ("labelstudio", "prefect")
CREDENTIALS_FILE = "labelstudio.credentials.json"
STOP_GRACE_S = 20.0  # SIGTERM, then SIGKILL after this long (Label Studio stops in 1.5-3 s)
_POLL_S = 0.5
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # processes this interpreter started (reaped on stop)


# ----------------------------------------------------------------------------------------------
# ports and processes


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
                    f"{self.name} exited while starting; last lines of {self.log_file}:\n"
                    + _tail(self.log_file)
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


# ----------------------------------------------------------------------------------------------
# Label Studio


@dataclass(frozen=True)
class Credentials:
    """Label Studio admin login and legacy API token (secrets: never print them)."""

    username: str
    password: str
    token: str

    @classmethod
    def generate(cls) -> Credentials:
        return cls(
            username=f"castlab-{secrets.token_hex(4)}@castlab.local",
            password=secrets.token_urlsafe(24),
            token=secrets.token_hex(20),
        )

    def __repr__(self) -> str:  # keep secrets out of logs and tracebacks
        return f"Credentials(username={self.username!r}, password=***, token=***)"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_credentials(path: Path) -> Credentials:
    """Read a credentials file written by :func:`load_or_create_credentials`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return Credentials(username=data["username"], password=data["password"], token=data["token"])
    except FileNotFoundError as exc:
        problem = "Label Studio credentials file does not exist (start Label Studio with `castlab up`)"
        raise StackError(f"{path}: {problem}") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{path}: not a valid Label Studio credentials file ({type(exc).__name__})") from exc


def load_or_create_credentials(path: Path) -> Credentials:
    """The credentials kept at `path` (mode 0600), generated with `secrets` the first time."""
    path = Path(path)
    if path.exists():
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return load_credentials(path)
    creds = Credentials.generate()
    _write_private(path, json.dumps(asdict(creds), indent=2) + "\n")
    return creds


def labelstudio_venv() -> Path:
    """Label Studio's own virtualenv: ``CASTLAB_LS_VENV`` or ``<project>/.venv-labelstudio``."""
    return Path(os.environ.get("CASTLAB_LS_VENV") or PROJECT_ROOT / ".venv-labelstudio").expanduser()


def labelstudio_version(venv: Path | None = None) -> str:
    """Installed Label Studio version in `venv`, read from its package metadata (no slow CLI call)."""
    venv = venv or labelstudio_venv()
    found = sorted(venv.glob("lib/python*/site-packages/label_studio-*.dist-info"))
    if not found:
        raise StackError(
            f"{venv}: Label Studio is not installed there "
            "(run `make labelstudio-venv`, or set CASTLAB_LS_VENV)"
        )
    return found[-1].name[len("label_studio-") : -len(".dist-info")]


def _port_moved(port: int) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        if f"Port {port} is in use" in text:
            return (
                f"port {port} was taken while Label Studio started and it moved to another port; "
                f"free the port or change the setting 'labelstudio.port'"
            )
        return None

    return check


def _ls_healthy(response: requests.Response) -> bool:
    try:
        return response.status_code == 200 and response.json().get("status") == "UP"
    except ValueError:
        return False


class LabelStudioServer:
    """A Label Studio server from its own venv, on host:port, SQLite data in `data_dir`.

    `document_root` is the local-files root (castlab's workspace). Pid and log files go to
    `state_dir` (default: the parent of `data_dir`).
    """

    def __init__(
        self,
        data_dir: Path,
        document_root: Path,
        port: int,
        host: str,
        credentials: Credentials,
        *,
        startup_timeout_s: float,
        venv: Path | None = None,
        state_dir: Path | None = None,
        name: str = "labelstudio",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.document_root = Path(document_root).resolve()
        self.credentials = credentials
        self.venv = venv or labelstudio_venv()
        executable = self.venv / "bin" / "label-studio"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LABEL_STUDIO_", "HEARTEX_"))
            and k not in {"PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE"}
        }
        env.update(
            VIRTUAL_ENV=str(self.venv),
            PATH=f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            LABEL_STUDIO_USERNAME=credentials.username,
            LABEL_STUDIO_PASSWORD=credentials.password,
            LABEL_STUDIO_USER_TOKEN=credentials.token,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(self.document_root),
            LABEL_STUDIO_HOST="",  # no public hostname: an inherited HOST must not leak in
            LABEL_STUDIO_ML_BLOCK_LOCAL_IP="false",
            LABEL_STUDIO_SSRF_PROTECTION_ENABLED="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            LATEST_VERSION_CHECK="false",
            COLLECT_ANALYTICS="false",
            LOG_LEVEL="WARNING",  # Label Studio's default (DEBUG) logs every request
        )
        command = [str(executable), "start", "--no-browser", "--internal-host", host, "--port", str(port)]
        self.process = ManagedProcess(
            name,
            command,
            host=host,
            port=port,
            health_path="/health",
            setting="labelstudio.port",
            state_dir=Path(state_dir) if state_dir else self.data_dir.parent,
            startup_timeout_s=startup_timeout_s,
            env=env,
            cwd=self.data_dir.parent,
            log_problem=_port_moved(int(port)),
            health_check=_ls_healthy,
        )

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def token(self) -> str:
        return self.credentials.token

    def _check_installed(self) -> None:
        if not (self.venv / "bin" / "label-studio").is_file():
            raise StackError(
                f"{self.venv}: no Label Studio there (run `make labelstudio-venv` or "
                f"scripts/setup_venv.sh labelstudio, or point CASTLAB_LS_VENV at its virtualenv)"
            )

    def spawn(self) -> bool:
        if self.process.record() is None:
            self._check_installed()
            self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.process.spawn()

    def start(self) -> str:
        """Start and wait for ``/health``: "started" or "already running"."""
        if not self.spawn():
            return "already running"
        self.process.wait_healthy()
        return "started"

    def stop(self) -> str:
        return self.process.stop()


# ----------------------------------------------------------------------------------------------
# the stack from config


def _credentials_path() -> Path:
    return stack_dir() / CREDENTIALS_FILE


def _labelstudio(cfg: Config, create_credentials: bool = False) -> LabelStudioServer:
    path = _credentials_path()
    if create_credentials:
        creds = load_or_create_credentials(path)
    elif path.exists():
        creds = load_credentials(path)
    else:
        creds = Credentials("", "", "")  # status/stop only: nothing will start with these
    return LabelStudioServer(
        stack_dir() / "labelstudio",
        workspace_root(),
        int(cfg.labelstudio.port),
        str(cfg.labelstudio.host),
        creds,
        startup_timeout_s=float(cfg.labelstudio.startup_timeout_s),
        state_dir=stack_dir(),
    )


def _prefect(cfg: Config) -> ManagedProcess:
    host, port = str(cfg.prefect.host), int(cfg.prefect.port)
    home = stack_dir() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    venv_prefect = Path(sys.executable).parent / "prefect"
    env = {k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL", "PREFECT_HOME"}}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return ManagedProcess(
        "prefect",
        [str(venv_prefect), "server", "start", "--host", host, "--port", str(port)],
        host=host,
        port=port,
        health_path="/api/health",
        setting="prefect.port",
        state_dir=stack_dir(),
        startup_timeout_s=float(cfg.prefect.startup_timeout_s),
        env=env,
        cwd=stack_dir(),
    )


def _write_config(path: Path, cfg: Config) -> None:
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _ml_backend(cfg: Config) -> ManagedProcess:
    host, port = str(cfg.ml_backend.host), int(cfg.ml_backend.port)
    resolved = stack_dir() / "ml_backend.config.yaml"  # the backend resolves exactly this process's config
    command = [sys.executable, "-m", "ml_backend", "--host", host, "--port", str(port)]
    command += ["--profile", cfg.profile, "--config", str(resolved)]
    env = dict(os.environ, CASTLAB_WORKSPACE=str(workspace_root()))
    return ManagedProcess(
        "ml_backend",
        command,
        host=host,
        port=port,
        health_path="/health",
        setting="ml_backend.port",
        state_dir=stack_dir(),
        startup_timeout_s=float(cfg.ml_backend.startup_timeout_s),
        env=env,
        cwd=PROJECT_ROOT,
        prepare=lambda: _write_config(resolved, cfg),
    )


def _services(services: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(services))
    unknown = [s for s in wanted if s not in SERVICES]
    if unknown:
        raise StackError(f"unknown service(s) {', '.join(unknown)} (known: {', '.join(SERVICES)})")
    return [s for s in SERVICES if s in wanted]


def _process(cfg: Config, name: str, create_credentials: bool = False) -> ManagedProcess:
    if name == "labelstudio":
        return _labelstudio(cfg, create_credentials).process
    return _prefect(cfg) if name == "prefect" else _ml_backend(cfg)


def up(cfg: Config, services: Iterable[str] = DEFAULT_SERVICES) -> dict[str, dict[str, Any]]:
    """Start the services (ports checked first, then all started together); idempotent.

    Returns, per service: state ("started" or "already running"), url, pid, log.
    """
    names = _services(services)
    for name in names:  # every port before anything starts
        _process(cfg, name).check_port()
    started: dict[str, ManagedProcess] = {}
    result: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == "labelstudio":
            server = _labelstudio(cfg, create_credentials=True)
            if server.process.record() is None and not (server.data_dir / "label_studio.sqlite3").exists():
                logger.warning("labelstudio: the first start creates its database (about a minute)")
            proc, fresh = server.process, server.spawn()
        else:
            proc = _process(cfg, name)
            fresh = proc.spawn()
        if fresh:
            started[name] = proc
        state = "started" if fresh else "already running"
        result[name] = {"state": state, "url": proc.url, "log": str(proc.log_file)}
    for proc in started.values():
        proc.wait_healthy()
    for name in names:
        result[name]["pid"] = _process(cfg, name).pid()
    if "labelstudio" in result:
        result["labelstudio"]["credentials"] = str(_credentials_path())
    return result


def down(cfg: Config, services: Iterable[str] = SERVICES) -> dict[str, str]:
    """Stop the services (ML backend first): "stopped" or "not running" for each."""
    return {name: _process(cfg, name).stop() for name in reversed(_services(services))}


def status(cfg: Config) -> dict[str, dict[str, Any]]:
    """For each service: running (our process is alive), pid, url, healthy, log."""
    return {name: _process(cfg, name).status() for name in SERVICES}


# ----------------------------------------------------------------------------------------------
# connections for clients


def _key_from_file(path_text: str) -> str:
    path = Path(path_text).expanduser()
    try:
        mode = path.stat().st_mode
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise StackError(f"{path}: cannot read LABEL_STUDIO_API_KEY_FILE ({exc.strerror})") from exc
    if mode & 0o077:
        raise StackError(f"{path}: LABEL_STUDIO_API_KEY_FILE must be readable by you only (chmod 600 {path})")
    if not key:
        raise StackError(f"{path}: LABEL_STUDIO_API_KEY_FILE is empty")
    return key


def labelstudio_connection(cfg: Config) -> tuple[str, str]:
    """(url, token) of Label Studio: ``LABEL_STUDIO_URL`` + ``LABEL_STUDIO_API_KEY`` (or ``..._FILE``, mode
    0600) win; else the running local stack's URL and the token from its credentials file."""
    url = os.environ.get("LABEL_STUDIO_URL", "").strip()
    key = os.environ.get("LABEL_STUDIO_API_KEY", "").strip()
    key_file = os.environ.get("LABEL_STUDIO_API_KEY_FILE", "").strip()
    if url or key or key_file:
        if not url:
            raise StackError("LABEL_STUDIO_API_KEY(_FILE) is set but LABEL_STUDIO_URL is not")
        if not key and key_file:
            key = _key_from_file(key_file)
        if not key:
            raise StackError("LABEL_STUDIO_URL is set but LABEL_STUDIO_API_KEY(_FILE) is not")
        return url.rstrip("/"), key
    proc = _labelstudio(cfg).process
    if proc.record() is None:
        raise StackError(
            "Label Studio is not running: start it with `castlab up` "
            "(or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY for another server)"
        )
    if not proc.healthy():
        raise StackError(f"Label Studio at {proc.url} does not answer /health yet (log: {proc.log_file})")
    return proc.url, load_credentials(_credentials_path()).token


def prefect_api_url(cfg: Config) -> str | None:
    """``PREFECT_API_URL``, else the local Prefect server's API URL when it is healthy, else None."""
    env_url = os.environ.get("PREFECT_API_URL", "").strip()
    if env_url:
        return env_url
    proc = _prefect(cfg)
    return f"{proc.url}/api" if proc.healthy() else None
