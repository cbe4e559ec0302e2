"""Thin helpers over label-studio-sdk 2.x: projects, local-file storage, idempotent task pushes, masks.

Tasks carry a stable key in their data (``castlab_key`` by default): pushing the same items again
creates nothing new. Media is served by Label Studio's local-files storage from the workspace root.

A task can belong to several runs (:func:`task_runs`): ``castlab_run`` is the run that created it, ``castlab_runs``
lists every run whose push re-used it (same content key), ``castlab_runs_left`` the runs whose later push no longer
asked for it. :func:`in_run` is the test every "tasks of this run" filter uses.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from castlab.errors import InputError, StackError
from castlab.labelstudio import rle
from castlab.workspace import relative_to_workspace

LOCAL_FILES_PREFIX = "/data/local-files/?d="
_PAGE_SIZE = 1000


def connect(url: str, token: str) -> LabelStudio:
    """SDK client for the server at `url` (a legacy token is sent as ``Authorization: Token ...``)."""
    return LabelStudio(base_url=url.rstrip("/"), api_key=token)


def _dump(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    return obj.model_dump(mode="json", by_alias=True)


def _api_problem(exc: ApiError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {"detail": exc.body}
    details = body.get("validation_errors") or body.get("detail") or body
    return f"HTTP {exc.status_code}: {details}"


def _titled(ls: LabelStudio, title: str) -> list[Any]:
    return [p for p in ls.projects.list(title=title, page_size=_PAGE_SIZE) if p.title == title]


def find_project(ls: LabelStudio, title: str) -> int | None:
    """Id of the (first) project titled exactly `title`, None when there is none."""
    matches = _titled(ls, title)
    return int(matches[0].id) if matches else None


def ensure_project(ls: LabelStudio, title: str, label_config: str) -> int:
    """Id of the project titled exactly `title`; created if missing, its label config updated if changed."""
    matches = _titled(ls, title)
    if len(matches) > 1:
        ids = ", ".join(str(p.id) for p in matches)
        raise StackError(f"Label Studio has {len(matches)} projects titled {title!r} (ids {ids}); keep one")
    try:
        if not matches:
            return int(ls.projects.create(title=title, label_config=label_config).id)
        project_id = int(matches[0].id)
        current = ls.projects.get(id=project_id).label_config
        if (current or "").strip() != label_config.strip():
            ls.projects.update(id=project_id, label_config=label_config)
    except ApiError as exc:
        raise StackError(f"Label Studio refused project {title!r}: {_api_problem(exc)}") from exc
    return project_id


def ensure_webhook(ls: LabelStudio, project_id: int, url: str, headers: dict[str, str], actions: list[str]) -> int:
    """Id of the project's webhook to `url` (created, or its headers/actions brought up to date)."""
    try:
        for hook in ls.webhooks.list(project=str(project_id)):
            if hook.url == url and int(hook.project or 0) == int(project_id):
                if dict(hook.headers or {}) != headers or sorted(hook.actions or []) != sorted(actions) \
                        or not hook.is_active:
                    ls.webhooks.update(id=int(hook.id), url=url, headers=headers, actions=actions, is_active=True,
                                       send_payload=True, send_for_all_actions=False)
                return int(hook.id)
        hook = ls.webhooks.create(url=url, project=int(project_id), actions=actions, headers=headers,
                                  send_payload=True, send_for_all_actions=False, is_active=True)
    except ApiError as exc:
        raise StackError(f"Label Studio refused a webhook to {url} on project {project_id}: {_api_problem(exc)} "
                         "(a receiver on 127.0.0.1 or a private network needs SSRF_PROTECTION_ENABLED=false in "
                         "Label Studio's environment)") from exc
    return int(hook.id)


