"""Session fixtures for integration tests: a real Label Studio server and a Prefect test runtime.

Label Studio's first start on an empty data dir runs its migrations (about a minute on 2 cores). The
migrated data dir is built once into ``<project>/.cache/ls-template-<version>/`` (with the login it
was made with) and copied per test session, so later sessions start the server in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from castlab.config import PROJECT_ROOT, load_config
from castlab.labelstudio.connection import Credentials, load_credentials, load_or_create_credentials
from castlab.stack import LabelStudioServer, labelstudio_venv, labelstudio_version

TIMINGS_FILE = "timings.json"
_TIMINGS: dict[str, float] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LabelStudioFixture:
    url: str
    token: str
    workspace: Path
    data_dir: Path
    server: LabelStudioServer
    start_seconds: float
    template_built_seconds: float | None


def _startup_timeout() -> float:
    return float(load_config().labelstudio.startup_timeout_s)


def _template(version: str) -> tuple[Path, Credentials, float | None]:
    """The migrated template data dir for this Label Studio version (built on first use)."""
    cache = PROJECT_ROOT / ".cache" / f"ls-template-{version}"
    if (cache / "data" / "label_studio.sqlite3").is_file() and (cache / "credentials.json").is_file():
        return cache / "data", load_credentials(cache / "credentials.json"), None
    build = cache.with_name(f"{cache.name}.build-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    creds = load_or_create_credentials(build / "credentials.json")
    document_root = build / "document-root"
    document_root.mkdir()
    server = LabelStudioServer(
        build / "data", document_root, free_port(), "127.0.0.1", creds,
        startup_timeout_s=_startup_timeout(), state_dir=build,
    )  # fmt: skip
    started = time.monotonic()
    try:
        server.start()
        seconds = time.monotonic() - started
    finally:
        server.stop()
    shutil.rmtree(document_root)
    (build / TIMINGS_FILE).write_text(json.dumps({"template_build_seconds": round(seconds, 1)}) + "\n")
    try:
        build.rename(cache)
    except OSError:  # another session finished first: use its template
        shutil.rmtree(build, ignore_errors=True)
    return cache / "data", load_credentials(cache / "credentials.json"), seconds


@pytest.fixture(scope="session")
def ls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioFixture]:
    """A real Label Studio (from its own venv) on a free port; its document root is a tmp workspace.

    Sets ``CASTLAB_WORKSPACE`` to that workspace for the whole session.
    """
    venv = labelstudio_venv()
    if not (venv / "bin" / "label-studio").is_file():
        pytest.skip(f"no Label Studio venv at {venv} (make labelstudio-venv)")
    template, creds, built = _template(labelstudio_version(venv))
    session = tmp_path_factory.mktemp("labelstudio")
    workspace = tmp_path_factory.mktemp("workspace")
    previous = os.environ.get("CASTLAB_WORKSPACE")
    os.environ["CASTLAB_WORKSPACE"] = str(workspace)
    data_dir = session / "data"
    shutil.copytree(template, data_dir, symlinks=True)
    server = LabelStudioServer(
        data_dir, workspace, free_port(), "127.0.0.1", creds,
        startup_timeout_s=_startup_timeout(), state_dir=session,
    )  # fmt: skip
    started = time.monotonic()
    server.start()
    _TIMINGS["Label Studio start from the template (s)"] = time.monotonic() - started
    if built is not None:
        _TIMINGS["Label Studio template build, first start with migrations (s)"] = built
    fixture = LabelStudioFixture(
        url=server.url,
        token=creds.token,
        workspace=workspace,
        data_dir=data_dir,
        server=server,
        start_seconds=time.monotonic() - started,
        template_built_seconds=built,
    )
    try:
        yield fixture
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("CASTLAB_WORKSPACE", None)
        else:
            os.environ["CASTLAB_WORKSPACE"] = previous


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, seconds in _TIMINGS.items():
        terminalreporter.write_line(f"{name}: {seconds:.1f}")


@pytest.fixture(scope="session")
def prefect_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One Prefect test harness (temporary SQLite server) for every flow test of the session."""
    home = tmp_path_factory.mktemp("prefect-home")
    mp = pytest.MonkeyPatch()
    mp.delenv("PREFECT_API_URL", raising=False)
    mp.setenv("PREFECT_HOME", str(home))
    mp.setenv("PREFECT_LOCAL_STORAGE_PATH", str(home / "storage"))
    mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    mp.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from prefect.testing.utilities import prefect_test_harness

    try:
        with prefect_test_harness(server_startup_timeout=120):
            yield home
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def ls_env(ls_server, prefect_runtime):
    """Flows under the Prefect runtime, talking to the test Label Studio, with the tiny profile."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LABEL_STUDIO_URL", ls_server.url)
    mp.setenv("LABEL_STUDIO_API_KEY", ls_server.token)
    mp.setenv("CASTLAB_PROFILE", "tiny")
    yield ls_server
    mp.undo()
