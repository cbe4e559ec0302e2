"""Connect a castlab ML backend to a Label Studio project and call it the way Label Studio does."""

from __future__ import annotations

from typing import Any

import requests

from castlab.errors import StackError


def ensure_ml_backend(ls: Any, project_id: int, url: str, title: str = "castlab") -> int:
    """Connect the backend at `url` to the project once (re-running reuses the connection)."""
    for backend in ls.ml.list(project=project_id):
        if str(getattr(backend, "url", "")).rstrip("/") == url.rstrip("/"):
            return int(backend.id)
    backend = ls.ml.create(url=url, project=project_id, title=title, is_interactive=True)
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
