"""The local stack on 127.0.0.1: Label Studio, the Prefect server, a Prefect worker running castlab's
deployments, and (optionally) castlab's ML backend.

Each service runs as a detached :class:`~castlab.stack.process.ManagedProcess` with a pid file and a log
file under ``<workspace>/stack/``. ``up`` checks every port before it starts anything and is idempotent;
``down`` stops what ``up`` started. Label Studio (:mod:`castlab.stack.labelstudio_server`) keeps its data in
``<workspace>/stack/labelstudio``; its admin login is generated once and kept in
``<workspace>/stack/labelstudio.credentials.json`` (mode 0600, :mod:`castlab.labelstudio.connection`).
The worker (:mod:`castlab.stack.deployments`) starts once the Prefect server is healthy: ``up`` first creates the
work pool and deploys ``prefect.yaml``; ``down`` stops the worker before the server it polls.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests
import yaml

from castlab.config import PROJECT_ROOT, Config
from castlab.errors import ConfigError, StackError
from castlab.labelstudio.backends import backend_auth
from castlab.labelstudio.connection import Credentials, credentials_path, load_credentials, load_or_create_credentials
from castlab.stack.database import configured_database, describe_databases, prefect_database_env
from castlab.stack.deployments import deploy, prefect_bin, prefect_env, worker_process
from castlab.stack.labelstudio_server import LabelStudioServer
from castlab.stack.process import ManagedProcess
from castlab.workspace import stack_dir, workspace_root, write_text_atomic

logger = logging.getLogger(__name__)

SERVICES = ("labelstudio", "prefect", "worker", "receiver", "ml_backend")
DEFAULT_SERVICES = ("labelstudio", "prefect", "worker", "receiver")
_AFTER_PREFECT = ("worker", "receiver")  # started once the Prefect server answers


def _labelstudio(cfg: Config, create_credentials: bool = False) -> LabelStudioServer:
    path = credentials_path()
    if create_credentials:
        creds = load_or_create_credentials(path)
    elif path.exists():
        creds = load_credentials(path)
    else:
        creds = Credentials("", "", "")  # status/stop only: nothing will start with these
    return LabelStudioServer(
        stack_dir() / "labelstudio",
        workspace_root(),
        cfg.labelstudio.port,
        cfg.labelstudio.host,
        creds,
        startup_timeout_s=cfg.labelstudio.startup_timeout_s,
        state_dir=stack_dir(),
        database=configured_database(cfg) if create_credentials else None,  # only a start needs it
    )


def _prefect(cfg: Config) -> ManagedProcess:
    host, port = cfg.prefect.host, cfg.prefect.port
    env = prefect_env()
    return ManagedProcess(
        "prefect",
        [prefect_bin(), "server", "start", "--host", host, "--port", str(port)],
        host=host,
        port=port,
        health_path="/api/health",
        setting="prefect.port",
        state_dir=stack_dir(),
        startup_timeout_s=cfg.prefect.startup_timeout_s,
        env=env,
        cwd=stack_dir(),
        prepare=lambda: env.update(prefect_database_env(cfg)),  # at start only: status and down need no database
    )


def _write_config(path: Path, cfg: Config) -> None:
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


class _BackendProcess(ManagedProcess):
    """The ML backend's process: with its basic auth on (``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS`` in the
    environment it gets), health probes carry the credentials."""

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            auth = backend_auth(self.env)
        except ConfigError:
            auth = None  # half a pair: the backend refuses to start (its log says why)
        if auth is None:
            return super().healthy(timeout)
        try:
            response = requests.get(self.url + self.health_path, timeout=timeout, allow_redirects=False,
                                    headers={"Authorization": auth.header()})
        except requests.RequestException:
            return False
        return self.health_check(response)


def _ml_backend(cfg: Config) -> ManagedProcess:
    host, port = cfg.ml_backend.host, cfg.ml_backend.port
    resolved = stack_dir() / "ml_backend.config.yaml"  # the backend resolves exactly this process's config
    command = [sys.executable, "-m", "ml_backend", "--host", host, "--port", str(port)]
    command += ["--profile", cfg.profile, "--config", str(resolved)]
    env = dict(os.environ, CASTLAB_WORKSPACE=str(workspace_root()))  # BASIC_AUTH_USER / _PASS pass through
    return _BackendProcess(
        "ml_backend",
        command,
        host=host,
        port=port,
        health_path="/health",
        setting="ml_backend.port",
        state_dir=stack_dir(),
        startup_timeout_s=cfg.ml_backend.startup_timeout_s,
        env=env,
        cwd=PROJECT_ROOT,
        prepare=lambda: _write_config(resolved, cfg),
    )


def _api_url(cfg: Config) -> str:
    """The Prefect API the worker and the receiver talk to: ``PREFECT_API_URL``, else the local server's."""
    return prefect_api_url(cfg) or f"{_prefect(cfg).url}/api"


