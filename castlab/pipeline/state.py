"""A pipeline run's state: which steps are done, what they made, and which review the run waits for.

One JSON file per pipeline flow run, ``<workspace>/pipelines/<flow run id>.json``, written atomically by the
pipeline flow (its only writer); ``review-advance`` reads it to resume a run whose review is complete, and
``castlab status RUN`` shows it. A resumed run starts again from the top and skips every step marked done here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from castlab.typed import TYPE_NAMES
from castlab.workspace import workspace_root, write_json_atomic

TYPE_REVIEW_STEPS = tuple(f"{name}-review" for name in TYPE_NAMES)  # only the types a run asked for are shown
STEPS = ("curate", "masks-review", "identify", "identities-review", "caption", "captions-review", "prepare",
         *TYPE_REVIEW_STEPS, "dataset", "train", "evaluate", "checkpoints-review", "registry", "report")
REVIEW_OF_STEP = {**{f"{name}-review": name for name in TYPE_NAMES},
                  "masks-review": "masks", "identities-review": "identities", "captions-review": "captions",
                  "checkpoints-review": "checkpoints"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def pipelines_dir() -> Path:
    return workspace_root() / "pipelines"


@dataclass
class PipelineState:
    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, flow_run_id: str, name: str = "", parameters: dict[str, Any] | None = None) -> PipelineState:
        """The state of flow run `flow_run_id` (a new one the first time)."""
        path = pipelines_dir() / f"{flow_run_id}.json"
        state = cls.read(path)
        if state is None:
            state = cls(path, {"flow_run_id": flow_run_id, "flow_run_name": name, "created": _now(),
                               "parameters": parameters or {}, "status": "running", "steps": {}, "waiting": None})
            state.save()
        return state

    @classmethod
    def read(cls, path: Path) -> PipelineState | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return cls(path, data) if isinstance(data, dict) and "flow_run_id" in data else None

    def save(self) -> None:
        self.data["updated"] = _now()
        write_json_atomic(self.path, self.data)

    @property
    def flow_run_id(self) -> str:
        return str(self.data["flow_run_id"])

    @property
    def run_dir(self) -> str | None:
        return self.result("curate").get("run_dir")

    def done(self, step: str) -> bool:
        return (self.data["steps"].get(step) or {}).get("status") == "done"

    def result(self, step: str) -> dict[str, Any]:
        return dict((self.data["steps"].get(step) or {}).get("result") or {})

    def begin(self, step: str) -> None:
        entry = self.data["steps"].setdefault(step, {})
        entry.update(status="running", started=entry.get("started") or _now(), attempts=entry.get("attempts", 0) + 1)
        self.data["status"] = "running"
        self.save()

    def attempts(self) -> int:
        """How many times the step in progress was begun (1 unless a run died in it)."""
        return max((e.get("attempts", 0) for e in self.data["steps"].values() if e.get("status") == "running"),
                   default=0)

    def finish(self, step: str, result: dict[str, Any] | None = None) -> None:
        self.data["steps"].setdefault(step, {}).update(status="done", finished=_now(), result=result or {})
        self.data["waiting"] = None
        self.save()

    def wait(self, step: str, run_dirs: list[str]) -> None:
        """Record that the run waits for the review of `step` in `run_dirs` (set before checking it, so a review
        completed in between is seen by review-advance or by the check)."""
        entry = self.data["steps"].setdefault(step, {})
        entry.update(status="waiting", since=entry.get("since") or _now())
        self.data["waiting"] = {"step": step, "review": REVIEW_OF_STEP[step], "run_dirs": run_dirs,
                                "since": entry["since"]}
        self.data["status"] = "waiting"
        self.save()

    def end(self, status: str, reason: str = "") -> None:
        """The run is over: completed, stopped (nothing left to do, with the reason) or failed."""
        self.data.update(status=status, reason=reason, waiting=None, ended=_now())
        self.save()

    def waits_for(self, run_dir: Path, review: str) -> bool:
        waiting = self.data.get("waiting") or {}
        return (waiting.get("review") == review
                and any(Path(d).resolve() == run_dir.resolve() for d in waiting.get("run_dirs") or []))


def all_states() -> list[PipelineState]:
    return [s for p in sorted(pipelines_dir().glob("*.json")) if (s := PipelineState.read(p)) is not None]


def waiting_for(run_dir: Path, review: str) -> list[PipelineState]:
    """The pipeline runs waiting for `review` of `run_dir`."""
    return [s for s in all_states() if s.data.get("status") == "waiting" and s.waits_for(run_dir, review)]


def find(key: str) -> PipelineState | None:
    """A pipeline run by flow run id, flow run name or curate run folder (the newest match)."""
    matches = []
    for state in all_states():
        run_dir = state.run_dir
        names = {state.flow_run_id, str(state.data.get("flow_run_name") or "")}
        if run_dir:
            names |= {run_dir, Path(run_dir).name, f"runs/{Path(run_dir).name}"}
        if key.rstrip("/") in names or (run_dir and Path(key).resolve() == Path(run_dir).resolve()):
            matches.append(state)
    return max(matches, key=lambda s: str(s.data.get("created")), default=None)


def _brief(value: Any) -> str:
    """A result in a line: paths by their name, nested results in parentheses, empty values left out."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_brief(v)}" if not isinstance(v, dict) else f"{k} ({_brief(v)})"
                         for k, v in value.items() if v not in (None, {}, [], ""))
    if isinstance(value, list):
        return " ".join(_brief(v) for v in value)
    if isinstance(value, str) and "/" in value:
        return Path(value).name
    return str(value)


def describe(state: PipelineState) -> list[str]:
    """Lines for ``castlab status RUN``: one per step, with what it made or waits for."""
    data = state.data
    lines = [f"pipeline {data.get('flow_run_name') or state.flow_run_id} ({state.flow_run_id}): {data['status']}"
             + (f" - {data['reason']}" if data.get("reason") else "")]
    if state.run_dir:
        lines.append(f"  run folder: {state.run_dir}")
    for step in STEPS:
        if step in TYPE_REVIEW_STEPS and step not in data["steps"]:
            continue
        entry = data["steps"].get(step) or {}
        status = entry.get("status", "pending")
        detail = ""
        if status == "waiting":
            waiting = data.get("waiting") or {}
            detail = f"since {entry.get('since')}: the {waiting.get('review')} review in Label Studio"
        elif status == "done":
            detail = _brief({k: v for k, v in (entry.get("result") or {}).items() if k != "run_dir"})
        lines.append(f"  {step:<19} {status:<8} {detail}".rstrip())
    return lines
