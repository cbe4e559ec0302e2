"""The shared secret Label Studio sends with every castlab webhook (header ``X-Castlab-Secret``).

From ``CASTLAB_WEBHOOK_SECRET``, else ``<workspace>/stack/webhook.secret`` (mode 0600, generated once). It never
appears in logs or summaries.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from castlab.errors import StackError
from castlab.workspace import stack_dir, write_private

HEADER = "X-Castlab-Secret"
ENV = "CASTLAB_WEBHOOK_SECRET"


def secret_path() -> Path:
    return stack_dir() / "webhook.secret"


def webhook_secret(create: bool = False) -> str | None:
    """The secret (env first, then the 0600 file); with `create`, a new file when there is none."""
    from_env = os.environ.get(ENV, "").strip()
    if from_env:
        return from_env
    path = secret_path()
    if path.is_file():
        if path.stat().st_mode & 0o077:
            raise StackError(f"{path}: the webhook secret must be readable by you only (chmod 600 {path})")
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    if not create:
        return None
    value = secrets.token_urlsafe(32)
    write_private(path, value + "\n")
    return value


def matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a received header with the secret."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
