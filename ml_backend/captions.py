"""The captions project's predictor: VLM caption suggestions, on demand (one task) and in batches (many tasks).

A task needs an ``image`` and a reviewed identity: ``data.identity`` (what castlab pushes), else the
instance's identity in its run's manifest (``castlab_run`` + ``instance``). Tasks are captioned
``captions.batch_size`` at a time with the same code the caption flow uses (schema → neutral terms →
assembly → QC, the run's usual identity traits from ``cluster_labels.json``). Every task gets an entry:
a prediction (TextArea + Choices), an error entry (no image, unreadable image, no identity, output failing
the schema), or, past the batch budget, an entry without ``result`` that Label Studio asks for again. A
request whose tasks all fail answers 422, whatever each task's reason. The captioner and the open_clip
embedder (which scores the captions) come from injected factories, loaded on first use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from castlab.captions.stage import (
    CaptionSettings,
    base_record,
    caption_image,
    finish_records,
    generate_fields,
    identified,
    read_labels,
)
from castlab.config import Config
from castlab.errors import CastlabError, InputError
from castlab.labelstudio.projects.captions import prediction
from castlab.manifest import Manifest
from ml_backend.errors import BackendError
from ml_backend.images import LabelStudioSource, load_image, task_run_dir
from ml_backend.kinds import CaptionsConfig, project_config
from ml_backend.predictor import Batch, Entry

logger = logging.getLogger("ml_backend")

ImageLoader = Callable[[Any], np.ndarray]  # task data value → RGBA array


@dataclass
class _Ready:
    """A task ready to caption: its position, record, image and its run's context."""

    n: int
    record: dict[str, Any]
    image: Image.Image
    run: str
    usual: dict[str, dict[str, str]]
    known: list[str]


def _unprocessable(message: str) -> BackendError:
    return BackendError(422, message)  # a caption request whose tasks all fail answers 422


