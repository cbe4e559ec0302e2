"""`castlab up` on PostgreSQL: Label Studio and the Prefect server on a throwaway cluster (CASTLAB_DATABASE_URL).

castlab creates a Label Studio project and imports tasks through its client, and a flow runs against the Prefect
server; then psql finds the project, its tasks and the flow run in the two databases, and no SQLite file exists.
The cluster's password holds characters a URL must quote, and no log, status or error may show it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from postgres_cluster import PostgresCluster, free_port

from castlab import stack
from castlab.config import Config, load_config
from castlab.labelstudio.client import connect, ensure_project, push_tasks
from castlab.labelstudio.connection import labelstudio_connection
from castlab.stack import labelstudio_venv
from castlab.workspace import stack_dir

pytestmark = pytest.mark.integration

SERVICES = ("labelstudio", "prefect")
LABEL_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="verdict" toName="text"><Choice value="keep"/><Choice value="drop"/></Choices>
</View>"""


@dataclass
class PostgresStack:
    cfg: Config
    cluster: PostgresCluster
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture
def postgres() -> Iterator[PostgresCluster]:
    with PostgresCluster(databases=("labelstudio", "prefect")) as cluster:
        yield cluster


@pytest.fixture
def pg_stack(postgres: PostgresCluster, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresStack]:
    """Label Studio + the Prefect server of `castlab up`, on free ports, both on `postgres`; stopped afterwards."""
    if not (labelstudio_venv() / "bin" / "label-studio").is_file():
        pytest.skip(f"no Label Studio venv at {labelstudio_venv()} (make labelstudio-venv)")
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_API_KEY_FILE", "PREFECT_API_URL",
                 "PREFECT_SERVER_DATABASE_CONNECTION_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CASTLAB_DATABASE_URL", postgres.url)
    cfg = load_config(extra={"labelstudio": {"host": "127.0.0.1", "port": free_port()},
                             "prefect": {"host": "127.0.0.1", "port": free_port()}})
    result = PostgresStack(cfg, postgres, {"PostgreSQL cluster (initdb + start + databases)": postgres.start_seconds})
    started = time.monotonic()
    try:
        stack.up(cfg, SERVICES)
        result.timings["Label Studio + Prefect server start, migrations on PostgreSQL"] = time.monotonic() - started
        yield result
    finally:
        stack.down(cfg, SERVICES)


def _run_tiny_flow(api_url: str, home: Path) -> str:
    """Run a one-task flow against the Prefect server at `api_url`; its flow run id."""
    from prefect import flow, task
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow(name="castlab-postgres-check")
    def check(x: int) -> int:
        return double(x)

    with temporary_settings({PREFECT_API_URL: api_url, PREFECT_HOME: home}):
        state = check(21, return_state=True)
        APILogWorker.drain_all(timeout=10)  # the run's logs and events reach the server before it stops
        EventsWorker.drain_all(timeout=10)
    assert state.is_completed() and state.result() == 42
    return str(state.state_details.flow_run_id)


def test_labelstudio_and_prefect_server_keep_their_data_in_postgres(pg_stack: PostgresStack, workspace: Path):
    cfg, pg = pg_stack.cfg, pg_stack.cluster
    status = stack.status(cfg)
    assert status["labelstudio"]["healthy"] and status["prefect"]["healthy"]
    assert status["labelstudio"]["database"] == f"postgresql://castlab@127.0.0.1:{pg.port}/labelstudio"
    assert status["prefect"]["database"] == f"postgresql://castlab@127.0.0.1:{pg.port}/prefect"

    started = time.monotonic()
    ls = connect(*labelstudio_connection(cfg))
    project_id = ensure_project(ls, "castlab on postgres", LABEL_CONFIG)
    items = [{"data": {"text": f"frame {i}", "castlab_key": f"key-{i}"}} for i in range(3)]
    pushed = push_tasks(ls, project_id, items)
    assert sorted(pushed.created) == ["key-0", "key-1", "key-2"]
    assert push_tasks(ls, project_id, items).created == []  # castlab's keys are read back from PostgreSQL
    pg_stack.timings["Label Studio project + 3 tasks through castlab's client"] = time.monotonic() - started

    started = time.monotonic()
    api = f"{status['prefect']['url']}/api"
    run_id = _run_tiny_flow(api, stack_dir() / "prefect")
    run = requests.get(f"{api}/flow_runs/{run_id}", timeout=30).json()
    assert run["state_type"] == "COMPLETED"
    pg_stack.timings["Prefect flow run against the server"] = time.monotonic() - started

    assert pg.psql("labelstudio", f"SELECT title FROM project WHERE id = {project_id}") == "castlab on postgres"
    keys = pg.psql("labelstudio", f"SELECT data->>'castlab_key' FROM task WHERE project_id = {project_id} "
                                  "ORDER BY 1")
    assert keys.split() == ["key-0", "key-1", "key-2"]
    row = pg.psql("prefect", f"SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
                             f"WHERE r.id = '{run_id}'")
    assert row == "castlab-postgres-check|COMPLETED"
    assert not (stack_dir() / "labelstudio" / "label_studio.sqlite3").exists()
    assert not list((stack_dir() / "prefect").glob("*.db"))

    secrets = {pg.password, quote(pg.password, safe="")}
    shown = [json.dumps(status), *(p.read_text(errors="replace") for p in stack_dir().glob("*.log"))]
    assert not [s for s in secrets for text in shown if s in text], "the database password leaked"
    for name, seconds in pg_stack.timings.items():
        print(f"{name}: {seconds:.1f} s")
