"""The safety gate: frames that passed the quality gates are scored for NSFW content; above the bar they are rejected.

The scorer is the ``safety`` model role (:mod:`castlab.models.safety`: a transformers image classifier, or open_clip
zero-shot prompts, ``safety.backend``). Every scored frame records ``nsfw_score`` (0..1) and ``safety_model`` (the
scorer's ``model_version``, ``tiny-…`` under the tiny profile); a score above ``safety.threshold`` makes the row
``status="rejected"`` with ``reject_codes="nsfw"`` and a readable ``reject_reason``. The row stays in the manifest.
A frame file that cannot be read is rejected as ``unreadable`` (:func:`castlab.frames.failures.rejected_row`).

Why a frame gate, after the quality gates and before dedup: the gate then costs one small classifier pass per frame
that survived the cheap gates (blurred, dark or corrupt frames are never scored); a rejected frame is never
segmented, reviewed in Label Studio or cut into a dataset crop (crops keep real background from the frame, so a
per-instance check would miss what surrounds the character); and dedup only compares kept frames, so a safe frame
is never dropped as the duplicate of an unsafe one. ``safety.enabled: false`` turns it off: no model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from castlab.config import Config
from castlab.errors import InputError
from castlab.frames.failures import rejected_row
from castlab.frames.quality import NSFW
from castlab.pictures import open_rgb

if TYPE_CHECKING:
    from castlab.models.safety import SafetyScorer

MODELS = "frames-safety"  # the worker_models cache name of the scorer
NSFW_SCORE = "nsfw_score"
SAFETY_MODEL = "safety_model"


def gate_frames(rows: list[dict[str, Any]], cfg: Config, scorer: SafetyScorer | None = None,
                desc: str = "safety") -> list[dict[str, Any]]:
    """`rows` with every kept frame scored (copies; other rows as they are). `scorer` defaults to the configured one,
    loaded once per process (:func:`castlab.orchestration.worker_models`) and only when a frame needs it; with
    ``safety.enabled: false`` nothing is loaded or scored."""
    if not cfg.safety.enabled:
        return rows
    out = [dict(r) for r in rows]
    todo = [r for r in out if r.get("status") == "kept" and r.get("kind", "frame") == "frame"]
    if not todo:
        return out
    if scorer is not None:
        _score(todo, cfg, scorer, desc)
        return out
    from castlab.models.safety import load_safety_scorer
    from castlab.orchestration import worker_models

    with worker_models(MODELS, cfg, load_safety_scorer) as loaded:
        _score(todo, cfg, loaded, desc)
    return out


def _score(rows: list[dict[str, Any]], cfg: Config, scorer: SafetyScorer, desc: str) -> None:
    threshold = float(cfg.safety.threshold)
    batch = int(cfg.safety.batch_size)
    with tqdm(total=len(rows), unit="frame", desc=desc, mininterval=0.5, leave=False) as bar:
        for start in range(0, len(rows), batch):
            chunk, images = [], []
            for row in rows[start : start + batch]:
                try:
                    images.append(open_rgb(Path(str(row["path"])), "for the safety gate"))
                    chunk.append(row)
                except InputError as exc:
                    row.update(rejected_row(row, "safety gate", exc))
            scores = scorer.score(images) if images else []
            for row, raw in zip(chunk, scores, strict=True):
                score = round(float(raw), 4)
                row.update({NSFW_SCORE: score, SAFETY_MODEL: scorer.model_version})
                if score > threshold:
                    row.update(status="rejected", reject_codes=NSFW,
                               reject_reason=f"nsfw: score {score:.3f} > {threshold:g}")
            bar.update(len(rows[start : start + batch]))
