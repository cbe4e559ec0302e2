"""What every predictor shares: Label Studio's ML contract and one ``/predict`` request's bookkeeping.

:class:`Predictor` is the contract of Label Studio's own ``label_studio_ml.model.LabelStudioMLBase``:
``setup()``, ``predict(tasks, context=None, **kwargs)`` (one entry per task, in order), ``fit(event, data)``
for webhook events and ``model_version``; castlab adds ``health()``, the predictor's part of ``/health``.

:class:`Batch` carries a request's time budget (``ml_backend.batch_budget_s``, well inside Label Studio's
100 s ``ML_TIMEOUT_PREDICT``) and its failed tasks. Tasks left when the budget is spent get an entry without
``result``, which Label Studio skips without creating a prediction, so the next "Retrieve predictions" asks
again. A task that fails gets an empty result with an ``error`` field, so the other tasks still get theirs;
when every task fails, the whole request fails with the first task's error.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from ml_backend.errors import BackendError

logger = logging.getLogger("ml_backend")

Entry = dict[str, Any]  # one task's answer: {"result", "score", "model_version"} (+ "error")


class Predictor(Protocol):
    """One project kind's predictor (Label Studio's ML contract, plus its /health facts)."""

    @property
    def model_version(self) -> str: ...

    def setup(self) -> None:
        """Prepare: load and warm up the models, so the first request pays no start-up cost."""

    def predict(self, tasks: list[Any], context: Any = None, **kwargs: Any) -> list[Entry]:
        """One entry per task, in order (kwargs: ``config``, the parsed label config; ``batch``, a Batch)."""
        ...

    def fit(self, event: str, data: dict[str, Any], **kwargs: Any) -> bool:
        """Learn from a webhook event (``data`` is its payload); True when something was learnt."""
        ...

    def health(self) -> dict[str, Any]:
        """This predictor's state for ``/health`` (never loads anything)."""
        ...


class Batch:
    """One /predict request: its time budget and the tasks that failed (see module docstring)."""

    def __init__(self, budget_s: float = math.inf) -> None:
        self.budget_s = budget_s
        self.started = time.monotonic()
        self.errors: dict[int, BackendError] = {}  # task position → its error

    def spent(self) -> bool:
        """True once the budget is spent (a request still predicts its first task or chunk)."""
        return time.monotonic() - self.started > self.budget_s

    def failed(self, n: int, task: Any, exc: BackendError, version: str) -> Entry:
        """Record that task `n` failed; its entry is an empty result with the error."""
        logger.warning("task %s: %s", task.get("id") if isinstance(task, dict) else None, exc.message)
        self.errors[n] = exc
        return {"result": [], "score": 0.0, "model_version": version, "error": exc.message}

    def left(self, count: int, version: str, done: str = "predicted") -> list[Entry]:
        """Entries of `count` tasks left for a later request: no "result", so Label Studio asks again."""
        logger.info("%d tasks left for a later request (batch budget %g s)", count, self.budget_s)
        error = f"not {done} within ml_backend.batch_budget_s ({self.budget_s:g} s); retrieve predictions again"
        return [{"model_version": version, "error": error} for _ in range(count)]

    def each(self, tasks: list[Any], version: str, predict_one: Callable[[Any, int], Entry]) -> list[Entry]:
        """Predict task by task until the budget is spent; a task's BackendError becomes its error entry."""
        entries: list[Entry] = []
        for n, task in enumerate(tasks):
            if n and self.spent():
                return entries + self.left(len(tasks) - n, version)
            try:
                entries.append(predict_one(task, n))
            except BackendError as exc:
                entries.append(self.failed(n, task, exc, version))
        return entries

    def check(self, count: int) -> None:
        """Raise the first task's error when all `count` tasks of the request failed."""
        if count and len(self.errors) == count:
            first = self.errors[min(self.errors)]
            message = first.message if count == 1 else f"all {count} tasks failed; first: {first.message}"
            raise BackendError(first.status, message)
