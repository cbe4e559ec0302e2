"""A track's masks as reviewers left them: ``review.json`` (written by the tracks review sync) over the tracker's
``track.json``, frame by frame and object by object."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from castlab.errors import InputError


@dataclass(frozen=True)
class ObjectFrames:
    """One object's per-frame mask files (None: absent) over its track's frames, and where they came from."""

    folder: Path
    result: dict[str, Any]
    obj: dict[str, Any]
    masks: dict[int, Path | None]  # frame index → mask file (None: absent there)
    reviewed: set[int]  # the frames whose mask a reviewer gave


def read_review(folder: Path) -> dict[str, Any]:
    path = folder / "review.json"
    if not path.is_file():
        return {"frames": {}, "objects": {}}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(path, f"is not valid JSON ({exc})") from exc


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