def receiver_process(cfg: Config) -> ManagedProcess:
    """The webhook receiver (flows/receiver.py): Label Studio webhooks → Prefect events."""
    host, port = cfg.reviews.host, cfg.reviews.port
    env = dict(os.environ, CASTLAB_WORKSPACE=str(workspace_root()), PREFECT_API_URL=_api_url(cfg))
    return ManagedProcess(
        "receiver",
        [sys.executable, "-m", "flows.receiver", "--host", host, "--port", str(port)],
        host=host,
        port=port,
        health_path="/health",
        setting="reviews.port",
        state_dir=stack_dir(),
        startup_timeout_s=cfg.reviews.startup_timeout_s,
        env=env,
        cwd=PROJECT_ROOT,
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
    if name == "worker":
        return worker_process(cfg, _api_url(cfg))
    if name == "receiver":
        return receiver_process(cfg)
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
    for name in [n for n in names if n not in _AFTER_PREFECT]:
        if name == "labelstudio":
            server = _labelstudio(cfg, create_credentials=True)
            sqlite = server.data_dir / "label_studio.sqlite3"
            if server.process.record() is None and server.database is None and not sqlite.exists():
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
    if "worker" in names:  # needs the Prefect server: pool and deployments first, then the worker
        result["worker"] = _start_worker(cfg)
    if "receiver" in names:
        result["receiver"] = _start_receiver(cfg)
    for name in names:
        result[name]["pid"] = _process(cfg, name).pid()
    if "labelstudio" in result:
        result["labelstudio"]["credentials"] = str(credentials_path())
    return result


def _prefect_api_or_fail(name: str, cfg: Config) -> str:
    api = prefect_api_url(cfg)
    if api is None:
        raise StackError(f"{name}: no Prefect server answers (start it with `castlab up`, or set PREFECT_API_URL)")
    return api


def _start(proc: ManagedProcess) -> dict[str, Any]:
    fresh = proc.spawn()
    if fresh:
        proc.wait_healthy()
    return {"state": "started" if fresh else "already running", "url": proc.url, "log": str(proc.log_file)}


def _start_worker(cfg: Config) -> dict[str, Any]:
    deployed = deploy(cfg, _prefect_api_or_fail("worker", cfg))
    return {**_start(_process(cfg, "worker")), "work_pool": cfg.prefect.work_pool, "deployments": deployed}


def _start_receiver(cfg: Config) -> dict[str, Any]:
    from castlab.reviews.secret import secret_path, webhook_secret

    _prefect_api_or_fail("receiver", cfg)
    webhook_secret(create=True)
    started = _start(receiver_process(cfg))
    return {**started, "url": f"{started['url']}/labelstudio", "secret": str(secret_path())}


def down(cfg: Config, services: Iterable[str] = SERVICES) -> dict[str, str]:
    """Stop the services (ML backend first): "stopped" or "not running" for each."""
    return {name: _process(cfg, name).stop() for name in reversed(_services(services))}


def status(cfg: Config) -> dict[str, dict[str, Any]]:
    """For each service: running (our process is alive), pid, url, healthy, log (+ Label Studio's and the Prefect
    server's database, without its password)."""
    result = {name: _process(cfg, name).status() for name in SERVICES}
    for name, database in describe_databases(cfg).items():
        result[name]["database"] = database
    return result


def prefect_api_url(cfg: Config) -> str | None:
    """``PREFECT_API_URL``, else the local Prefect server's API URL when it is healthy, else None."""
    env_url = os.environ.get("PREFECT_API_URL", "").strip()
    if env_url:
        return env_url
    proc = _prefect(cfg)
    return f"{proc.url}/api" if proc.healthy() else None