class CaptionsPredictor:
    """Captioner and embedder (loaded once, on first use) and each run's context (read again when it changes)."""

    def __init__(self, cfg: Config, captioner_factory: Callable[[Config], Any] | None = None,
                 embedder_factory: Callable[[Config], Any] | None = None,
                 labelstudio: Callable[[], LabelStudioSource | None] = lambda: None) -> None:
        self.cfg = cfg
        self.settings = CaptionSettings.from_config(cfg)
        self._captioner_factory = captioner_factory
        self._embedder_factory = embedder_factory
        self._labelstudio = labelstudio
        self._models: tuple[Any, Any] | None = None
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[int, tuple[dict[str, Any], dict[str, Any], list[str]]]] = {}
        self.captioned = 0  # captions suggested since the start (shown by /health)
        self.load_error: str | None = None

    @property
    def loaded(self) -> bool:
        return self._models is not None

    def models(self) -> tuple[Any, Any]:
        """(captioner, open_clip embedder), loaded once on first use."""
        if self._models is None:
            with self._lock:
                if self._models is None:
                    from castlab.models.captioner import load_captioner
                    from castlab.models.embedder import load_embedder

                    captioner = (self._captioner_factory or load_captioner)(self.cfg)
                    embedder = (self._embedder_factory or load_embedder)(self.cfg)
                    logger.info("captioner ready: %s", captioner.model_version)
                    self._models = (captioner, embedder)
        return self._models

    def setup(self) -> None:
        """Load the models and compile the caption schema's token index (the slow part of a first call).

        A captioner that cannot be loaded (e.g. ``models.full.captioner.model`` not set) does not stop the
        backend: masks and identities still work; caption requests answer the error, /health shows it."""
        from castlab.captions.schema import CaptionFields

        try:
            captioner, _ = self.models()
        except CastlabError as exc:
            self.load_error = str(exc)
            logger.warning("captioner not loaded, caption requests will fail until it is: %s", exc)
            return
        if hasattr(captioner, "schema_index"):
            captioner.schema_index(CaptionFields)

    @property
    def model_version(self) -> str:
        return str(self.models()[0].model_version)

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = {"captioner_loaded": self.loaded, "captions_suggested": self.captioned}
        if self.load_error:
            body["captioner_error"] = self.load_error
        return body

    def fit(self, event: str, data: dict[str, Any], **kwargs: Any) -> bool:
        return False  # reviewed captions come back through review-sync, not webhooks

    def _run(self, run_rel: Any) -> tuple[dict[str, Any], dict[str, str], list[str]]:
        """(instance rows, usual traits per identity, known identities) of a run; empty without a run."""
        if not isinstance(run_rel, str) or not run_rel:
            return {}, {}, []
        with self._lock:
            run_dir = task_run_dir(run_rel, "caption")
            stamp = (run_dir / "manifest.parquet").stat().st_mtime_ns
            cached = self._runs.get(run_rel)
            if cached is None or cached[0] != stamp:  # read again after review-sync or caption rewrote it
                rows = {r["row_id"]: r for r in Manifest.for_run(run_dir).rows(kind="instance")}
                labels = read_labels(Path(run_dir))
                usual = {name: label.get("usual") or {} for name, label in labels.items()}
                known = sorted({i for r in rows.values() if (i := identified(r))})
                self._runs[run_rel] = cached = (stamp, (rows, usual, known))
            return cached[1]

    def _prepare(self, task: Any, n: int, key: str, load: ImageLoader, version: str) -> _Ready:
        """One task's record, image and run context, or BackendError saying what is missing."""
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise BackendError(400, f"tasks[{n}]: expected an object with 'data'")
        data = task["data"]
        if key not in data:
            raise BackendError(400, f"tasks[{n}] (id {task.get('id')}): data has no '{key}' to caption")
        rows, usual, known = self._run(data.get("castlab_run"))
        identity = str(data.get("identity") or "").strip() or None
        row = rows.get(str(data.get("instance")))
        if identity is None and row is not None:
            identity = identified(row)
        if identity is None:
            raise BackendError(422, f"tasks[{n}] (id {task.get('id')}): instance has no reviewed identity "
                               "(review identities, then review-sync)")
        try:
            image = caption_image(Image.fromarray(load(data[key])), self.settings.background,
                                  self.settings.max_side, f"tasks[{n}] (id {task.get('id')})")
        except InputError as exc:
            raise BackendError(422, str(exc)) from exc
        record = base_record(str(data.get("instance") or task.get("id")), identity, self.settings, version)
        return _Ready(n, record, image, str(data.get("castlab_run") or ""), usual, known or [identity])

    def predict(
        self, tasks: list[Any], context: Any = None, *, config: CaptionsConfig | None = None,
        batch: Batch | None = None, **kwargs: Any,
    ) -> list[Entry]:  # fmt: skip
        """One entry per task, in order: tasks are read first, then the readable ones captioned in chunks."""
        config = config or project_config("captions")
        batch = batch or Batch()
        captioner, embedder = self.models()
        version = str(captioner.model_version)

        def load(reference: Any) -> np.ndarray:
            return load_image(reference, self._labelstudio, mode="RGBA")

        entries: list[Entry | None] = [None] * len(tasks)
        ready: list[_Ready] = []
        for n, task in enumerate(tasks):
            try:
                ready.append(self._prepare(task, n, config.data_key, load, version))
            except BackendError as exc:
                entries[n] = batch.failed(n, task, _unprocessable(exc.message), version)
        size = max(1, self.settings.batch_size)
        for start in range(0, len(ready), size):
            if start and batch.spent():  # no "result": Label Studio asks again next time
                later = ready[start:]
                for item, entry in zip(later, batch.left(len(later), version, "captioned"), strict=True):
                    entries[item.n] = entry
                break
            self._caption_chunk(ready[start : start + size], tasks, entries, batch, captioner, embedder, version)
        return [e or {} for e in entries]

    def _caption_chunk(self, chunk: list[_Ready], tasks: list[Any], entries: list[Entry | None], batch: Batch,
                       captioner: Any, embedder: Any, version: str) -> None:
        generate_fields(captioner, [c.image for c in chunk], [c.record for c in chunk], self.settings, self.cfg)
        captioned: dict[tuple[str, tuple[str, ...]], list[_Ready]] = {}
        for item in chunk:
            if item.record["status"] == "ok":
                captioned.setdefault((item.run, tuple(item.known)), []).append(item)
            else:
                entries[item.n] = batch.failed(item.n, tasks[item.n], _unprocessable(item.record["error"]), version)
        for items in captioned.values():  # assembled, scored and flagged together, one run's context each
            first = items[0]
            finish_records([c.record for c in items], [c.image for c in items], self.cfg, self.settings,
                           first.usual, first.known, embedder)
            for item in items:
                self.captioned += 1
                entries[item.n] = {**prediction(item.record), "flags": item.record["flags"]}
