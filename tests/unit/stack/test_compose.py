"""docker-compose.yml cannot run here (no Docker engine): check it matches what castlab reads."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from castlab.config import PROJECT_ROOT, load_config

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
CASTLAB_SERVICES = ("prefect-worker", "ml-backend")
ENV_READ = re.compile(r"""(?:environ(?:\.get|\.setdefault)?\(|environ\[|getenv\()\s*["']([A-Z0-9_]+)["']""")
ENV_CONSTANT = re.compile(r"""^[A-Z_]*ENV\s*=\s*["']([A-Z0-9_]+)["']""", re.MULTILINE)  # USER_ENV = "BASIC_AUTH_USER"
PREFECT_YAML_VAR = re.compile(r"\{\{\s*\$([A-Z0-9_]+)\s*\}\}")  # prefect.yaml reads these at deploy time


def env_names_read_by_code() -> set[str]:
    names = set(PREFECT_YAML_VAR.findall((PROJECT_ROOT / "prefect.yaml").read_text(encoding="utf-8")))
    for package in ("castlab", "flows", "ml_backend", "trainers"):
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            names.update(ENV_READ.findall(text), ENV_CONSTANT.findall(text))
    return names


def container_port(service: str) -> int:
    (mapping,) = SERVICES[service]["ports"]
    host_ip, host_port, port = mapping.split(":")
    assert host_ip == "127.0.0.1", f"{service} must publish on 127.0.0.1 only"
    assert host_port == port
    return int(port)


def test_services_and_healthchecks():
    assert set(SERVICES) == {"postgres", "label-studio", "prefect-server", "prefect-worker", "receiver", "ml-backend"}
    for name, service in SERVICES.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"


def test_ports_match_castlab_defaults():
    cfg = load_config()
    assert container_port("label-studio") == cfg.labelstudio.port
    assert container_port("prefect-server") == cfg.prefect.port
    assert container_port("ml-backend") == cfg.ml_backend.port
    backend_cmd = SERVICES["ml-backend"]["command"]
    assert backend_cmd[backend_cmd.index("--port") + 1] == str(cfg.ml_backend.port)


@pytest.mark.parametrize("service", CASTLAB_SERVICES)
def test_castlab_services_env_is_what_castlab_reads(service: str):
    env = SERVICES[service]["environment"]
    read = env_names_read_by_code()
    for name in env:
        assert name in read, f"{service} sets {name}, which no castlab code reads"
    ls_url = urlparse(env["LABEL_STUDIO_URL"])
    assert ls_url.hostname == "label-studio" and ls_url.port == container_port("label-studio")
    prefect_url = urlparse(env["PREFECT_API_URL"])
    assert prefect_url.hostname == "prefect-server" and prefect_url.port == container_port("prefect-server")
    assert prefect_url.path == "/api"


def test_one_shared_media_volume_is_the_document_root():
    ls_env = SERVICES["label-studio"]["environment"]
    root = ls_env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    assert ls_env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert ls_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    for service in ("label-studio", *CASTLAB_SERVICES):
        assert f"media:{root}" in SERVICES[service]["volumes"], f"{service} does not mount the media volume"
    for service in CASTLAB_SERVICES:
        assert SERVICES[service]["environment"]["CASTLAB_WORKSPACE"] == root
    assert "media" in COMPOSE["volumes"]


def test_token_shared_between_label_studio_and_castlab():
    ls_token = SERVICES["label-studio"]["environment"]["LABEL_STUDIO_USER_TOKEN"]
    for service in CASTLAB_SERVICES:
        assert "CASTLAB_LS_TOKEN" in SERVICES[service]["environment"]["LABEL_STUDIO_API_KEY"]
    assert "CASTLAB_LS_TOKEN" in ls_token
    assert not Path(PROJECT_ROOT / ".env").exists() or ".env" in (PROJECT_ROOT / ".gitignore").read_text()


def test_prefect_server_runs_on_its_own_postgres_database():
    url = urlparse(SERVICES["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    assert url.scheme == "postgresql+asyncpg" and url.hostname == "postgres" and url.path == "/prefect"
    assert url.username == SERVICES["postgres"]["environment"]["POSTGRES_USER"]
    assert "POSTGRES_PASSWORD" in url.password
    assert "postgres" in SERVICES["prefect-server"]["depends_on"]
    (init,) = [v for v in SERVICES["postgres"]["volumes"] if "/docker-entrypoint-initdb.d/" in v]
    script = (PROJECT_ROOT / init.split(":")[0]).read_text()
    assert "CREATE DATABASE prefect" in script and "pg_trgm" in script
    assert SERVICES["label-studio"]["environment"]["POSTGRE_NAME"] == "labelstudio"


def test_receiver_is_reachable_on_the_compose_network_only():
    receiver = SERVICES["receiver"]
    command = receiver["command"]
    assert command[:3] == ["python", "-m", "flows.receiver"]
    assert command[command.index("--port") + 1] == str(load_config().reviews.port)
    assert "ports" not in receiver
    assert "CASTLAB_WEBHOOK_SECRET" in receiver["environment"]["CASTLAB_WEBHOOK_SECRET"]
    assert urlparse(receiver["environment"]["PREFECT_API_URL"]).hostname == "prefect-server"
    for name in receiver["environment"]:
        assert name in env_names_read_by_code()


def test_worker_deploys_before_it_starts():
    worker = SERVICES["prefect-worker"]
    script = worker["command"][-1]
    assert script.index("work-pool create") < script.index("deploy --all") < script.index("worker start")
    assert worker["environment"]["CASTLAB_WORK_POOL"] == load_config().prefect.work_pool
    assert worker["environment"]["CASTLAB_PROJECT_ROOT"] == "/app"


def test_secrets_come_from_env_file():
    shared = COMPOSE["x-castlab-env"]
    for name, key in (("CASTLAB_WEBHOOK_SECRET", "CASTLAB_WEBHOOK_SECRET"), ("BASIC_AUTH_USER", "CASTLAB_ML_USER"),
                      ("BASIC_AUTH_PASS", "CASTLAB_ML_PASSWORD")):
        assert shared[name] == f"${{{key}:?set {key} in .env}}"
        assert SERVICES["ml-backend"]["environment"][name] == shared[name]
