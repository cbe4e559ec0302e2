"""Prefect runtime selection, done before `prefect` is imported.

Flows talk to the local Prefect server when it is up (or to ``PREFECT_API_URL`` when set);
otherwise they run under Prefect's ephemeral runtime with its home inside the workspace.
"""

from __future__ import annotations

import os

from castlab.config import Config
from castlab.workspace import stack_dir


def configure_prefect(cfg: Config) -> str:
    """Set Prefect's environment for this process; return "server <url>" or "ephemeral"."""
    home = stack_dir() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(home / "storage"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    if os.environ.get("PREFECT_API_URL"):
        return f"server {os.environ['PREFECT_API_URL']}"
    from castlab import stack

    url = stack.prefect_api_url(cfg)
    if url:
        os.environ["PREFECT_API_URL"] = url
        return f"server {url}"
    return "ephemeral"