def ensure_local_storage(ls: LabelStudio, project_id: int, directory: Path) -> int:
    """Id of the project's local-files storage for `directory` (under the workspace root), made once.

    Its only job is to let Label Studio serve ``/data/local-files/?d=...`` URLs below `directory`;
    its regex matches nothing, so a "Sync" in the UI cannot import the files as extra tasks.
    """
    directory = Path(directory).resolve()
    relative_to_workspace(directory)  # raises InputError outside the document root
    if not directory.is_dir():
        raise InputError(directory, "is not a folder (Label Studio local storage needs an existing folder)")
    for storage in ls.import_storage.local.list(project=project_id):
        if storage.path and Path(storage.path).resolve() == directory:
            return int(storage.id)
    try:
        storage = ls.import_storage.local.create(
            project=project_id,
            path=str(directory),
            use_blob_urls=True,
            regex_filter="^$",
            title=f"castlab media: {directory.name}"[:256],
            description="Serves castlab's media; tasks are pushed by castlab (do not sync).",
        )
    except ApiError as exc:
        raise StackError(f"Label Studio refused local storage {directory}: {_api_problem(exc)}") from exc
    return int(storage.id)


def local_file_url(path: Path) -> str:
    """``/data/local-files/?d=<path relative to the workspace root>`` (InputError outside the root)."""
    return LOCAL_FILES_PREFIX + relative_to_workspace(Path(path))


RUN_FIELD = "castlab_run"
RUNS_FIELD = "castlab_runs"
LEFT_FIELD = "castlab_runs_left"


def task_runs(data: dict[str, Any]) -> list[str]:
    """The runs a task's `data` belongs to: its creator (``castlab_run``) and every run that re-used it
    (``castlab_runs``), less those that left it (``castlab_runs_left``)."""
    left = set(data.get(LEFT_FIELD) or [])
    runs = [data.get(RUN_FIELD), *(data.get(RUNS_FIELD) or [])]
    return [str(r) for r in dict.fromkeys(runs) if r and r not in left]


def in_run(task: dict[str, Any], run: str) -> bool:
    """Whether `task` (a plain dict, as :func:`list_tasks` gives) belongs to `run` (see :func:`task_runs`)."""
    return run in task_runs(task.get("data") or {})


def _existing(ls: LabelStudio, project_id: int, key_field: str) -> dict[str, tuple[int, dict[str, Any]]]:
    """key -> (task id, data) of the project's tasks."""
    keys: dict[str, tuple[int, dict[str, Any]]] = {}
    for task in ls.tasks.list(project=project_id, fields="task_only", page_size=_PAGE_SIZE):
        data = dict(task.data or {})
        key = data.get(key_field)
        if key is not None:
            keys.setdefault(str(key), (int(task.id), data))
    return keys


def _membership(data: dict[str, Any], run: str, member: bool) -> dict[str, Any] | None:
    """`data` with `run` joined (`member`) or left; None when nothing changes."""
    if (run in task_runs(data)) == member:
        return None
    runs = [r for r in data.get(RUNS_FIELD) or [] if r != run]
    left = [r for r in data.get(LEFT_FIELD) or [] if r != run]
    if member:
        runs.append(run)
    else:
        left.append(run)
    changed = {**data, RUNS_FIELD: runs, LEFT_FIELD: left}
    return {k: v for k, v in changed.items() if v != [] or k not in (RUNS_FIELD, LEFT_FIELD)}


def update_task_data(ls: LabelStudio, task_id: int, data: dict[str, Any]) -> None:
    """Replace a task's data (its annotations and predictions stay)."""
    try:
        ls.tasks.update(id=str(task_id), data=data)
    except ApiError as exc:
        raise StackError(f"Label Studio refused to update task {task_id}: {_api_problem(exc)}") from exc


class PushResult(dict[str, int]):
    """key -> task id for every pushed item; ``created`` lists the keys this push created, ``joined`` the existing
    tasks it added to the pushing run, ``left`` the keys of the run's tasks it no longer asked for."""

    def __init__(self, mapping: dict[str, int], created: list[str], joined: list[str] | None = None,
                 left: list[str] | None = None) -> None:
        super().__init__(mapping)
        self.created = created
        self.joined = joined or []
        self.left = left or []


