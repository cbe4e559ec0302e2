"""Which castlab run a Label Studio project's review belongs to, whether it is complete, and what comes next.

A run folder records every push (``labelstudio_push.json`` masks, ``identity_push.json`` identities,
``captions/captions_push.json`` captions, ``checkpoints_push.json`` an evaluation's blind pairs, ``<type>/push.json``
a dataset type's review, after which that type's dataset is built, ``tracks/push.json`` the track reviews, after
which the tracks are exported for video-editing training). A review is complete when ``reviews.complete_share`` of
the run's tasks in that project carry an annotation; the identity review counts the cluster project's tasks (the
decisions that name identities), or the instance project's when the run has no cluster (every instance was noise);
the track review counts the video tasks (a decision per track). The next stage starts once per run: its
claim is a marker file created exclusively (``<run>/pipeline/<stage>.started``), so a burst of annotations or the
same webhook twice starts one run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from castlab.config import Config
from castlab.typed import TYPE_NAMES
from castlab.workspace import relative_to_workspace, workspace_root

NEXT_STAGE = {"masks": "identify", "identities": "caption", "captions": "dataset", "checkpoints": None,
              "tracks": "export-video",  # every track of the run accepted or rejected → the VACE export
              **dict.fromkeys(TYPE_NAMES, "dataset")}  # a dataset type's review → that type's dataset
_PUSHES = (("masks", "labelstudio_push.json"), ("identities", "identity_push.json"),
           ("captions", "captions/captions_push.json"), ("checkpoints", "checkpoints_push.json"),
           ("tracks", "tracks/push.json"),
           *((name, f"{name}/push.json") for name in TYPE_NAMES))


@dataclass(frozen=True)
class Review:
    run_dir: Path
    stage: str                  # masks | identities | captions | checkpoints | a dataset type
    project_ids: tuple[int, ...]  # every project of the stage (identities: instances, clusters)
    counted_projects: tuple[int, ...]  # whose tasks decide completeness: the first holding any of the run's tasks

    @property
    def next_stage(self) -> str | None:
        return NEXT_STAGE[self.stage]

    @property
    def run(self) -> str:
        return relative_to_workspace(self.run_dir)

    @property
    def claim_name(self) -> str | None:
        """What starting the next stage claims: the stage, or ``dataset-<type>`` after a type's review."""
        if self.next_stage is None:
            return None
        return f"{self.next_stage}-{self.stage}" if self.stage in TYPE_NAMES else self.next_stage


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_reviews(run_dir: Path) -> list[Review]:
    """The reviews a run has pushed so far."""
    found = []
    for stage, name in _PUSHES:
        record = _read(run_dir / name)
        if stage == "identities" and record:
            ids = tuple(int(record[k]["project_id"]) for k in ("instances", "clusters") if k in record)
            found.append(Review(run_dir, stage, ids, tuple(reversed(ids))))
        elif stage == "tracks" and record:
            video, frames = int(record["video_project_id"]), int(record["frames_project_id"])
            found.append(Review(run_dir, stage, (video, frames), (video,)))
        elif record.get("project_id") is not None:
            found.append(Review(run_dir, stage, (int(record["project_id"]),), (int(record["project_id"]),)))
    return found


def all_reviews(cfg: Config) -> list[Review]:
    runs = workspace_root() / cfg.workspace.runs_dir
    return [r for d in sorted(runs.glob("*")) if d.is_dir() for r in run_reviews(d)]


def reviews_of_project(cfg: Config, project_id: int) -> list[Review]:
    return [r for r in all_reviews(cfg) if project_id in r.project_ids]


def review_progress(tasks: list[dict[str, Any]], review: Review) -> tuple[int, int]:
    """(annotated, total) over the run's tasks among `tasks` (one project's)."""
    from castlab.labelstudio.client import in_run, latest_annotation

    mine = [t for t in tasks if in_run(t, review.run)]  # a task re-used by a later run belongs to both
    return sum(1 for t in mine if latest_annotation(t) is not None), len(mine)


def is_complete(annotated: int, total: int, share: float) -> bool:
    return total > 0 and annotated >= share * total


def next_parameters(review: Review) -> dict[str, Any]:
    if review.stage in TYPE_NAMES:
        return {"run_dirs": [str(review.run_dir)], "dataset_type": review.stage}
    if review.next_stage == "dataset":
        return {"run_dirs": [str(review.run_dir)]}
    return {"run_dir": str(review.run_dir)}


def claim(run_dir: Path, stage: str, detail: dict[str, Any]) -> bool:
    """Create ``<run>/pipeline/<stage>.started`` exclusively: True for the one caller that created it."""
    marker = run_dir / "pipeline" / f"{stage}.started"
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"stage": stage, "claimed": datetime.now(timezone.utc).isoformat(), **detail}, fh, default=str)
    return True


def release(run_dir: Path, stage: str) -> None:
    """Give a claim back (the next stage could not be started)."""
    (run_dir / "pipeline" / f"{stage}.started").unlink(missing_ok=True)
