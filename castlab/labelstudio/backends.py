"""Connect a castlab ML backend to a Label Studio project and call it the way Label Studio does.

The backend's HTTP basic-auth credentials come from ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS`` (the names
HumanSignal's ML backends read): the backend requires them when both are set, and castlab's connection hands
them to Label Studio, which sends them on every call to the backend.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from label_studio_sdk.core.api_error import ApiError

from castlab.errors import ConfigError, StackError
from castlab.labelstudio.client import _api_problem

USER_ENV = "BASIC_AUTH_USER"
PASS_ENV = "BASIC_AUTH_PASS"


@dataclass(frozen=True)
class BasicAuth:
    """The ML backend's basic-auth credentials (the password never shows in a repr)."""

    user: str
    password: str = field(repr=False)

    def header(self) -> str:
        """The ``Authorization`` header value that carries these credentials."""
        token = base64.b64encode(f"{self.user}:{self.password}".encode("ascii")).decode("ascii")
        return f"Basic {token}"


def backend_auth(environ: Mapping[str, str] | None = None) -> BasicAuth | None:
    """The credentials from ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS``; None when neither is set (empty = unset).

    ConfigError when only one is set, or a value is not printable ASCII, or the user contains ``:``
    (basic auth cannot carry it); the message names the variable, never the password.
    """
    env = os.environ if environ is None else environ
    user, password = env.get(USER_ENV, ""), env.get(PASS_ENV, "")
    if not user and not password:
        return None
    missing = [name for name, value in ((USER_ENV, user), (PASS_ENV, password)) if not value]
    if missing:
        raise ConfigError(f"{missing[0]} is not set: the ML backend's basic auth needs both {USER_ENV} and {PASS_ENV}")
    for name, value in ((USER_ENV, user), (PASS_ENV, password)):
        if not (value.isascii() and value.isprintable()):
            raise ConfigError(f"{name} must be printable ASCII (HTTP clients encode basic auth differently)")
    if ":" in user:
        raise ConfigError(f"{USER_ENV} must not contain ':' (HTTP basic auth cannot carry it)")
    return BasicAuth(user, password)


def _auth_fields(auth: BasicAuth | None) -> dict[str, Any]:
    if auth is None:
        return {"auth_method": "NONE", "basic_auth_user": ""}  # an empty user: Label Studio sends no auth
    return {"auth_method": "BASIC_AUTH", "basic_auth_user": auth.user, "basic_auth_pass": auth.password}


def _auth_differs(backend: Any, auth: BasicAuth | None) -> bool:
    method, user = getattr(backend, "auth_method", None) or "NONE", getattr(backend, "basic_auth_user", None) or ""
    if auth is None:
        return method != "NONE" or bool(user)
    # the stored password cannot be read back: a disconnected connection may hold an old one
    return (method != "BASIC_AUTH" or user != auth.user or not getattr(backend, "basic_auth_pass_is_set", False)
            or getattr(backend, "state", None) == "DI")


def _ensure_webhook_auth(ls: Any, project_id: int, url: str, auth: BasicAuth | None) -> None:
    """Label Studio's own webhook to ``<url>/webhook`` (made with the connection) carries the credentials too."""
    webhook_url = url.rstrip("/") + "/webhook"
    for hook in ls.webhooks.list(project=str(project_id)):
        if str(hook.url).rstrip("/") != webhook_url or int(hook.project or 0) != int(project_id):
            continue
        current = dict(hook.headers or {})
        wanted = {k: v for k, v in current.items() if k.lower() != "authorization"}
        if auth is not None:
            wanted["Authorization"] = auth.header()
        if wanted != current:
            ls.webhooks.update(id=int(hook.id), url=hook.url, headers=wanted)


def ensure_ml_backend(ls: Any, project_id: int, url: str, title: str = "castlab") -> int:
    """Connect the backend at `url` to the project once (re-running reuses the connection).

    With ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS`` set, the connection and Label Studio's webhook to the
    backend carry them; an existing connection whose auth differs (or that Label Studio reports disconnected
    while credentials are set) is updated. Label Studio checks the backend (health, setup) on both: a refusal,
    such as a backend that wants credentials it was not given, is a StackError.
    """
    auth = backend_auth()
    try:
        for backend in ls.ml.list(project=project_id):
            if str(getattr(backend, "url", "")).rstrip("/") == url.rstrip("/"):
                if _auth_differs(backend, auth):
                    ls.ml.update(id=int(backend.id), url=backend.url, project=project_id, **_auth_fields(auth))
                _ensure_webhook_auth(ls, project_id, str(backend.url), auth)
                return int(backend.id)
        fields = _auth_fields(auth) if auth is not None else {}
        backend = ls.ml.create(url=url, project=project_id, title=title, is_interactive=True, **fields)
        _ensure_webhook_auth(ls, project_id, url, auth)
    except ApiError as exc:
        raise StackError(f"Label Studio refused the ML backend {url} on project {project_id}: {_api_problem(exc)}") \
            from exc
    return int(backend.id)


def retrieve_predictions(base_url: str, token: str, project_id: int, task_ids: list[int]) -> dict[str, Any]:
    """Run Label Studio's ``retrieve_tasks_predictions`` action (the backend predicts each task)."""
    response = requests.post(
        f"{base_url.rstrip('/')}/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project_id},
        json={"selectedItems": {"all": False, "included": task_ids}},
        headers={"Authorization": f"Token {token}"},
        timeout=600,
    )
    if response.status_code >= 400:
        raise StackError(f"retrieve_tasks_predictions on project {project_id} failed: HTTP {response.status_code}")
    return response.json()


def interactive_annotate(base_url: str, token: str, backend_id: int, task_id: int, context: dict) -> dict[str, Any]:
    """Ask Label Studio to forward an interactive (smart tool) request to the backend; return its answer."""
    response = requests.post(
        f"{base_url.rstrip('/')}/api/ml/{backend_id}/interactive-annotating",
        json={"task": task_id, "context": context},
        headers={"Authorization": f"Token {token}"},
        timeout=120,
    )
    if response.status_code >= 400:
        raise StackError(f"interactive annotating on task {task_id} failed: HTTP {response.status_code}")
    return response.json()
