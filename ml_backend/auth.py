"""Who may call the ML backend: HTTP basic auth on every endpoint when ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS``
are set (as HumanSignal's ``label_studio_ml`` does, ``/health`` included), required beyond loopback.

The check runs before routing, so a refused request reads no body, loads no model and calls nothing.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import secrets

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from castlab.errors import ConfigError
from castlab.labelstudio.backends import PASS_ENV, USER_ENV, BasicAuth

logger = logging.getLogger("ml_backend")

CHALLENGE = 'Basic realm="castlab ML backend"'


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything else (0.0.0.0 too)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name (e.g. a compose service): reachable from elsewhere


def check_bind(host: str, auth: BasicAuth | None) -> None:
    """ConfigError when the backend would listen beyond loopback without credentials."""
    if auth is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without HTTP basic auth: set {USER_ENV} and {PASS_ENV} "
            "(and give Label Studio the same credentials), or bind 127.0.0.1 (setting ml_backend.host / --host)"
        )


def authorized(auth: BasicAuth, authorization: str | None) -> bool:
    """Whether an ``Authorization`` header carries exactly these credentials (constant-time comparison)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, password = decoded.partition(b":")
    user_ok = secrets.compare_digest(user, auth.user.encode("ascii"))
    password_ok = secrets.compare_digest(password, auth.password.encode("ascii"))
    return bool(sep) and user_ok and password_ok


class BasicAuthMiddleware:
    """ASGI middleware: an HTTP request without the right credentials gets 401 and a ``WWW-Authenticate``."""

    def __init__(self, app: ASGIApp, auth: BasicAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (the app has no websocket route)
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        if authorized(self.auth, header):
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("?", 0)
        reason = "no credentials" if header is None else "wrong credentials"
        logger.warning("%s %s from %s -> 401: %s", scope.get("method"), scope.get("path"), client[0], reason)
        response = JSONResponse({"error": "authentication required"}, status_code=401,
                                headers={"WWW-Authenticate": CHALLENGE})
        await response(scope, receive, send)
