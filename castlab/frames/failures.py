"""Inputs a curate run could not process: recorded with their reason, skipped, and the rest of the batch goes on.

- A video that cannot be read (not a video, truncated, corrupt; the decoder's message names the file) becomes a
  manifest row ``kind="video"``, ``status="rejected"`` with its ``reject_reason``, and an entry of ``shots.json``'s
  ``failed`` section (the frame report lists them under "Failed inputs").
- A frame that a later step cannot read, or whose outputs cannot be written, is rejected with its reason
  (``reject_codes`` ``unreadable`` / ``write_failed``): :func:`process_each` redoes a failed chunk row by row.

Only bad-input errors count (:data:`INPUT_ERRORS`); anything else is a bug and still stops the run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av

from castlab.errors import InputError
from castlab.frames.extract import record_failed_input
from castlab.frames.quality import UNREADABLE, WRITE_FAILED
from castlab.frames.video import video_id

log = logging.getLogger(__name__)

INPUT_ERRORS: tuple[type[BaseException], ...] = (InputError, OSError, av.error.FFmpegError)
VIDEO_KIND = "video"


def reason_of(path: Path | str, exc: BaseException) -> str:
    """The problem as one line that names the file (an :class:`InputError` already does)."""
    if isinstance(exc, InputError):
        return str(exc)
    text = str(exc) or type(exc).__name__
    return text if str(path) in text else f"{path}: {text}"


def failed_video(path: Path, run_dir: Path, exc: BaseException) -> dict[str, Any]:
    """Record an unreadable video in the run (``shots.json``); its manifest row. Frames it left are removed."""
    path = Path(path)
    try:
        vid: str | None = video_id(path)
    except InputError:  # not even its bytes can be read
        vid = None
    key = f"{vid or 'unread'}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"  # two copies: two records
    reason = reason_of(path, exc)
    frames_dir = Path(run_dir) / "frames"
    if vid is not None:  # frames of a pass that then failed
        for partial in [*frames_dir.glob(f"{vid}_*"), *frames_dir.glob(f".{vid}_*")]:
            partial.unlink(missing_ok=True)
    record_failed_input(Path(run_dir), key, {"video": str(path), "video_id": vid, "reason": reason})
    log.warning("skipped %s", reason)
    return {"row_id": f"video:{key}", "kind": VIDEO_KIND, "parent_id": None, "video": str(path), "video_id": vid,
            "status": "rejected", "reject_reason": reason, "reject_codes": UNREADABLE}


def failed_videos(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """``{"input", "reason"}`` of every failed video among `rows`."""
    return [{"input": str(r["video"]), "reason": str(r["reject_reason"])}
            for r in rows if r.get("kind") == VIDEO_KIND and r.get("status") == "rejected"]


def failed_frames(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """``{"input", "reason"}`` of every frame a step could not read or write (not the gates' rejections)."""
    return [{"input": str(r.get("path") or r["row_id"]), "reason": str(r["reject_reason"])} for r in rows
            if r.get("kind", "frame") == "frame" and r.get("reject_codes") in (UNREADABLE, WRITE_FAILED)]


def rejected_row(row: dict[str, Any], step: str, exc: BaseException) -> dict[str, Any]:
    """The manifest change rejecting `row` because `step` failed on it (unreadable input or unwritable output)."""
    code = UNREADABLE if isinstance(exc, InputError) else WRITE_FAILED
    reason = f"{step} failed: {reason_of(row.get('path') or row['row_id'], exc)}"
    return {"row_id": row["row_id"], "status": "rejected", "reject_reason": reason, "reject_codes": code}


def process_each(
    rows: list[dict[str, Any]], work: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], step: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(work(rows), [])``; when `work` fails on bad input, `work` once per row instead: ``(what the good rows
    gave, rejections of the rows it failed on)``. Costs one more pass over a chunk only when one of its rows is bad."""
    try:
        return work(rows), []
    except INPUT_ERRORS as exc:
        log.warning("%s: %s; redoing the chunk row by row", step, exc)
    out: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for row in rows:
        try:
            out += work([row])
        except INPUT_ERRORS as exc:
            rejected.append(rejected_row(row, step, exc))
            log.warning("%s", rejected[-1]["reject_reason"])
    return out, rejected


def none_readable(source: object, failed: list[dict[str, str]]) -> InputError:
    """The error of a run where no video could be read (`source`: what was asked for)."""
    reasons = "; ".join(f["reason"] for f in failed[:3]) + (f"; … {len(failed) - 3} more" if len(failed) > 3 else "")
    return InputError(source, f"no video could be read ({len(failed)} failed: {reasons})")


def check_videos(items: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """(readable videos, ``{"input", "reason"}`` of the unreadable ones) under `items` (files or folders), each
    probed as extraction would (:func:`castlab.frames.video.probe_video`); :func:`none_readable` when none is."""
    from castlab.frames.video import find_videos, probe_video

    readable: list[str] = []
    failed: list[dict[str, str]] = []
    for path in [p for item in items for p in find_videos(Path(item))]:
        try:
            probe_video(path)
            readable.append(str(path))
        except INPUT_ERRORS as exc:
            failed.append({"input": str(path), "reason": reason_of(path, exc)})
    if not readable:
        raise none_readable(", ".join(items), failed)
    return readable, failed
