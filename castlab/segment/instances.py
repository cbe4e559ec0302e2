"""Frames → SAM2 character instances: mask PNGs, soft-edged RGBA crops, inpainted backgrounds,
``segmentation_results.json``, manifest rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from castlab.config import Config
from castlab.errors import InputError
from castlab.layers import write_instance_layers
from castlab.manifest import Manifest
from castlab.models.segmenter import Segmenter
from castlab.rows import chunked
from castlab.segment.background import BackgroundSettings, write_background
from castlab.segment.characters import (
    CharacterInstance,
    CharacterScorer,
    CharacterSettings,
    EvidenceDetector,
    character_instances,
)
from castlab.workspace import write_json_atomic

RESULTS_NAME = "segmentation_results.json"


def load_rgb(path: str | Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except FileNotFoundError as exc:
        raise InputError(path, "frame image does not exist") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"is not a readable image ({exc})") from exc


@dataclass
class SegmentModels:
    """The models one segmentation chunk needs (loaded once per worker process)."""

    segmenter: Segmenter
    detector: EvidenceDetector | None = None
    scorer: CharacterScorer | None = None


def load_models(cfg: Config) -> SegmentModels:
    """SAM2, the character evidence detector and the open_clip character scorer of the active profile."""
    from castlab.models.embedder import load_embedder
    from castlab.models.segmenter import load_segmenter

    return SegmentModels(load_segmenter(cfg), EvidenceDetector.from_config(cfg),
                         CharacterScorer.from_config(load_embedder(cfg), cfg))


def process(rows: list[dict[str, Any]], cfg: Config, models: SegmentModels, *, run_dir: Path) -> list[dict[str, Any]]:
    """Segment one chunk of frame rows: write ``masks/<id>.png``, ``character/<id>.png`` (alpha = SAM2's
    probability inside the mask) and ``background/<frame>.png`` (instances inpainted away, see
    :mod:`castlab.segment.background`) under `run_dir`; return one manifest row per instance.

    Pure with respect to the run: no manifest or summary file is written, so chunks can run on other workers.
    Instances are character-aware (:func:`castlab.segment.characters.character_instances`) when `models` has a
    face/person evidence `detector` or a character `scorer`, else SAM2's automatic instances as they come.
    Instance row ids are ``inst:<videoid>:<frameidx>:<k>`` (k = rank within the frame). Rejected frame rows
    are skipped.
    """
    run_dir = Path(run_dir).resolve()
    segmenter, detector, scorer = models.segmenter, models.detector, models.scorer
    background = BackgroundSettings.from_config(cfg)  # fail fast (e.g. lama unavailable) before any work
    characters = CharacterSettings.from_config(cfg)
    out: list[dict[str, Any]] = []
    for frame in tqdm(kept_frames(rows), unit="frame", desc="segment", mininterval=0.5, leave=False):
        image = load_rgb(frame["path"])
        if detector is None and scorer is None:
            found = [CharacterInstance(inst, "auto", None) for inst in segmenter.auto_instances(image)]
        else:
            found = character_instances(segmenter, image, characters, detector, scorer)
        instances = [c.instance for c in found]
        video, index = str(frame["video_id"]), int(frame["frame_index"])  # parquet may hand back floats
        bg_path = write_background(image, [inst.mask for inst in instances], run_dir, frame["row_id"], background)
        for k, (inst, how) in enumerate(zip(instances, found, strict=True)):
            layers = write_instance_layers(image, inst.mask, run_dir, f"inst:{video}:{index}:{k}", alpha=inst.alpha)
            out.append({
                "row_id": f"inst:{video}:{index}:{k}",
                "kind": "instance",
                "parent_id": frame["row_id"],
                "video_id": video,
                "shot_id": frame.get("shot_id"),
                "split": frame.get("split"),
                "frame_index": index,
                "mask_path": layers["mask_path"],
                "crop_path": layers["crop_path"],
                "background_path": str(bg_path) if bg_path is not None else None,
                "bbox": layers["bbox"],
                "area": layers["area"],
                "score": round(inst.score, 6),
                "source": how.source,
                "character_score": None if how.character_score is None else round(how.character_score, 6),
                "prompt_point": list(inst.point) if inst.point else None,
                "evidence_box": [round(v, 1) for v in how.evidence_box] if how.evidence_box else None,
                "model_version": segmenter.model_version,
                "status": "kept",
                "reject_reason": None,
            })
    return out


def kept_frames(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("kind", "frame") == "frame" and r.get("status", "kept") == "kept"]


def write_results(run_dir: Path, frames: list[dict[str, Any]], instances: list[dict[str, Any]], cfg: Config,
                  model_version: str, alpha: float) -> Path:
    """``segmentation_results.json``: per kept frame, its size, background layer and instances (from the rows);
    `model_version` and `alpha` (threshold) are the segmenter's."""
    run_dir = Path(run_dir).resolve()

    def rel(path: Any) -> str | None:
        return Path(path).relative_to(run_dir).as_posix() if path else None

    by_frame: dict[str, list[dict[str, Any]]] = {}
    for inst in instances:
        by_frame.setdefault(inst["parent_id"], []).append(inst)
    results = []
    for frame in kept_frames(frames):
        members = by_frame.get(frame["row_id"], [])
        background = rel(members[0]["background_path"]) if members else None
        results.append({
            "row_id": frame["row_id"], "frame_path": frame["path"], "width": frame.get("width"),
            "height": frame.get("height"), "background_path": background,
            "instances": [{
                "row_id": i["row_id"], "bbox": i["bbox"], "area": i["area"], "score": i["score"],
                "prompt_point": i["prompt_point"], "source": i["source"], "character_score": i["character_score"],
                "evidence_box": i["evidence_box"], "mask_path": rel(i["mask_path"]), "crop_path": rel(i["crop_path"]),
                "background_path": background,
            } for i in members],
        })
    return write_json_atomic(run_dir / RESULTS_NAME, {
        "model_version": model_version,
        "profile": cfg.profile,
        "alpha_threshold": alpha,
        "background_inpaint": cfg.segmentation.background_inpaint,
        "frames": results,
        "instances": len(instances),
    })


def segment_frames(
    segmenter: Segmenter, frame_rows: list[dict[str, Any]], run_dir: Path, cfg: Config,
    detector: EvidenceDetector | None = None, scorer: CharacterScorer | None = None,
) -> list[dict[str, Any]]:
    """:func:`process` over `frame_rows`, ``segmentation.chunk_frames`` at a time, then
    ``segmentation_results.json``; returns the instance rows (the caller adds them to the manifest)."""
    models = SegmentModels(segmenter, detector, scorer)
    rows: list[dict[str, Any]] = []
    for chunk in chunked(frame_rows, cfg.segmentation.chunk_frames):
        rows += process(chunk, cfg, models, run_dir=run_dir)
    write_results(run_dir, frame_rows, rows, cfg, segmenter.model_version, segmenter.alpha)
    return rows


def run(run_dir: Path, cfg: Config, models: SegmentModels | None = None) -> dict[str, Any]:
    """Segment every kept frame of a run (:func:`segment_frames`); save the manifest."""
    manifest = Manifest.for_run(run_dir)
    models = models or load_models(cfg)
    rows = segment_frames(models.segmenter, manifest.rows(kind="frame", status="kept"), run_dir, cfg,
                          models.detector, models.scorer)
    manifest.add_rows(rows)
    manifest.save()
    return {"instances": len(rows), "model_version": models.segmenter.model_version}
