"""Catch up on annotations whose webhook never arrived (Label Studio delivers at most once).

For every project castlab pushed to, annotations updated after the stored watermark
(``<workspace>/stack/review_watermark.json``: project id → newest ``updated_at`` seen) become the same events the
receiver sends; the watermark moves forward only after the events were taken. A project without a watermark
gets one (its newest annotation, or "" when it has none) and no event: reconciliation covers what happens after
it first sees a project.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from castlab.reviews.events import annotation_event
from castlab.workspace import stack_dir, write_json_atomic


def watermark_path() -> Path:
    return stack_dir() / "review_watermark.json"


def read_watermarks() -> dict[str, str]:
    try:
        data = json.loads(watermark_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _stamp(annotation: dict[str, Any]) -> str:
    return str(annotation.get("updated_at") or annotation.get("created_at") or "")


def newest_update(tasks: list[dict[str, Any]]) -> str | None:
    """The newest annotation time stamp among `tasks` (None without annotations)."""
    return max((s for t in tasks for a in t.get("annotations") or [] if (s := _stamp(a))), default=None)


def missed(project_id: int, tasks: list[dict[str, Any]], since: str | None) -> tuple[int, dict[str, Any] | None,
                                                                                      str | None]:
    """(annotations updated after `since`, one event standing for them (the newest), the new watermark)."""
    newer = [(s, a, t) for t in tasks for a in t.get("annotations") or []
             if (s := _stamp(a)) and (not since or s > since)]
    if not newer:
        return 0, None, since
    stamp, annotation, task = max(newer, key=lambda item: item[0])
    event = annotation_event(project_id, "ANNOTATION_UPDATED", {**annotation, "task": task.get("id")}, "reconcile")
    return len(newer), event, stamp


def save_watermarks(marks: dict[str, str]) -> None:
    write_json_atomic(watermark_path(), dict(sorted(marks.items())))
