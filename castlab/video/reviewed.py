"""A track's masks as reviewers left them: ``review.json`` (written by the tracks review sync) over the tracker's
``track.json``, frame by frame and object by object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from castlab.workspace import read_json

REVIEW_NAME = "review.json"  # tracks/<id>/review.json, written by the track review sync
@dataclass(frozen=True)
class ObjectFrames:
    """One object's per-frame mask files (None: absent) over its track's frames, and where they came from."""

    folder: Path
    result: dict[str, Any]
    obj: dict[str, Any]
    masks: dict[int, Path | None]  # frame index → mask file (None: absent there)
    reviewed: set[int]  # the frames whose mask a reviewer gave


def object_label(obj: dict[str, Any]) -> str:
    """How reviewers (and pictures) name a tracked object: ``"<object id> <name>"``, its id first."""
    return f"{obj['obj_id']} {obj['label']}"


def read_review(folder: Path) -> dict[str, Any]:
    """The track's ``review.json``; no decisions and no reviewed frames before the first review-sync."""
    path = folder / REVIEW_NAME
    return read_json(path) if path.is_file() else {"frames": {}, "objects": {}}


def object_frames(folder: Path, result: dict[str, Any], review: dict[str, Any], obj: dict[str, Any]
                  ) -> ObjectFrames:
    """The object's masks frame by frame, reviewed over tracked."""
    key = str(obj["obj_id"])
    masks: dict[int, Path | None] = {}
    reviewed: set[int] = set()
    for frame in result["frames"]:
        index = frame["frame_index"]
        seen = review["frames"].get(str(index), {})
        if seen.get("state") == "reviewed":
            entry = seen["objects"].get(key)
            masks[index] = folder / entry["mask_path"] if isinstance(entry, dict) else None
            reviewed.add(index)
        else:
            entry = frame["objects"].get(key)
            masks[index] = folder / entry["mask_path"] if entry else None
    return ObjectFrames(folder, result, obj, masks, reviewed)
