"""castlab's Prefect deployments (``prefect.yaml``) and the process worker that runs them.

``deploy`` creates the work pool (``prefect.work_pool``, type ``process``) when it is missing and runs
``prefect --no-prompt deploy --all`` from the project folder: the same command a user runs by hand, so the
deployments the server lists are exactly those of ``prefect.yaml``. ``prefect.yaml`` reads two variables at deploy
time: ``CASTLAB_WORK_POOL`` (the pool) and ``CASTLAB_PROJECT_ROOT`` (the pull step's working directory: flows run
from this folder, no git remote or image needed).

The worker is a :class:`~castlab.stack.process.ManagedProcess` with Prefect's health server on 127.0.0.1
(``prefect.worker_port``). Flow runs it starts inherit its environment: the workspace, the profile and the Prefect
API URL of the ``castlab up`` that started it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
import yaml

from castlab.config import PROJECT_ROOT, Config
from castlab.errors import StackError
from castlab.stack.process import ManagedProcess
from castlab.workspace import stack_dir, workspace_root

PREFECT_FILE = PROJECT_ROOT / "prefect.yaml"
DEPLOY_TIMEOUT_S = 300.0


def prefect_bin() -> str:
    """The ``prefect`` command of this virtualenv."""
    return str(Path(sys.executable).parent / "prefect")


def prefect_env() -> dict[str, str]:
    """This environment for a Prefect process castlab starts: its home in the workspace, analytics off, and no
    inherited ``PREFECT_API_URL`` (the caller sets the one it means)."""
    home = stack_dir() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL", "PREFECT_HOME"}}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def _env(cfg: Config, api_url: str) -> dict[str, str]:
    """The environment of the deploy command and of the worker (and so of every flow run it starts)."""
    env = prefect_env()
    env.update(
        PREFECT_API_URL=api_url, PREFECT_LOCAL_STORAGE_PATH=str(Path(env["PREFECT_HOME"]) / "storage"),
        CASTLAB_WORKSPACE=str(workspace_root()), CASTLAB_PROFILE=cfg.profile,
        CASTLAB_WORK_POOL=cfg.prefect.work_pool, CASTLAB_PROJECT_ROOT=str(PROJECT_ROOT),
    )
    return env


def declared_deployments(path: Path = PREFECT_FILE) -> dict[str, str]:
    """``{deployment name: entrypoint}`` as ``prefect.yaml`` declares them."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise StackError(f"{path}: cannot read the deployments ({exc})") from exc
    return {str(d["name"]): str(d["entrypoint"]) for d in data.get("deployments") or []}


def _api(method: str, url: str, **kwargs: Any) -> requests.Response:
    try:
        return requests.request(method, url, timeout=30, **kwargs)
    except requests.RequestException as exc:
        raise StackError(f"Prefect API {url}: {exc}") from exc


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    log = stack_dir() / "deploy.log"
    with open(log, "ab") as out:
        try:
            done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=DEPLOY_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StackError(f"{what} failed: {exc} (log: {log})") from exc
    if done.returncode:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:])
        raise StackError(f"{what} exited with {done.returncode}; last lines of {log}:\n{tail}")


def ensure_work_pool(cfg: Config, api_url: str) -> bool:
    """Create the process work pool unless it exists; True when it was created."""
    pool = cfg.prefect.work_pool
    found = _api("GET", f"{api_url}/work_pools/{pool}")
    if found.status_code == 200:
        kind = found.json().get("type")
        if kind != "process":
            raise StackError(f"work pool {pool!r} exists with type {kind!r}; castlab's deployments need a 'process' "
                             "pool (choose another name with the setting 'prefect.work_pool')")
        return False
    _run([prefect_bin(), "--no-prompt", "work-pool", "create", pool, "--type", "process"], _env(cfg, api_url),
         f"creating work pool {pool!r}")
    return True


def deploy(cfg: Config, api_url: str) -> list[str]:
    """Pool + ``prefect deploy --all`` (idempotent: deployments are updated in place); the deployed names."""
    ensure_work_pool(cfg, api_url)
    _run([prefect_bin(), "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE)],
         _env(cfg, api_url), "prefect deploy --all")
    return sorted(declared_deployments())


def server_deployments(api_url: str) -> dict[str, dict[str, Any]]:
    """``{deployment name: its record}`` as the Prefect server lists them."""
    response = _api("POST", f"{api_url}/deployments/filter", json={})
    if response.status_code != 200:
        raise StackError(f"Prefect API {api_url}/deployments/filter answered {response.status_code}")
    return {d["name"]: d for d in response.json()}


def worker_process(cfg: Config, api_url: str) -> ManagedProcess:
    host, port = cfg.prefect.host, cfg.prefect.worker_port
    env = _env(cfg, api_url)
    env.update(PREFECT_WORKER_WEBSERVER_HOST=host, PREFECT_WORKER_WEBSERVER_PORT=str(port),
               PREFECT_WORKER_QUERY_SECONDS=str(cfg.prefect.worker_poll_s))
    return ManagedProcess(
        "worker",
        [prefect_bin(), "worker", "start", "--pool", cfg.prefect.work_pool, "--type", "process",
         "--with-healthcheck"],
        host=host,
        port=port,
        health_path="/health",
        setting="prefect.worker_port",
        state_dir=stack_dir(),
        startup_timeout_s=cfg.prefect.startup_timeout_s,
        env=env,
        cwd=stack_dir(),
    )
