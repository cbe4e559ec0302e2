"""Prefect events for reviews: one per Label Studio annotation change, POSTed to the server's ``/events``.

An event names the Label Studio project as its resource (``castlab.labelstudio.project.<id>``); the
``review-advance`` deployment's trigger (``prefect.yaml``) starts a run with that project id. The event id is
derived from the annotation and its update time, so the same delivery twice is the same event.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import requests

from castlab.errors import StackError

EVENT = "castlab.review.annotation"
RESOURCE_PREFIX = "castlab.labelstudio.project."
_NAMESPACE = uuid.UUID("6f1e3c1a-7c5e-4b6e-9a43-5f0c6d2b7a11")


def project_of(body: dict[str, Any]) -> int | None:
    """The project id of a Label Studio webhook body (``project.id``, else ``annotation.project``)."""
    project = body.get("project")
    if isinstance(project, dict) and project.get("id") is not None:
        return int(project["id"])
    annotation = body.get("annotation") or {}
    value = annotation.get("project") if isinstance(annotation, dict) else None
    return int(value) if value is not None else None


def annotation_event(project_id: int, action: str, annotation: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """The event for one annotation change (`source`: webhook or reconcile)."""
    annotation = annotation or {}
    key = f"{project_id}:{annotation.get('id')}:{annotation.get('updated_at')}:{action}"
    return {
        "id": str(uuid.uuid5(_NAMESPACE, key)),
        "occurred": datetime.now(timezone.utc).isoformat(),
        "event": EVENT,
        "resource": {"prefect.resource.id": f"{RESOURCE_PREFIX}{project_id}",
                     "castlab.project.id": str(project_id)},
        "payload": {"action": action, "annotation_id": annotation.get("id"), "task_id": annotation.get("task"),
                    "source": source},
    }


def post_events(api_url: str, events: list[dict[str, Any]]) -> None:
    """Send events to the Prefect server (raises StackError when it does not take them)."""
    if not events:
        return
    try:
        response = requests.post(f"{api_url.rstrip('/')}/events", json=events, timeout=10)
    except requests.RequestException as exc:
        raise StackError(f"Prefect API {api_url}/events: {exc}") from exc
    if response.status_code >= 300:
        raise StackError(f"Prefect API {api_url}/events answered {response.status_code}: {response.text[:200]}")
