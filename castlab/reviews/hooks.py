"""Point a castlab project's webhooks at the receiver, with the shared secret (when the receiver is running)."""

from __future__ import annotations

import logging
import os
from typing import Any

from castlab.config import Config

logger = logging.getLogger(__name__)
ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]
URL_ENV = "CASTLAB_RECEIVER_URL"  # the receiver as Label Studio reaches it, e.g. http://receiver:4202 (compose)


def receiver_url(cfg: Config) -> str | None:
    """The receiver's webhook URL when it answers, else None: ``CASTLAB_RECEIVER_URL`` when set (a receiver on
    another host or container), else the local stack's receiver (``reviews.host``/``reviews.port``)."""
    base = os.environ.get(URL_ENV, "").strip().rstrip("/")
    if base:
        import requests

        try:
            healthy = requests.get(f"{base}/health", timeout=2).status_code == 200
        except requests.RequestException:
            healthy = False
        return f"{base}/labelstudio" if healthy else None
    from castlab.stack.services import receiver_process

    proc = receiver_process(cfg)
    return f"{proc.url}/labelstudio" if proc.healthy(timeout=1.0) else None


def watch_project(ls: Any, project_id: int, cfg: Config) -> int | None:
    """Create (or update) the project's webhook to the receiver; None when no receiver runs (reviews then move
    only through `castlab review-sync` or the reconciliation deployment)."""
    from castlab.labelstudio.client import ensure_webhook
    from castlab.reviews.secret import HEADER, webhook_secret

    url, secret = receiver_url(cfg), webhook_secret()
    if url is None or secret is None:
        logger.info("no webhook receiver running: project %s is not watched", project_id)
        return None
    return ensure_webhook(ls, project_id, url, {HEADER: secret}, ACTIONS)
