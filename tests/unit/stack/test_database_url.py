"""`castlab up` on an existing PostgreSQL: the URL, the two servers' environments, and no password anywhere shown."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from castlab.config import load_config
from castlab.errors import ConfigError, StackError
from castlab.labelstudio.connection import Credentials
from castlab.stack import services
from castlab.stack.database import configured_database, describe_databases, parse_database_url
from castlab.stack.labelstudio_server import LabelStudioServer

PASSWORD = "p@ss:w/rd%?#"
URL = "postgresql://castlab:p%40ss%3Aw%2Frd%25%3F%23@db.internal:6543"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ports_cfg():
    """The default config on free ports (nothing here may touch a real stack's ports)."""
    extra = {name: {"port": free_port()} for name in ("labelstudio", "prefect", "ml_backend", "reviews")}
    extra["prefect"]["worker_port"] = free_port()
    return load_config(extra=extra)


@pytest.fixture
def db_env(monkeypatch: pytest.MonkeyPatch, workspace: Path) -> None:
    monkeypatch.setenv("CASTLAB_DATABASE_URL", URL)
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", raising=False)


def test_url_parts_and_both_environments():
    db = parse_database_url(URL, "labelstudio", "prefect")
    assert (db.host, db.port, db.user, db.password) == ("db.internal", 6543, "castlab", PASSWORD)
    assert db.labelstudio_env() == {
        "LABEL_STUDIO_DJANGO_DB": "default", "LABEL_STUDIO_POSTGRE_NAME": "labelstudio",
        "LABEL_STUDIO_POSTGRE_USER": "castlab", "LABEL_STUDIO_POSTGRE_PASSWORD": PASSWORD,
        "LABEL_STUDIO_POSTGRE_HOST": "db.internal", "LABEL_STUDIO_POSTGRE_PORT": "6543",
    }
    assert db.prefect_env() == {"PREFECT_SERVER_DATABASE_CONNECTION_URL":
                                "postgresql+asyncpg://castlab:p%40ss%3Aw%2Frd%25%3F%23@db.internal:6543/prefect"}
    assert db.display("prefect") == "postgresql://castlab@db.internal:6543/prefect"
    assert PASSWORD not in repr(db)
    assert parse_database_url("postgres://u@h", "a", "b").port == 5432


@pytest.mark.parametrize("url, problem", [
    ("mysql://u:secret-pw@h:3306", "scheme"),
    ("postgresql://secret-pw@:5432", "user and a host"),
    ("postgresql://u:secret-pw@h:5432/labelstudio", "no database"),
    ("postgresql://u:secret-pw@h:port", "not a postgresql"),
])
def test_a_bad_url_is_refused_without_showing_it(url: str, problem: str):
    with pytest.raises(StackError) as err:
        parse_database_url(url, "labelstudio", "prefect")
    assert problem in str(err.value) and "CASTLAB_DATABASE_URL" in str(err.value)
    assert "secret-pw" not in str(err.value)


def test_empty_is_sqlite_and_the_environment_wins_over_the_setting(monkeypatch, workspace):
    monkeypatch.delenv("CASTLAB_DATABASE_URL", raising=False)
    assert configured_database(load_config()) is None
    assert describe_databases(load_config()) == {"labelstudio": "sqlite", "prefect": "sqlite"}
    cfg = load_config(extra={"database": {"url": "postgresql://reader@config-host:5432", "prefect_db": "flows"}})
    assert configured_database(cfg).host == "config-host"
    monkeypatch.setenv("CASTLAB_DATABASE_URL", URL)
    db = configured_database(cfg)
    assert (db.host, db.prefect_db) == ("db.internal", "flows")


def test_a_password_in_a_config_file_is_refused_without_showing_it():
    with pytest.raises(ConfigError) as err:
        load_config(extra={"database": {"url": "postgresql://u:secret-pw@h:5432"}})
    assert "database.url" in str(err.value) and "must not hold a password" in str(err.value)
    assert "secret-pw" not in str(err.value)


def test_label_studio_gets_the_database_in_its_environment(tmp_path: Path):
    db = parse_database_url(URL, "labelstudio", "prefect")
    server = LabelStudioServer(tmp_path / "data", tmp_path, 8, "127.0.0.1", Credentials("u", "p", "t"),
                               startup_timeout_s=1, venv=tmp_path, database=db)
    assert server.process.env["LABEL_STUDIO_POSTGRE_PASSWORD"] == PASSWORD
    assert PASSWORD not in " ".join(server.process.command)
    plain = LabelStudioServer(tmp_path / "data", tmp_path, 8, "127.0.0.1", Credentials("u", "p", "t"),
                              startup_timeout_s=1, venv=tmp_path)
    assert "LABEL_STUDIO_DJANGO_DB" not in plain.process.env


def test_stack_resolves_the_database_for_a_start_only(db_env):
    cfg = ports_cfg()
    assert services._labelstudio(cfg, create_credentials=True).database.host == "db.internal"
    assert services._labelstudio(cfg).database is None  # status / down
    prefect = services._prefect(cfg)
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in prefect.env
    prefect.prepare()  # what spawn runs right before the server starts
    assert prefect.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].endswith("@db.internal:6543/prefect")


def test_status_names_the_databases_without_the_password(db_env):
    status = services.status(ports_cfg())
    assert status["labelstudio"]["database"] == "postgresql://castlab@db.internal:6543/labelstudio"
    assert status["prefect"]["database"] == "postgresql://castlab@db.internal:6543/prefect"
    assert PASSWORD not in json.dumps(status) and "p%40ss" not in json.dumps(status)


def test_status_and_down_work_with_a_broken_url(monkeypatch, workspace):
    monkeypatch.setenv("CASTLAB_DATABASE_URL", "postgresql://u:secret-pw@h:port")
    cfg = ports_cfg()
    status = services.status(cfg)
    assert "CASTLAB_DATABASE_URL" in status["prefect"]["database"] and "secret-pw" not in json.dumps(status)
    assert services.down(cfg)["labelstudio"] == "not running"
    with pytest.raises(StackError, match="CASTLAB_DATABASE_URL"):
        services.up(cfg, ("prefect",))
    assert not list((workspace / "stack").glob("*.pid"))
