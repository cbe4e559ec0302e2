"""The ML backend's request → response logic, without HTTP (Label Studio 1.23 protocol): a thin router.

Every request's label config is parsed once (:mod:`ml_backend.kinds`) and the call goes to the predictor of
that project kind (:mod:`ml_backend.masks`, :mod:`ml_backend.identity`, :mod:`ml_backend.captions`):

- ``health()`` → ``{"status": "UP", "model_class": ...}`` plus each predictor's state (never loads a model);
- ``setup(payload)`` → ``{"model_version": ...}``, the segmenter's version (as Label Studio has always been told);
- ``predict(payload)`` → ``{"results": [...], "model_version": ...}``, one entry per task, in order, within
  ``ml_backend.batch_budget_s`` (see :mod:`ml_backend.predictor`); a request without a label config is a
  masks request;
- ``webhook(payload)`` → acknowledged and logged; the event goes to the predictor of the project's label config
  (to every predictor when the payload carries none): an identity annotation is learnt at once.

Errors are :class:`BackendError` (status + message); an unknown or unparsable label config is a 400.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from castlab.config import Config
from castlab.models.segmenter import Segmenter
from ml_backend.captions import CaptionsPredictor
from ml_backend.errors import BackendError
from ml_backend.identity import IdentityPredictor, VectorLoader
from ml_backend.images import LabelStudioSource, labelstudio_source
from ml_backend.kinds import Kind, parse_label_config, project_config
from ml_backend.masks import MODEL_CLASS, MasksPredictor
from ml_backend.predictor import Batch, Predictor

logger = logging.getLogger("ml_backend")


class Backend:
    """One predictor per project kind, the Label Studio instance images come from, and the protocol calls."""

    def __init__(
        self,
        cfg: Config,
        segmenter_factory: Callable[[Config], Segmenter] | None = None,
        labelstudio: LabelStudioSource | None | Callable[[], LabelStudioSource | None] = None,
        identity_loader: VectorLoader | None = None,
        captioner_factory: Callable[[Config], Any] | None = None,
        embedder_factory: Callable[[Config], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self._labelstudio = labelstudio
        self._source: LabelStudioSource | None = None
        self.masks = MasksPredictor(cfg, segmenter_factory, embedder_factory, self.labelstudio_source)
        self.identity = IdentityPredictor(cfg, identity_loader)
        self.captions = CaptionsPredictor(cfg, captioner_factory, embedder_factory, self.labelstudio_source)
        self.predictors: dict[Kind, Predictor] = {
            "masks": self.masks, "identity": self.identity, "captions": self.captions,
        }  # fmt: skip

    def labelstudio_source(self) -> LabelStudioSource | None:
        """The Label Studio instance remote images may come from (looked up when needed, kept once found)."""
        if isinstance(self._labelstudio, LabelStudioSource):
            return self._labelstudio
        if callable(self._labelstudio):
            return self._labelstudio()
        if self._source is None:
            self._source = labelstudio_source(self.cfg)
        return self._source

    def warm_up(self) -> None:
        """Set the predictors up (the captioner only with ``ml_backend.preload_captioner``), so the first real
        request pays no start-up cost."""
        self.masks.setup()
        self.identity.setup()
        if self.cfg.ml_backend.preload_captioner:
            self.captions.setup()

    # -- protocol ----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "UP", "model_class": MODEL_CLASS, "profile": self.cfg.profile}
        for predictor in self.predictors.values():
            body.update(predictor.health())
        return body

    def setup(self, payload: Any) -> dict[str, Any]:
        if payload is not None and not isinstance(payload, dict):
            raise BackendError(400, "setup: body must be a JSON object")
        logger.info("setup for project %s", (payload or {}).get("project"))
        return {"model_version": self.masks.model_version}

    def webhook(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise BackendError(400, "webhook: body must be a JSON object")
        action, project, task = payload.get("action"), payload.get("project"), payload.get("task")
        project_id = project.get("id") if isinstance(project, dict) else project
        task_id = task.get("id") if isinstance(task, dict) else None
        logger.info("webhook %s (project %s, task %s)", action, project_id, task_id)
        learnt = False
        for predictor in self._webhook_predictors(project):
            learnt = predictor.fit(str(action or ""), payload) or learnt
        return {"status": "ok", "action": action, "learnt": learnt}

    def predict(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise BackendError(400, "predict: body must be a JSON object")
        tasks = payload.get("tasks")
        if not isinstance(tasks, list):
            raise BackendError(400, "predict: 'tasks' must be a list of task objects")
        label_config = payload.get("label_config")
        config = parse_label_config(label_config) if label_config else project_config("masks")
        predictor = self.predictors[config.kind]
        params = payload.get("params") if isinstance(payload.get("params"), dict) else {}
        context = params.get("context", payload.get("context"))
        version = predictor.model_version  # loads the model before the budget starts
        batch = Batch(float(self.cfg.ml_backend.batch_budget_s))
        results = predictor.predict(tasks, context=context, config=config, batch=batch)
        batch.check(len(tasks))
        return {"results": results, "model_version": version}

    def _webhook_predictors(self, project: Any) -> list[Predictor]:
        """The predictor of the project's label config; every predictor when the payload has no config."""
        label_config = project.get("label_config") if isinstance(project, dict) else None
        if not label_config:
            return list(self.predictors.values())
        try:
            return [self.predictors[parse_label_config(label_config, "webhook project.label_config").kind]]
        except BackendError as exc:
            logger.info("webhook not for a predictor: %s", exc.message)
            return []
