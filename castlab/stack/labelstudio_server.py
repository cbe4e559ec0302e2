"""Label Studio as a managed process: its own virtualenv, version, environment and start command.

Label Studio runs from ``CASTLAB_LS_VENV`` (default ``<project>/.venv-labelstudio``) with SQLite data in
its data folder (or, given a :class:`~castlab.stack.database.PostgresDatabase`, on PostgreSQL), castlab's
workspace as its local-files document root and telemetry off. Its admin login
(:class:`~castlab.labelstudio.connection.Credentials`) reaches it through the environment only: it is
never put on the command line, printed or logged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from castlab.config import PROJECT_ROOT
from castlab.errors import StackError
from castlab.labelstudio.connection import HEALTH_PATH, Credentials, health_ok
from castlab.stack.database import PostgresDatabase
from castlab.stack.process import ManagedProcess


def labelstudio_venv() -> Path:
    """Label Studio's own virtualenv: ``CASTLAB_LS_VENV`` or ``<project>/.venv-labelstudio``."""
    return Path(os.environ.get("CASTLAB_LS_VENV") or PROJECT_ROOT / ".venv-labelstudio").expanduser()


def labelstudio_version(venv: Path | None = None) -> str:
    """Installed Label Studio version in `venv`, read from its package metadata (no slow CLI call)."""
    venv = venv or labelstudio_venv()
    found = sorted(venv.glob("lib/python*/site-packages/label_studio-*.dist-info"))
    if not found:
        raise StackError(
            f"{venv}: Label Studio is not installed there (run `make labelstudio-venv`, or set CASTLAB_LS_VENV)"
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


class LabelStudioServer:
    """A Label Studio server from its own venv, on host:port, SQLite data in `data_dir` (its database in
    `database` instead, when given; media and exports stay in `data_dir`).

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
        database: PostgresDatabase | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.database = database
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
        if database is not None:
            env.update(database.labelstudio_env())
        command = [str(executable), "start", "--no-browser", "--internal-host", host, "--port", str(port)]
        self.process = ManagedProcess(
            name,
            command,
            host=host,
            port=port,
            health_path=HEALTH_PATH,
            setting="labelstudio.port",
            state_dir=Path(state_dir) if state_dir else self.data_dir.parent,
            startup_timeout_s=startup_timeout_s,
            env=env,
            cwd=self.data_dir.parent,
            log_problem=_port_moved(int(port)),
            health_check=health_ok,
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
