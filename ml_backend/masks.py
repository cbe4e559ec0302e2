"""The masks project's predictor: SAM2 brush masks for the smart tools' clicks and boxes.

Without a context (a batch "Retrieve predictions"): the character instances curate would find
(:func:`castlab.segment.characters.character_instances`), one BrushLabels region each. With a context
(smart keypoints/rectangles): one brush region per prompt group (see :mod:`ml_backend.prompts`);
``{"result": []}`` (the reviewer removed the last smart region) answers an empty result, which clears the
suggestion in the editor. Region ids are stable, so the same request gives the same regions.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from castlab.config import Config
from castlab.labelstudio import client
from castlab.models.segmenter import Segmenter, load_segmenter
from castlab.segment.characters import CharacterScorer, CharacterSettings, EvidenceDetector, character_instances
from ml_backend.errors import BackendError
from ml_backend.images import LabelStudioSource, load_image
from ml_backend.kinds import MasksConfig, project_config
from ml_backend.predictor import Batch, Entry
from ml_backend.prompts import parse_context, prompt_results

logger = logging.getLogger("ml_backend")

MODEL_CLASS = "castlab.SAM2Segmenter"
Found = tuple[np.ndarray, str, tuple[str, ...], float]  # mask, brush label, region id parts, score


def load_embedder(cfg: Config) -> Any:
    """The open_clip embedder that scores character instances (imported only when loaded)."""
    from castlab.models.embedder import load_embedder as load

    return load(cfg)


def _region_id(*parts: str) -> str:
    return hashlib.sha1(":".join(parts).encode()).hexdigest()[:10]


class MasksPredictor:
    """SAM2 segmenter and curate's character detector/scorer, loaded once on first use (thread-safe)."""

    def __init__(
        self,
        cfg: Config,
        segmenter_factory: Callable[[Config], Segmenter] | None = None,
        embedder_factory: Callable[[Config], Any] | None = None,
        labelstudio: Callable[[], LabelStudioSource | None] = lambda: None,
    ) -> None:
        self.cfg = cfg
        self._segmenter_factory = segmenter_factory or load_segmenter
        self._embedder_factory = embedder_factory or load_embedder
        self._labelstudio = labelstudio
        self._segmenter: Segmenter | None = None
        self._characters: tuple[EvidenceDetector, CharacterScorer | None] | None = None
        self._lock = threading.Lock()

    def segmenter(self) -> Segmenter:
        if self._segmenter is None:
            with self._lock:
                if self._segmenter is None:
                    logger.info("loading segmenter (profile %s)", self.cfg.profile)
                    self._segmenter = self._segmenter_factory(self.cfg)
                    logger.info("segmenter ready: %s", self._segmenter.model_version)
        return self._segmenter

    def characters(self) -> tuple[EvidenceDetector, CharacterScorer | None]:
        """Evidence detector and character scorer, as curate uses them (no scorer without an embedder)."""
        if self._characters is None:
            with self._lock:
                if self._characters is None:
                    embedder = self._embedder_factory(self.cfg)
                    scorer = None if embedder is None else CharacterScorer.from_config(embedder, self.cfg)
                    self._characters = (EvidenceDetector.from_config(self.cfg), scorer)
        return self._characters

    @property
    def model_version(self) -> str:
        return self.segmenter().model_version

    def setup(self) -> None:
        """Load the segmenter, run one tiny prompt and build the character scorer."""
        self.segmenter().predict_image(np.zeros((32, 32, 3), np.uint8), points=[(16.0, 16.0)], labels=[1])
        self.characters()

    def health(self) -> dict[str, Any]:
        seg = self._segmenter
        if seg is None:
            return {"model_loaded": False}
        cache = {"images": seg.cached_images, "hits": seg.cache_hits, "misses": seg.cache_misses}
        return {"model_loaded": True, "model_version": seg.model_version, "embedding_cache": cache}

    def fit(self, event: str, data: dict[str, Any], **kwargs: Any) -> bool:
        return False  # reviewed masks come back through review-sync, not webhooks

    def predict(
        self, tasks: list[Any], context: Any = None, *, config: MasksConfig | None = None,
        batch: Batch | None = None, **kwargs: Any,
    ) -> list[Entry]:  # fmt: skip
        config = config or project_config("masks")
        prompts = prompt_results(context)
        version = self.model_version
        return (batch or Batch()).each(tasks, version, lambda task, n: self._task(task, n, config, prompts, version))

    def _task(self, task: Any, n: int, config: MasksConfig, prompts: list[Any] | None, version: str) -> Entry:
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise BackendError(400, f"tasks[{n}]: expected an object with 'data'")
        if config.data_key not in task["data"]:
            raise BackendError(400, f"tasks[{n}] (id {task.get('id')}): data has no '{config.data_key}' image")
        image = load_image(task["data"][config.data_key], self._labelstudio)
        found = self._auto(image, config) if prompts is None else self._prompted(task, image, config, prompts)
        image_key = Segmenter.image_key(image)
        regions = [self._region(image, config, mask, label, _region_id(version, image_key, *key), score)
                   for mask, label, key, score in found]
        return {
            "result": regions,
            "score": float(np.mean([score for *_, score in found])) if found else 0.0,
            "model_version": version,
        }

    def _auto(self, image: np.ndarray, config: MasksConfig) -> list[Found]:
        """curate's character instances, all with the brush's first label."""
        detector, scorer = self.characters()
        settings = CharacterSettings.from_config(self.cfg)
        found = character_instances(self.segmenter(), image, settings, detector, scorer)
        return [(c.instance.mask, config.labels[0], ("auto", str(i)), c.instance.score) for i, c in enumerate(found)]

    def _prompted(self, task: Any, image: np.ndarray, config: MasksConfig, prompts: list[Any]) -> list[Found]:
        """One mask per prompt group (none for an empty context), empty masks left out."""
        found: list[Found] = []
        height, width = image.shape[:2]
        for group in parse_context(prompts, width, height, config.image_name) if prompts else []:
            mask, score = self.segmenter().predict_image(
                image, points=group.points or None, labels=group.point_labels or None, box=group.box
            )
            if not mask.any():
                logger.info("task %s: prompt group %s gave an empty mask", task.get("id"), group.key()[:8])
                continue
            found.append((mask, config.brush_label(group.label), (group.key(),), score))
        return found

    @staticmethod
    def _region(
        image: np.ndarray, config: MasksConfig, mask: np.ndarray, label: str, region_id: str, score: float
    ) -> Entry:
        height, width = image.shape[:2]
        region = client.brush_result(
            mask.astype(np.uint8), label, width, height,
            from_name=config.brush_name, to_name=config.image_name, region_id=region_id,
        )  # fmt: skip
        region["score"] = float(score)
        return region
