"""``castlab showcase``: a track of a run as a showcase video (:mod:`castlab.video.showcase`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from castlab.layers import read_mask
from castlab.pictures import palette_colour
from castlab.video.reviewed import object_frames, object_label, read_review
from castlab.video.showcase import Overlay, write_showcase
from castlab.video.stage import TRACKS_DIR, load_track


def showcase_track(run_dir: Path, track_id: str, cfg: Any, out: Path | None = None, overlay: bool = False,
                   interpolate: str | None = None, force: bool = False) -> dict[str, Any]:
    """A track of the run as a showcase video (default ``tracks/<id>/showcase.mp4``); with `overlay`, every object's
    mask (the reviewed one where a reviewer saw the frame) and label drawn on; `interpolate` overrides the setting."""
    folder = Path(run_dir) / TRACKS_DIR / track_id
    result, review = load_track(folder), read_review(folder)
    settings = cfg.settings.video.showcase
    if interpolate is not None:
        settings = settings.model_copy(update={"interpolate": interpolate})
    overlays = None
    if overlay:
        per_object = [(object_label(o), palette_colour(o["obj_id"] - 1),
                       object_frames(folder, result, review, o).masks) for o in result["objects"]]
        overlays = [Overlay([(read_mask(masks[f["frame_index"]]), label, colour)
                             for label, colour, masks in per_object if masks[f["frame_index"]] is not None])
                    for f in result["frames"]]
    frames = [folder / f["frame_path"] for f in result["frames"]]
    return write_showcase(frames, Path(out) if out else folder / "showcase.mp4", float(settings.fps or result["fps"]),
                          settings, overlays=overlays, force=force)
