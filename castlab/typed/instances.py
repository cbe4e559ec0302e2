"""The per-instance dataset types: candidates are the character instances whose mask a reviewer accepted,
corrected or drew, each seen in its frame.

- ``pose``: ViTPose keypoints (COCO-17, top-down on the instance box) → category (standing, walking, running,
  sitting, other) and view from the keypoint geometry (:mod:`castlab.pose.geometry`); the image is the instance's
  context crop (``dataset.context_margin``), its keypoints stored in that crop's pixels.
- ``expression``: the identity stage's face box (``face_bbox``) padded and gated (:mod:`castlab.expression.crops`:
  no face, too small, blurred, occluded by something in front); its label is the caption's expression field when
  it names one (:func:`castlab.expression.labels.caption_label`; a run not captioned has none), else the open_clip
  zero-shot label; both are kept.

Crops are written to ``<run>/<type>/crops/<instance>.png``: the image the reviewer sees and the dataset uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from castlab.config import Config
from castlab.dataset.candidates import reviewed_instances
from castlab.dataset.images import context_region
from castlab.errors import InputError
from castlab.layers import media_path, safe_name
from castlab.manifest import Manifest, row_text
from castlab.pictures import save_png

FRAME_FIELDS = ("video_id", "video_path", "shot_id", "frame_index", "time_s", "split")


def instance_candidates(manifest: Manifest, run_dir: Path, name: str) -> list[dict[str, Any]]:
    """The reviewed instances of the run, each with its frame (``image_path``), the frame's shot fields and the
    run folder; for ``expression`` also the caption's expression phrase (``caption_expression``)."""
    frames = {str(f["row_id"]): f for f in manifest.rows(kind="frame")}
    instances = reviewed_instances(manifest)
    if not instances:
        raise InputError(run_dir, "has no reviewed instance masks: review the masks project, then "
                                  "`castlab review-sync`")
    phrases: dict[str, str] = {}
    if name == "expression" and (Path(run_dir) / "captions" / "captions.jsonl").is_file():  # captioned: its words
        from castlab.captions.schema import get_field
        from castlab.captions.stage import read_records

        phrases = {str(r["row_id"]): str(get_field(r["fields"], "expression") or "")
                   for r in read_records(Path(run_dir)) if r.get("fields")}
    rows = []
    for inst in instances:
        frame = frames.get(row_text(inst.get("parent_id")), {})
        rows.append({**{k: frame.get(k) for k in FRAME_FIELDS}, **inst, "image_path": row_text(frame.get("path")),
                     "run_dir": str(run_dir), "caption_expression": phrases.get(str(inst["row_id"]))})
    return rows


def crop_path(row: dict[str, Any], name: str) -> Path:
    return Path(row["run_dir"]) / name / "crops" / f"{safe_name(str(row['row_id']))}.png"


def _save(image: Image.Image, path: Path) -> str:
    save_png(image, path)
    return str(path)


def _box(row: dict[str, Any]) -> list[int] | None:
    value = row.get("bbox")
    box = [] if value is None else [int(v) for v in np.asarray(value).ravel().tolist()]
    return box if len(box) == 4 and box[2] > 0 and box[3] > 0 else None


def pose_look(record: dict[str, Any], row: dict[str, Any], frame: Image.Image, models: Any, cfg: Config
              ) -> Image.Image | None:
    """Keypoints, category and view of one instance; its context crop (None when it has no box)."""
    from castlab.pose.geometry import normalise, pose_category, pose_view

    box = _box(row)
    if box is None:
        record.update(status="rejected", reason="no_box", detail="the instance has no mask box")
        return None
    keypoints = models.pose.keypoints(frame, [tuple(box)])[0]
    region = context_region(box, float(cfg.dataset.context_margin), frame.size)
    crop = frame.crop(tuple(region))
    local = keypoints.copy()
    local[:, :2] -= (region[0], region[1])
    normalised = normalise(keypoints, cfg.pose)
    record.update(
        image=_save(crop, crop_path(row, "pose")), crop_box=region, keypoints=np.round(local, 2).tolist(),
        keypoints_norm=None if normalised is None else np.round(np.nan_to_num(normalised, nan=0.0), 4).tolist(),
        measured={"category": pose_category(keypoints, cfg.pose), "view": pose_view(keypoints, cfg.pose)})
    return crop


def _mask(row: dict[str, Any], size: tuple[int, int]) -> np.ndarray | None:
    path = media_path(row.get("mask_path"))
    if path is None or not path.is_file():
        return None
    with Image.open(path) as opened:
        mask = np.asarray(opened.convert("L")) > 127
    return mask if mask.shape == (size[1], size[0]) else None


def expression_look(record: dict[str, Any], row: dict[str, Any], frame: Image.Image, models: Any, cfg: Config
                    ) -> Image.Image | None:
    """The gated face crop of one instance and its expression label; None when a gate rejected it."""
    from castlab.expression.crops import face_crop
    from castlab.expression.labels import caption_label

    bbox = row.get("face_bbox")
    face = face_crop(np.asarray(frame), None if bbox is None else list(np.asarray(bbox).ravel()),
                     _mask(row, frame.size), cfg)
    record.update(face_sharpness=face.sharpness, face_occlusion=face.occlusion)
    if face.reason is not None:
        record.update(status="rejected", reason=face.reason, detail=face.detail)
        return None
    crop = Image.fromarray(face.image)
    from_caption = caption_label(row.get("caption_expression"), cfg)
    zero_shot = models.expression.score([crop])[0]
    record.update(image=_save(crop, crop_path(row, "expression")), crop_box=list(face.box),
                  measured={"expression": from_caption or zero_shot.label},
                  expression_sources={"caption": from_caption, "caption_phrase": row.get("caption_expression"),
                                      "zero_shot": zero_shot.label, "zero_shot_probability": zero_shot.probability})
    return crop
