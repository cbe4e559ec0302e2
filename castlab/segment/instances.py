"""Frames → SAM2 character instances: mask PNGs, soft-edged RGBA crops, inpainted backgrounds,
``segmentation_results.json``, manifest rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from castlab.config import Config
from castlab.errors import InputError
from castlab.layers import write_instance_layers
from castlab.models.segmenter import Segmenter
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


def segment_frames(
    segmenter: Segmenter, frame_rows: list[dict[str, Any]], run_dir: Path, cfg: Config,
    detector: EvidenceDetector | None = None, scorer: CharacterScorer | None = None,
) -> list[dict[str, Any]]:
    """Segment every kept frame row; write ``masks/<id>.png``, ``character/<id>.png`` (alpha = SAM2's
    probability inside the mask), ``background/<frame>.png`` (instances inpainted away, see
    :mod:`castlab.segment.background`) and ``segmentation_results.json`` under `run_dir`; return one manifest
    row per instance.

    Instances are character-aware (:func:`castlab.segment.characters.character_instances`) when a `detector` of
    face/person evidence or a character `scorer` is given, else SAM2's automatic instances as they come.
    Instance row ids are ``inst:<videoid>:<frameidx>:<k>`` (k = rank within the frame).
    Rejected frame rows are skipped. `cfg` is the run's config (segmenter settings are already in
    `segmenter`; the ``segmentation.background_*`` settings are read here).
    """
    run_dir = Path(run_dir).resolve()
    background = BackgroundSettings.from_config(cfg)  # fail fast (e.g. lama unavailable) before any work
    characters = CharacterSettings.from_config(cfg)
    kept = [r for r in frame_rows if r.get("kind", "frame") == "frame" and r.get("status", "kept") == "kept"]
    rows: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for frame in tqdm(kept, unit="frame", desc="segment", mininterval=0.5, leave=False):
        image = load_rgb(frame["path"])
        if detector is None and scorer is None:
            found = [CharacterInstance(inst, "auto", None) for inst in segmenter.auto_instances(image)]
        else:
            found = character_instances(segmenter, image, characters, detector, scorer)
        instances = [c.instance for c in found]
        frame_result = {"row_id": frame["row_id"], "frame_path": frame["path"], "width": image.shape[1],
                        "height": image.shape[0], "instances": []}
        video, index = str(frame["video_id"]), int(frame["frame_index"])  # parquet may hand back floats
        bg_path = write_background(image, [inst.mask for inst in instances], run_dir, frame["row_id"], background)
        bg_rel = bg_path.relative_to(run_dir).as_posix() if bg_path is not None else None
        frame_result["background_path"] = bg_rel
        for k, (inst, how) in enumerate(zip(instances, found, strict=True)):
            row_id = f"inst:{video}:{index}:{k}"
            layers = write_instance_layers(image, inst.mask, run_dir, row_id, alpha=inst.alpha)
            rows.append({
                "row_id": row_id,
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
                "model_version": segmenter.model_version,
                "status": "kept",
                "reject_reason": None,
            })
            frame_result["instances"].append({
                "row_id": row_id, "bbox": layers["bbox"], "area": layers["area"], "score": rows[-1]["score"],
                "prompt_point": list(inst.point) if inst.point else None,
                "source": how.source, "character_score": rows[-1]["character_score"],
                "evidence_box": [round(v, 1) for v in how.evidence_box] if how.evidence_box else None,
                "mask_path": Path(layers["mask_path"]).relative_to(run_dir).as_posix(),
                "crop_path": Path(layers["crop_path"]).relative_to(run_dir).as_posix(),
                "background_path": bg_rel,
            })
        results.append(frame_result)
    write_json_atomic(run_dir / RESULTS_NAME, {
        "model_version": segmenter.model_version,
        "profile": cfg.profile,
        "alpha_threshold": segmenter.alpha,
        "background_inpaint": background.method,
        "frames": results,
        "instances": len(rows),
    })
    return rows
