"""Frames → SAM2 character instances: mask PNGs, RGBA crops, ``segmentation_results.json``, manifest rows."""

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
    segmenter: Segmenter, frame_rows: list[dict[str, Any]], run_dir: Path, cfg: Config
) -> list[dict[str, Any]]:
    """Segment every kept frame row; write ``masks/<id>.png``, ``character/<id>.png`` and
    ``segmentation_results.json`` under `run_dir`; return one manifest row per instance.

    Instance row ids are ``inst:<videoid>:<frameidx>:<k>`` (k = rank by score within the frame).
    Rejected frame rows are skipped. `cfg` is the run's config (settings are already in `segmenter`).
    """
    run_dir = Path(run_dir).resolve()
    kept = [r for r in frame_rows if r.get("kind", "frame") == "frame" and r.get("status", "kept") == "kept"]
    rows: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for frame in tqdm(kept, unit="frame", desc="segment", mininterval=0.5, leave=False):
        image = load_rgb(frame["path"])
        instances = segmenter.auto_instances(image)
        frame_result = {"row_id": frame["row_id"], "frame_path": frame["path"], "width": image.shape[1],
                        "height": image.shape[0], "instances": []}
        video, index = str(frame["video_id"]), int(frame["frame_index"])  # parquet may hand back floats
        for k, inst in enumerate(instances):
            row_id = f"inst:{video}:{index}:{k}"
            layers = write_instance_layers(image, inst.mask, run_dir, row_id)
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
                "bbox": layers["bbox"],
                "area": layers["area"],
                "score": round(inst.score, 6),
                "model_version": segmenter.model_version,
                "status": "kept",
                "reject_reason": None,
            })
            frame_result["instances"].append({
                "row_id": row_id, "bbox": layers["bbox"], "area": layers["area"], "score": rows[-1]["score"],
                "prompt_point": list(inst.point) if inst.point else None,
                "mask_path": Path(layers["mask_path"]).relative_to(run_dir).as_posix(),
                "crop_path": Path(layers["crop_path"]).relative_to(run_dir).as_posix(),
            })
        results.append(frame_result)
    write_json_atomic(run_dir / RESULTS_NAME, {
        "model_version": segmenter.model_version,
        "profile": cfg.profile,
        "alpha_threshold": segmenter.alpha,
        "frames": results,
        "instances": len(rows),
    })
    return rows
