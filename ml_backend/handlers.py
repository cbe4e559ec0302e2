"""The ML backend's request → response logic, without HTTP (Label Studio 1.23 protocol).

- ``health()`` → ``{"status": "UP", "model_class": ...}``
- ``setup(payload)`` → ``{"model_version": ...}`` (the same string every prediction carries)
- ``predict(payload)`` → ``{"results": [...]}``, one entry per task, in order. Without a context: the
  character instances curate would find (:func:`castlab.segment.characters.character_instances`), one BrushLabels
  region each. With a context (smart keypoints/rectangles): one
  brush region per prompt group (see :mod:`ml_backend.prompts`). ``{"result": []}`` (the reviewer removed
  the last smart region) answers an empty result, which clears the suggestion in the editor.
- ``webhook(payload)`` → acknowledged and logged; an identity annotation is learnt at once.
- Tasks of the identity project (a config with a ``Choices`` named ``identity``) get identity suggestions
  instead (:mod:`ml_backend.identity`); tasks of the captions project (a ``TextArea`` named ``caption``) get
  caption suggestions, captioned in batches (:mod:`ml_backend.captions`).

A batch stops taking new tasks after ``ml_backend.batch_budget_s`` (well inside Label Studio's 100 s
``ML_TIMEOUT_PREDICT``): the tasks left get an entry without ``result``, which Label Studio skips
without creating a prediction, so they are predicted by the next "Retrieve predictions".

Errors are :class:`BackendError` (status + message). In a batch, a task whose image cannot be used gets
an empty result with an ``error`` field, so the other tasks still get their predictions; when every task
fails, the whole request fails with the first task's error.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from castlab.config import Config
from castlab.labelstudio import client
from castlab.models.segmenter import Segmenter, load_segmenter
from castlab.segment.characters import CharacterScorer, CharacterSettings, EvidenceDetector, character_instances
from ml_backend.captions import CaptionService, is_caption_config
from ml_backend.errors import BackendError
from ml_backend.identity import MODEL_VERSION as IDENTITY_VERSION
from ml_backend.identity import IdentityService, VectorLoader, is_identity_config
from ml_backend.images import LabelStudioSource, labelstudio_source, load_image
from ml_backend.prompts import MaskSchema, PromptGroup, parse_context

logger = logging.getLogger("ml_backend")

MODEL_CLASS = "castlab.SAM2Segmenter"


def default_label_config() -> str:
    """The masks project's own labeling config (used when a request carries none)."""
    from castlab.labelstudio.projects.masks import LABEL_CONFIG

    return LABEL_CONFIG.read_text(encoding="utf-8")


def _region_id(*parts: str) -> str:
    return hashlib.sha1(":".join(parts).encode()).hexdigest()[:10]


