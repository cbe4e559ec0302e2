"""Who may call the ML backend: HTTP basic auth on every endpoint, refused binds beyond loopback, and castlab's
Label Studio connection carrying the credentials (``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS``)."""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from label_studio_sdk.core.api_error import ApiError

from castlab.config import load_config
from castlab.errors import ConfigError, StackError
from castlab.labelstudio import backends
from castlab.labelstudio.backends import BasicAuth, backend_auth, ensure_ml_backend
from ml_backend import __main__ as backend_main
from ml_backend.app import create_app
from ml_backend.auth import authorized, check_bind, is_loopback

USER, PASSWORD = "castlab", "pw-Kq3-secret"
AUTH = BasicAuth(USER, PASSWORD)
MASKS_XML = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="character"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="character"/></KeyPointLabels>
</View>"""
REMOTE_TASK = {"id": 1, "data": {"image": "http://labelstudio.example/data/upload/1/a.png"}}
ENDPOINTS = [
    ("GET", "/health", None),
    ("GET", "/", None),
    ("POST", "/setup", {"project": "1.1700000000", "schema": MASKS_XML}),
    ("POST", "/predict", {"tasks": [], "label_config": MASKS_XML}),
    ("POST", "/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": MASKS_XML}}),
]


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


BAD_HEADERS = {
    "none": {},
    "wrong password": _basic(USER, "pw-Kq3-secreT"),
    "wrong user": _basic("admin", PASSWORD),
    "empty": _basic("", ""),
    "not base64": {"Authorization": "Basic %%%"},
    "no colon": {"Authorization": "Basic " + base64.b64encode(f"{USER}{PASSWORD}".encode()).decode()},
    "bearer": {"Authorization": f"Bearer {PASSWORD}"},
}


@pytest.fixture
def spied(tmp_path, monkeypatch) -> Iterator[tuple[TestClient, list[str]]]:
    """An app with basic auth whose model loaders, Label Studio source and protocol calls all record a call."""
    monkeypatch.setenv("CASTLAB_WORKSPACE", str(tmp_path))
    calls: list[str] = []

    def spy(name: str, result: Any = None) -> Any:
        def record(*_: Any, **__: Any) -> Any:
            calls.append(name)
            return result
        return record

    app = create_app(
        load_config(profile="tiny"),
        auth=AUTH,
        segmenter_factory=spy("segmenter", SimpleNamespace(model_version="spy-1")),
        labelstudio=spy("labelstudio"),
        identity_loader=spy("identity", {}),
        captioner_factory=spy("captioner"),
        embedder_factory=spy("embedder"),
    )
    backend = app.state.backend
    for method in ("health", "setup", "predict", "webhook"):
        original = getattr(backend, method)
        monkeypatch.setattr(backend, method, lambda *a, _m=method, _o=original, **k: (calls.append(_m), _o(*a, **k))[1])
    with TestClient(app) as client:
        yield client, calls


@pytest.mark.parametrize("headers", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_a_request_without_the_right_credentials_gets_401_and_touches_nothing(spied, method, path, body, headers):
    client, calls = spied
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert response.json() == {"error": "authentication required"}
    assert calls == []


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_the_right_credentials_reach_every_endpoint(spied, method, path, body):
    client, calls = spied
    response = client.request(method, path, json=body, headers=_basic(USER, PASSWORD))
    assert response.status_code == 200, response.text
    assert calls and calls[0] == ("health" if path == "/" else path.strip("/"))


def test_a_refused_predict_loads_no_model_and_calls_no_label_studio(spied):
    """The same request is refused without credentials (nothing recorded) and, with them, does load the
    segmenter and ask for Label Studio: the spies would have seen it."""
    client, calls = spied
    body = {"tasks": [REMOTE_TASK], "label_config": MASKS_XML, "params": {"context": None}}
    for headers in BAD_HEADERS.values():
        assert client.post("/predict", json=body, headers=headers).status_code == 401
    assert calls == []
    client.post("/predict", json=body, headers=_basic(USER, PASSWORD))
    assert {"predict", "segmenter", "labelstudio"} <= set(calls)


def test_refusals_never_log_a_password(spied, caplog):
    client, _ = spied
    with caplog.at_level(logging.DEBUG):
        client.post("/setup", json={}, headers=_basic(USER, "guess-Zz9"))
        client.get("/health")
    assert "401" in caplog.text and "wrong credentials" in caplog.text and "no credentials" in caplog.text
    assert "guess-Zz9" not in caplog.text and PASSWORD not in caplog.text
    assert PASSWORD not in repr(AUTH)


def test_without_credentials_the_backend_is_open_as_before(tmp_path, monkeypatch):
    monkeypatch.setenv("CASTLAB_WORKSPACE", str(tmp_path))
    app = create_app(load_config(profile="tiny"), segmenter_factory=lambda cfg: pytest.fail("model loaded"))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.post("/webhook", json={"action": "PING"}).status_code == 200


def test_authorized_compares_exactly():
    assert authorized(AUTH, _basic(USER, PASSWORD)["Authorization"])
    assert authorized(AUTH, "basic " + _basic(USER, PASSWORD)["Authorization"].split()[1])  # scheme is case-free
    assert not authorized(AUTH, None)
    assert not authorized(AUTH, _basic(USER, PASSWORD + "x")["Authorization"])
    assert not authorized(AUTH, _basic(USER + "x", PASSWORD)["Authorization"])
    assert not authorized(AUTH, "Basic " + base64.b64encode("castlab:pw-Kq3-secrét".encode()).decode())
    colon = BasicAuth("u", "a:b")
    assert authorized(colon, _basic("u", "a:b")["Authorization"])  # only the first ':' splits


# -- binding beyond loopback -------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST", "::1", "[::1]"])
def test_loopback_needs_no_credentials(host):
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "ml-backend", "castlab.example"])
def test_beyond_loopback_credentials_are_required(host):
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="BASIC_AUTH_USER and BASIC_AUTH_PASS"):
        check_bind(host, None)
    check_bind(host, AUTH)


def test_main_refuses_a_non_loopback_host_without_credentials_before_loading_anything(monkeypatch, tmp_path):
    monkeypatch.setenv("CASTLAB_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)
    monkeypatch.setattr(backend_main, "create_app", lambda *a, **k: pytest.fail("the app was built"))
    monkeypatch.setattr(backend_main.uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    with pytest.raises(SystemExit, match="BASIC_AUTH_USER and BASIC_AUTH_PASS") as refused:
        backend_main.main(["--host", "0.0.0.0", "--port", "1", "--profile", "tiny"])
    assert "refusing to listen on 0.0.0.0" in str(refused.value)
    monkeypatch.setenv("BASIC_AUTH_USER", USER)  # half a pair is refused everywhere, loopback too
    with pytest.raises(SystemExit, match="BASIC_AUTH_PASS is not set"):
        backend_main.main(["--host", "127.0.0.1", "--port", "1", "--profile", "tiny"])


def test_main_passes_the_credentials_to_the_app(monkeypatch, tmp_path):
    monkeypatch.setenv("CASTLAB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("BASIC_AUTH_USER", USER)
    monkeypatch.setenv("BASIC_AUTH_PASS", PASSWORD)
    seen: dict[str, Any] = {}

    def fake_create_app(cfg: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return SimpleNamespace(state=SimpleNamespace(backend=SimpleNamespace(warm_up=lambda: None)))

    monkeypatch.setattr(backend_main, "create_app", fake_create_app)
    monkeypatch.setattr(backend_main.uvicorn, "run", lambda app, host, port, **k: seen.update(host=host))
    backend_main.main(["--host", "0.0.0.0", "--port", "1", "--profile", "tiny"])
    assert seen["auth"] == AUTH and seen["host"] == "0.0.0.0"


# -- the credentials from the environment --------------------------------------------------------------------


def test_backend_auth_from_the_environment():
    assert backend_auth({}) is None
    assert backend_auth({"BASIC_AUTH_USER": "", "BASIC_AUTH_PASS": ""}) is None
    assert backend_auth({"BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": PASSWORD}) == AUTH
    with pytest.raises(ConfigError, match="BASIC_AUTH_PASS is not set") as half:
        backend_auth({"BASIC_AUTH_USER": USER})
    with pytest.raises(ConfigError, match="BASIC_AUTH_USER is not set"):
        backend_auth({"BASIC_AUTH_PASS": PASSWORD})
    with pytest.raises(ConfigError, match="must not contain ':'"):
        backend_auth({"BASIC_AUTH_USER": "a:b", "BASIC_AUTH_PASS": PASSWORD})
    with pytest.raises(ConfigError, match="BASIC_AUTH_PASS must be printable ASCII") as non_ascii:
        backend_auth({"BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": "pässwort"})
    assert "pässwort" not in str(non_ascii.value) and USER not in str(half.value)


# -- castlab's connection in Label Studio (a fake SDK client) ----------------------------------------------


class _FakeML:
    def __init__(self, backends: list[dict[str, Any]], refuse: bool = False) -> None:
        self.backends = [SimpleNamespace(**b) for b in backends]
        self.created: list[dict[str, Any]] = []
        self.updated: list[dict[str, Any]] = []
        self.refuse = refuse

    def list(self, project: int) -> list[Any]:
        return [b for b in self.backends if b.project == project]

    def create(self, **kwargs: Any) -> Any:
        if self.refuse:
            raise ApiError(status_code=400, headers={}, body={"validation_errors": {"non_field_errors": [
                "Able to connect to ML Server, but authentication parameters were either not provided or are "
                "incorrect."]}})
        self.created.append(kwargs)
        self.backends.append(SimpleNamespace(id=7, **kwargs))
        return self.backends[-1]

    def update(self, id: int, **kwargs: Any) -> Any:
        self.updated.append({"id": id, **kwargs})
        return SimpleNamespace(id=id, **kwargs)


class _FakeWebhooks:
    def __init__(self, hooks: list[dict[str, Any]]) -> None:
        self.hooks = [SimpleNamespace(**h) for h in hooks]
        self.updated: list[dict[str, Any]] = []

    def list(self, project: str) -> list[Any]:
        return list(self.hooks)

    def update(self, id: int, **kwargs: Any) -> Any:
        self.updated.append({"id": id, **kwargs})


URL = "http://ml-backend:9090"


def _ls(backends: list[dict[str, Any]], headers: dict[str, str] | None = None, refuse: bool = False) -> Any:
    hook = {"id": 3, "project": 1, "url": URL + "/webhook", "headers": headers or {}}
    return SimpleNamespace(ml=_FakeML(backends, refuse), webhooks=_FakeWebhooks([hook]))


def _existing(**fields: Any) -> dict[str, Any]:
    return {"id": 5, "project": 1, "url": URL + "/", "state": "CO", "auth_method": "NONE", "basic_auth_user": "",
            "basic_auth_pass_is_set": False, **fields}


@pytest.fixture
def with_credentials(monkeypatch) -> None:
    monkeypatch.setenv("BASIC_AUTH_USER", USER)
    monkeypatch.setenv("BASIC_AUTH_PASS", PASSWORD)


@pytest.fixture
def without_credentials(monkeypatch) -> None:
    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)


def test_a_new_connection_carries_the_credentials(with_credentials):
    ls = _ls([])
    assert ensure_ml_backend(ls, 1, URL) == 7
    assert ls.ml.created[0]["auth_method"] == "BASIC_AUTH"
    assert (ls.ml.created[0]["basic_auth_user"], ls.ml.created[0]["basic_auth_pass"]) == (USER, PASSWORD)
    assert ls.webhooks.updated == [{"id": 3, "url": URL + "/webhook", "headers": {"Authorization": AUTH.header()}}]


def test_without_credentials_a_new_connection_is_as_before(without_credentials):
    ls = _ls([])
    ensure_ml_backend(ls, 1, URL)
    assert ls.ml.created == [{"url": URL, "project": 1, "title": "castlab", "is_interactive": True}]
    assert ls.webhooks.updated == []


@pytest.mark.parametrize("existing", [
    _existing(),
    _existing(auth_method="BASIC_AUTH", basic_auth_user="someone", basic_auth_pass_is_set=True),
    _existing(auth_method="BASIC_AUTH", basic_auth_user=USER, basic_auth_pass_is_set=False),
    _existing(auth_method="BASIC_AUTH", basic_auth_user=USER, basic_auth_pass_is_set=True, state="DI"),
], ids=["no auth", "other user", "no password", "disconnected"])
def test_a_connection_whose_auth_differs_is_updated(with_credentials, existing):
    ls = _ls([existing])
    assert ensure_ml_backend(ls, 1, URL) == 5
    assert ls.ml.created == []
    assert ls.ml.updated == [{"id": 5, "url": URL + "/", "project": 1, "auth_method": "BASIC_AUTH",
                              "basic_auth_user": USER, "basic_auth_pass": PASSWORD}]


def test_a_connection_with_the_same_auth_is_reused_untouched(with_credentials):
    ls = _ls([_existing(auth_method="BASIC_AUTH", basic_auth_user=USER, basic_auth_pass_is_set=True)],
             headers={"Authorization": AUTH.header(), "X-Other": "1"})
    assert ensure_ml_backend(ls, 1, URL) == 5
    assert ls.ml.updated == [] and ls.webhooks.updated == []


def test_credentials_removed_from_the_environment_are_removed_from_the_connection(without_credentials):
    ls = _ls([_existing(auth_method="BASIC_AUTH", basic_auth_user=USER, basic_auth_pass_is_set=True)],
             headers={"Authorization": AUTH.header(), "X-Other": "1"})
    ensure_ml_backend(ls, 1, URL)
    assert ls.ml.updated == [{"id": 5, "url": URL + "/", "project": 1, "auth_method": "NONE", "basic_auth_user": ""}]
    assert ls.webhooks.updated[0]["headers"] == {"X-Other": "1"}


def test_a_refused_connection_is_a_stack_error_without_the_password(with_credentials):
    with pytest.raises(StackError, match="authentication parameters") as refused:
        ensure_ml_backend(_ls([], refuse=True), 1, URL)
    assert PASSWORD not in str(refused.value)


# -- the managed stack's health probe ----------------------------------------------------------------------


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        ok = self.headers.get("Authorization") == AUTH.header()
        self.send_response(200 if ok else 401)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_the_stack_probes_the_backend_with_the_credentials(monkeypatch, tmp_path):
    from castlab.stack import services

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("CASTLAB_WORKSPACE", str(tmp_path))
        cfg = load_config(profile="tiny", extra={"ml_backend": {"port": server.server_address[1]}})
        monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
        monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)
        assert not services._ml_backend(cfg).healthy()
        monkeypatch.setenv("BASIC_AUTH_USER", USER)
        monkeypatch.setenv("BASIC_AUTH_PASS", PASSWORD)
        process = services._ml_backend(cfg)
        assert (process.env or {})["BASIC_AUTH_PASS"] == PASSWORD  # the backend process gets the pair
        assert process.healthy()
    finally:
        server.shutdown()
        server.server_close()


def test_backends_module_names_the_variables():
    assert (backends.USER_ENV, backends.PASS_ENV) == ("BASIC_AUTH_USER", "BASIC_AUTH_PASS")
