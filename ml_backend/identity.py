"""The instance-level identity project's predictor: identity suggestions that learn from each annotation.

A task of that project names its run (``castlab_run``, relative to the workspace, never outside it) and its
instance. Per run, the predictor loads the instances' embeddings (the injected vector loader) and an
:class:`IdentityIndex` of the identities people already decided (the manifest after ``review-sync``), then
answers a ``choices`` prediction for the ``identity`` Choices. Label Studio's webhook (``ANNOTATION_CREATED`` /
``ANNOTATION_UPDATED``, sent to ``/webhook`` for every connected ML backend) carries the new answer:
``fit`` learns it at once, so the next suggestion uses it without a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from castlab.config import Config
from castlab.identity.suggest import IdentityIndex
from castlab.labelstudio.projects.identity import instance_decision
from castlab.manifest import Manifest
from ml_backend.errors import BackendError
from ml_backend.images import task_run_dir
from ml_backend.kinds import IdentityConfig, project_config
from ml_backend.predictor import Batch, Entry

logger = logging.getLogger("ml_backend")

MODEL_VERSION = "castlab-identity-knn"
LEARN_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DECIDED_STATES = ("reviewed", "cluster")

VectorLoader = Callable[[Path], dict[str, tuple[str, np.ndarray]]]  # run dir → row id → (route, unit vector)


def _default_loader(run_dir: Path) -> dict[str, tuple[str, np.ndarray]]:
    from castlab.identity.stage import identity_vectors

    return identity_vectors(run_dir)


@dataclass
class _Run:
    index: IdentityIndex
    vectors: dict[str, tuple[str, np.ndarray]]


class IdentityPredictor:
    """A k-NN index of decided identities per run, loaded on the run's first task and taught by webhooks."""

    def __init__(self, cfg: Config, loader: VectorLoader | None = None) -> None:
        self.cfg = cfg
        self._loader = loader or _default_loader
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self.learnt = 0  # answers learnt from webhooks since the start (shown by /health)

    @property
    def model_version(self) -> str:
        return MODEL_VERSION

    def setup(self) -> None:
        """Nothing to warm up: a run's vectors are loaded with its first task."""

    def health(self) -> dict[str, Any]:
        return {"identity_learnt": self.learnt}

    def _run(self, run_rel: Any) -> _Run:
        with self._lock:
            state = self._runs.get(run_rel) if isinstance(run_rel, str) else None
            if state is not None:
                return state
            run_dir = task_run_dir(run_rel, "identity")
            index = IdentityIndex(int(self.cfg.identity.suggest_k), float(self.cfg.identity.suggest_min_similarity))
            vectors = self._loader(run_dir)
            for row in Manifest.for_run(run_dir).rows(kind="instance"):
                found = vectors.get(row["row_id"])
                if found is not None and row.get("identity") and row.get("identity_state") in DECIDED_STATES:
                    index.learn(row["row_id"], found[0], found[1], str(row["identity"]))
            logger.info("identity index for %s: %d decided instances", run_rel, len(index))
            state = self._runs[run_rel] = _Run(index, vectors)
            return state

    def predict(
        self, tasks: list[Any], context: Any = None, *, config: IdentityConfig | None = None,
        batch: Batch | None = None, **kwargs: Any,
    ) -> list[Entry]:  # fmt: skip
        config = config or project_config("identity")
        return (batch or Batch()).each(tasks, MODEL_VERSION, lambda task, n: self._task(task, n, config))

    def _task(self, task: Any, n: int, config: IdentityConfig) -> Entry:
        if not isinstance(task, dict):
            raise BackendError(400, f"tasks[{n}]: expected an object")
        data = task.get("data") or {}
        state = self._run(data.get("castlab_run"))
        instance = data.get("instance")
        found = state.vectors.get(str(instance))
        result: list[dict[str, Any]] = []
        score = 0.0
        if found is not None:
            suggestion = state.index.suggest(found[0], found[1], exclude=str(instance))
            if suggestion is not None:
                score = suggestion.score
                result.append({"from_name": config.choices_name, "to_name": config.image_name, "type": "choices",
                               "value": {"choices": [suggestion.identity]}})
        return {"result": result, "score": score, "model_version": MODEL_VERSION}

    def fit(self, event: str, data: dict[str, Any], **kwargs: Any) -> bool:
        """Learn the identity an annotation gives its instance; True when something was learnt."""
        if event not in LEARN_ACTIONS:
            return False
        task, annotation = data.get("task") or {}, data.get("annotation") or {}
        task_data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(task_data, dict) or "instance" not in task_data or not isinstance(annotation, dict):
            return False
        state = self._run(task_data.get("castlab_run"))
        found = state.vectors.get(str(task_data["instance"]))
        decision = instance_decision(annotation)
        if found is None or decision is None:
            return False
        identity = None if decision.not_character else decision.identity
        state.index.learn(str(task_data["instance"]), found[0], found[1], identity)
        self.learnt += 1
        logger.info("identity learnt from annotation %s: %s", annotation.get("id"), identity)
        return True