def push_tasks(
    ls: LabelStudio,
    project_id: int,
    items: list[dict[str, Any]],
    key_field: str = "castlab_key",
    chunk_size: int = 100,
    on_chunk: Callable[[dict[str, int]], None] | None = None,
    complete_for: str | None = None,
) -> PushResult:
    """Import items ``{"data": {..., key_field: key}, "predictions": [...]}`` whose key is new.

    Returns key -> task id for every item (existing and new) as a dict whose ``created`` attribute
    lists the keys created now. `on_chunk(mapping_so_far)` runs after each imported chunk, so a
    caller can record what reached Label Studio before the next one. An existing task whose item names another
    ``castlab_run`` joins that run (``castlab_runs``): one task, reviewed once, serves every run of the same
    content. With `complete_for` (a run), the items are all that run asks of the project: its other tasks leave it.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    seen: set[str] = set()
    for n, item in enumerate(items):
        key = (item.get("data") or {}).get(key_field)
        if key is None:
            raise ValueError(f"item {n} has no data[{key_field!r}] (the stable key that prevents duplicates)")
        if str(key) in seen:
            raise ValueError(f"item {n}: key {key!r} appears twice in one push")
        seen.add(str(key))
    found = _existing(ls, project_id, key_field)
    existing = {key: task_id for key, (task_id, _) in found.items()}
    mapping = {
        str(item["data"][key_field]): existing[str(item["data"][key_field])]
        for item in items
        if str(item["data"][key_field]) in existing
    }
    joined: list[str] = []
    for item in items:
        key, run = str(item["data"][key_field]), item["data"].get(RUN_FIELD)
        changed = _membership(found[key][1], str(run), True) if key in found and run else None
        if changed is not None:
            update_task_data(ls, found[key][0], changed)
            joined.append(key)
    left: list[str] = []
    for key, (task_id, data) in found.items() if complete_for else ():
        changed = _membership(data, str(complete_for), False) if key not in seen else None
        if changed is not None:
            update_task_data(ls, task_id, changed)
            left.append(key)
    new = [item for item in items if str(item["data"][key_field]) not in existing]
    for start in range(0, len(new), chunk_size):
        chunk = new[start : start + chunk_size]
        try:
            response = ls.projects.import_tasks(id=project_id, request=chunk, return_task_ids=True)
        except ApiError as exc:
            raise StackError(f"Label Studio project {project_id} refused tasks: {_api_problem(exc)}") from exc
        task_ids = list(response.task_ids or [])
        if len(task_ids) != len(chunk):
            raise StackError(
                f"Label Studio project {project_id} created {len(task_ids)} tasks for a chunk of {len(chunk)}"
            )
        for item, task_id in zip(chunk, task_ids, strict=True):
            mapping[str(item["data"][key_field])] = int(task_id)
        if on_chunk is not None:
            on_chunk(dict(mapping))
    keys = [str(item["data"][key_field]) for item in items]
    return PushResult({key: mapping[key] for key in keys}, [str(item["data"][key_field]) for item in new], joined,
                      left)


def result_id(*parts: str) -> str:
    """A stable id for a prediction's result region, from what identifies it (row, control, label)."""
    return hashlib.sha1(":".join(parts).encode()).hexdigest()[:10]


def refresh_predictions(ls: LabelStudio, project_id: int, tasks: list[dict[str, Any]], created: set[str],
                        key: Callable[[list[dict[str, Any]]], Any]) -> int:
    """Existing tasks among `tasks` (not in `created`) nobody answered yet whose prediction differs by `key` (what
    of a result matters: the caption text, the labels) from the new one get the new prediction; how many did."""
    wanted = {t["data"]["castlab_key"]: t for t in tasks if t["data"]["castlab_key"] not in created}
    updated = 0
    for task in list_tasks(ls, project_id) if wanted else []:
        fresh = wanted.get(str((task.get("data") or {}).get("castlab_key")))
        if fresh is None or latest_annotation(task) is not None:
            continue
        current = (task.get("predictions") or [{}])[-1].get("result") or []
        prediction = fresh["predictions"][0]
        if key(current) != key(prediction["result"]):
            ls.predictions.create(task=int(task["id"]), result=prediction["result"], score=prediction["score"],
                                  model_version=prediction["model_version"])
            updated += 1
    return updated