class Backend:
    """Holds the segmenter (loaded once, on first use, thread-safe) and answers protocol calls."""

    def __init__(
        self,
        cfg: Config,
        segmenter_factory: Callable[[Config], Segmenter] | None = None,
        labelstudio: LabelStudioSource | None | Callable[[], LabelStudioSource | None] = None,
        identity_loader: VectorLoader | None = None,
        captioner_factory: Callable[[Config], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.identity = IdentityService(cfg, identity_loader)
        embedder_factory = None if segmenter_factory is None else (lambda _cfg: None)  # tests: no open_clip
        self.captions = CaptionService(cfg, captioner_factory, embedder_factory)
        self._factory = segmenter_factory or load_segmenter
        self._segmenter: Segmenter | None = None
        self._characters: tuple[EvidenceDetector, CharacterScorer | None] | None = None
        self._load_lock = threading.Lock()
        self._labelstudio = labelstudio
        self._source: LabelStudioSource | None = None

    # -- model -----------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._segmenter is not None

    def segmenter(self) -> Segmenter:
        if self._segmenter is None:
            with self._load_lock:
                if self._segmenter is None:
                    logger.info("loading segmenter (profile %s)", self.cfg.profile)
                    self._segmenter = self._factory(self.cfg)
                    logger.info("segmenter ready: %s", self._segmenter.model_version)
        return self._segmenter

    def characters(self) -> tuple[EvidenceDetector, CharacterScorer | None]:
        """Evidence detector and character scorer, as curate uses them (pre-annotations = curate's instances).

        With an injected segmenter factory (tests) no open_clip model is loaded and nothing is scored."""
        if self._characters is None:
            with self._load_lock:
                if self._characters is None:
                    scorer = None
                    if self._factory is load_segmenter:
                        from castlab.models.embedder import load_embedder

                        scorer = CharacterScorer.from_config(load_embedder(self.cfg), self.cfg)
                    self._characters = (EvidenceDetector.from_config(self.cfg), scorer)
        return self._characters

    @property
    def model_version(self) -> str:
        return self.segmenter().model_version

    def warm_up(self) -> None:
        """Load the segmenter and run one tiny prompt (and, with ``ml_backend.preload_captioner``, load the
        captioner and compile its schema), so the first real request pays no start-up cost."""
        seg = self.segmenter()
        seg.predict_image(np.zeros((32, 32, 3), np.uint8), points=[(16.0, 16.0)], labels=[1])
        self.characters()
        if self.cfg.ml_backend.preload_captioner:
            self.captions.warm_up()

    def labelstudio_source(self) -> LabelStudioSource | None:
        """The Label Studio instance remote images may come from (looked up when needed, kept once found)."""
        if isinstance(self._labelstudio, LabelStudioSource):
            return self._labelstudio
        if callable(self._labelstudio):
            return self._labelstudio()
        if self._source is None:
            self._source = labelstudio_source(self.cfg)
        return self._source

    # -- protocol ----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Liveness plus, once loaded, the model version and embedding-cache counters (never blocks)."""
        body: dict[str, Any] = {"status": "UP", "model_class": MODEL_CLASS, "profile": self.cfg.profile}
        seg = self._segmenter
        body["model_loaded"] = seg is not None
        body["identity_learnt"] = self.identity.learnt
        body["captioner_loaded"] = self.captions.loaded
        body["captions_suggested"] = self.captions.captioned
        if self.captions.load_error:
            body["captioner_error"] = self.captions.load_error
        if seg is not None:
            body["model_version"] = seg.model_version
            body["embedding_cache"] = {
                "images": seg.cached_images, "hits": seg.cache_hits, "misses": seg.cache_misses,
            }  # fmt: skip
        return body

    def setup(self, payload: Any) -> dict[str, Any]:
        if payload is not None and not isinstance(payload, dict):
            raise BackendError(400, "setup: body must be a JSON object")
        project = (payload or {}).get("project")
        logger.info("setup for project %s", project)
        return {"model_version": self.model_version}

    def webhook(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise BackendError(400, "webhook: body must be a JSON object")
        action = payload.get("action")
        project = payload.get("project")
        project_id = project.get("id") if isinstance(project, dict) else project
        task = payload.get("task")
        task_id = task.get("id") if isinstance(task, dict) else None
        logger.info("webhook %s (project %s, task %s)", action, project_id, task_id)
        learnt = self.identity.learn(payload)  # an identity answer: the next suggestion uses it
        return {"status": "ok", "action": action, "learnt": learnt}

    def predict(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise BackendError(400, "predict: body must be a JSON object")
        tasks = payload.get("tasks")
        if not isinstance(tasks, list):
            raise BackendError(400, "predict: 'tasks' must be a list of task objects")
        label_config = payload.get("label_config") or default_label_config()
        budget = float(self.cfg.ml_backend.batch_budget_s)
        if is_caption_config(label_config):  # the captions project: batched VLM captions
            results, failed = self.captions.predict(tasks, self.labelstudio_source, budget)
            if tasks and failed == len(tasks):
                first = results[0].get("error", "caption failed")
                raise BackendError(422, first if len(tasks) == 1 else f"all {len(tasks)} tasks failed; first: {first}")
            return {"results": results, "model_version": self.captions.model_version}
        if is_identity_config(label_config):  # the identity project: suggestions, no segmenter involved
            version = IDENTITY_VERSION

            def predict_one(task: Any, n: int) -> dict[str, Any]:
                if not isinstance(task, dict):
                    raise BackendError(400, f"tasks[{n}]: expected an object")
                return self.identity.predict_task(task)
        else:
            schema = MaskSchema.from_label_config(label_config)
            params = payload.get("params") if isinstance(payload.get("params"), dict) else {}
            prompt_results = self._prompt_results(params.get("context", payload.get("context")))
            version = self.model_version

            def predict_one(task: Any, n: int) -> dict[str, Any]:
                return self._predict_task(task, n, schema, prompt_results, version)
        results: list[dict[str, Any]] = []
        errors: list[BackendError] = []
        started = time.monotonic()
        for n, task in enumerate(tasks):
            if n and time.monotonic() - started > budget:
                skipped = len(tasks) - n
                logger.info("predict: %d of %d tasks left for a later request (batch budget %g s)",
                            skipped, len(tasks), budget)
                # no "result": Label Studio skips the entry, creates no prediction, and asks again next time
                results.extend({"model_version": version, "error": f"not predicted within ml_backend.batch_budget_s"
                                f" ({budget:g} s); retrieve predictions again"} for _ in range(skipped))
                break
            try:
                results.append(predict_one(task, n))
            except BackendError as exc:
                task_id = task.get("id") if isinstance(task, dict) else None
                logger.warning("task %s: %s", task_id, exc.message)
                errors.append(exc)
                results.append({"result": [], "score": 0.0, "model_version": version, "error": exc.message})
        if tasks and len(errors) == len(tasks):
            first = errors[0]
            message = (
                first.message if len(tasks) == 1 else f"all {len(tasks)} tasks failed; first: {first.message}"
            )
            raise BackendError(first.status, message)
        return {"results": results, "model_version": version}

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _prompt_results(context: Any) -> list[Any] | None:
        """None for a plain prediction; the context's result list for an interactive one."""
        if context is None or (isinstance(context, dict) and "result" not in context):
            return None
        if not isinstance(context, dict) or not isinstance(context["result"], list):
            raise BackendError(400, 'context: expected {"result": [...]}')
        return context["result"]

    def _predict_task(
        self, task: Any, n: int, schema: MaskSchema, prompt_results: list[Any] | None, version: str
    ) -> dict[str, Any]:
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise BackendError(400, f"tasks[{n}]: expected an object with 'data'")
        if schema.data_key not in task["data"]:
            raise BackendError(
                400, f"tasks[{n}] (id {task.get('id')}): data has no '{schema.data_key}' image"
            )
        image = load_image(task["data"][schema.data_key], self.labelstudio_source)
        height, width = image.shape[:2]
        seg = self.segmenter()
        image_key = Segmenter.image_key(image)
        regions: list[dict[str, Any]] = []
        scores: list[float] = []
        if prompt_results is None:
            detector, scorer = self.characters()
            found = character_instances(seg, image, CharacterSettings.from_config(self.cfg), detector, scorer)
            for i, inst in enumerate(c.instance for c in found):
                regions.append(
                    self._region(
                        inst.mask,
                        schema.labels[0],
                        width,
                        height,
                        schema,
                        _region_id(version, image_key, "auto", str(i)),
                        inst.score,
                    )
                )
                scores.append(inst.score)
        elif prompt_results:
            for group in parse_context(prompt_results, width, height, schema.image_name):
                mask, score = self._predict_group(seg, image, group)
                if not mask.any():
                    logger.info(
                        "task %s: prompt group %s gave an empty mask", task.get("id"), group.key()[:8]
                    )
                    continue
                regions.append(
                    self._region(
                        mask,
                        schema.brush_label(group.label),
                        width,
                        height,
                        schema,
                        _region_id(version, image_key, group.key()),
                        score,
                    )
                )
                scores.append(score)
        return {
            "result": regions,
            "score": float(np.mean(scores)) if scores else 0.0,
            "model_version": version,
        }

    @staticmethod
    def _predict_group(seg: Segmenter, image: np.ndarray, group: PromptGroup) -> tuple[np.ndarray, float]:
        return seg.predict_image(
            image, points=group.points or None, labels=group.point_labels or None, box=group.box
        )

    @staticmethod
    def _region(
        mask: np.ndarray,
        label: str,
        width: int,
        height: int,
        schema: MaskSchema,
        region_id: str,
        score: float,
    ) -> dict[str, Any]:
        region = client.brush_result(
            mask.astype(np.uint8),
            label,
            width,
            height,
            from_name=schema.brush_name,
            to_name=schema.image_name,
            region_id=region_id,
        )
        region["score"] = float(score)
        return region
