"""Which image of each kept frame is its background: the layer re-inpainted from the reviewed masks, else the
curate-time layer (instances inpainted away), else, for a frame where neither the segmenter nor a reviewer found a
character, the frame itself. Frames whose masks are waiting for review, or whose review was invalid, give none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from castlab.manifest import Manifest, row_text

SOURCES = ("reviewed_layer", "layer", "empty_frame")


def background_candidates(manifest: Manifest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(candidates, skipped): one candidate per kept frame with ``image_path`` and ``background_source`` (one of
    :data:`SOURCES`) beside the frame's own columns; skipped frames with ``row_id`` and ``reason``."""
    instances: dict[str, list[dict[str, Any]]] = {}
    for inst in manifest.rows(kind="instance"):
        instances.setdefault(str(inst.get("parent_id")), []).append(inst)
    candidates, skipped = [], []
    for frame in manifest.rows(kind="frame", status="kept"):
        members = instances.get(str(frame["row_id"]), [])
        kept = [m for m in members if m.get("status") == "kept"]
        state = row_text(frame.get("review_state"))
        if state in ("pending", "invalid"):
            skipped.append({"row_id": frame["row_id"], "reason": f"masks review {state}: its background is not known"})
            continue
        layers = {row_text(m.get("background_path")) for m in kept} - {""}
        reviewed = {p for p in layers if Path(p).parent.name == "reviewed"}
        if reviewed:
            path, source = sorted(reviewed)[0], "reviewed_layer"
        elif layers:
            path, source = sorted(layers)[0], "layer"
        elif not kept:
            path, source = row_text(frame.get("path")), "empty_frame"
        else:
            skipped.append({"row_id": frame["row_id"], "reason": "characters without a background layer "
                                                                 "(segmentation.background_inpaint is none)"})
            continue
        candidates.append({**frame, "image_path": path, "background_source": source})
    return candidates, skipped