def list_tasks(ls: LabelStudio, project_id: int) -> list[dict[str, Any]]:
    """Every task of the project as a plain dict, with its annotations and predictions."""
    return [_dump(t) for t in ls.tasks.list(project=project_id, fields="all", page_size=_PAGE_SIZE)]


def run_tasks(ls: LabelStudio, title: str, run: str) -> list[dict[str, Any]]:
    """The tasks of one castlab run (:func:`in_run`) in the project titled `title` ([] without one)."""
    project_id = find_project(ls, title)
    if project_id is None:
        return []
    return [t for t in list_tasks(ls, project_id) if in_run(t, run)]


def latest_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """A task's newest annotation that was not cancelled (by update time, then id), or None."""
    annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return max(annotations, key=annotation_order, default=None)


def annotation_order(annotation: dict[str, Any]) -> tuple[str, int]:
    """Sort key of annotations, oldest first (update time, then id)."""
    return str(annotation.get("updated_at") or ""), int(annotation.get("id") or 0)


def brush_result(
    mask: np.ndarray,
    label: str,
    width: int,
    height: int,
    from_name: str = "mask",
    to_name: str = "image",
    region_id: str | None = None,
) -> dict[str, Any]:
    """A BrushLabels result (RLE) for a height x width mask (nonzero = inside)."""
    mask = np.asarray(mask)
    if mask.shape != (int(height), int(width)):
        raise ValueError(f"mask shape {mask.shape} does not match the image size {width}x{height} (W x H)")
    return {
        "id": region_id or uuid.uuid4().hex[:10],
        "from_name": from_name,
        "to_name": to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": rle.encode(mask), "brushlabels": [label]},
    }


def mask_from_result(result: dict[str, Any]) -> np.ndarray:
    """uint8 0/1 mask (original_height x original_width) of a BrushLabels result."""
    value = result.get("value") or {}
    data = value.get("rle", result.get("rle"))
    if data is None:
        raise ValueError(f"result {result.get('id')!r} ({result.get('type')}) holds no RLE brush mask")
    try:
        height, width = int(result["original_height"]), int(result["original_width"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"result {result.get('id')!r} has no original_width/original_height") from exc
    return rle.decode(data, height, width)


def accept_predictions(ls: LabelStudio, project_id: int, wanted: Callable[[dict[str, Any]], bool]) -> int:
    """Demo reviewer: submit the latest prediction of every `wanted` task without an annotation, as-is.

    Used only by ``castlab demo`` so the whole path runs unattended; real reviews happen in the UI.
    Tasks that already carry an annotation are left alone, so re-running adds nothing.
    """
    created = 0
    for task in list_tasks(ls, int(project_id)):
        if not wanted(task) or latest_annotation(task):
            continue
        predictions = task.get("predictions") or []
        if predictions:
            create_annotation(ls, int(task["id"]), predictions[-1]["result"])
            created += 1
    return created


def create_annotation(ls: LabelStudio, task_id: int, result: list[dict[str, Any]],
                      lead_time: float | None = None) -> int:
    """Submit an annotation with `result` on a task (as the token's user; `lead_time`: the seconds it took, as
    Label Studio's editor records it); return its id."""
    extra = {} if lead_time is None else {"lead_time": float(lead_time)}
    annotation = ls.annotations.create(id=int(task_id), result=result, was_cancelled=False, **extra)
    return int(annotation.id)
