"""The pipeline run's state file: steps done once, a resumed run redoing only what it had not finished, the waits
review-advance resumes, and what `castlab status RUN` shows."""

from __future__ import annotations

from pathlib import Path

from castlab.pipeline.state import PipelineState, describe, find, waiting_for
from flows.pipeline import _each, _step


def test_a_step_runs_once_and_an_interrupted_one_is_redone(workspace: Path):
    state = PipelineState.open("run-1", "lucky-otter", {"videos": ["a.mp4"]})
    calls: list[bool] = []
    assert _step(state, "curate", lambda redo: calls.append(redo) or {"run_dir": str(workspace / "runs/x")}) == {
        "run_dir": str(workspace / "runs/x")}
    _step(state, "curate", lambda redo: calls.append(redo) or {})
    assert calls == [False]  # done: skipped
    state.begin("identify")  # a worker died inside identify
    again = PipelineState.open("run-1")
    _step(again, "identify", lambda redo: calls.append(redo) or {"clusters": 1})
    assert calls == [False, True] and again.done("identify")
    assert PipelineState.open("run-1").result("identify") == {"clusters": 1}


def test_per_character_work_resumes_after_the_last_finished_character(workspace: Path):
    state = PipelineState.open("run-2")
    seen: list[tuple[str, bool]] = []

    def crash_on_b(name: str, item: int, redo: bool) -> int:
        seen.append((name, redo))
        if name == "b" and not redo:
            raise RuntimeError("worker killed")
        return item * 10

    try:
        _each(state, "train", {"a": 1, "b": 2, "c": 3}, crash_on_b)
    except RuntimeError:
        pass
    resumed = PipelineState.open("run-2")
    assert _each(resumed, "train", {"a": 1, "b": 2, "c": 3}, crash_on_b) == {"a": 10, "b": 20, "c": 30}
    assert seen == [("a", False), ("b", False), ("b", True), ("c", False)]  # a kept, b redone, c once


def test_waits_are_found_by_run_and_review_and_shown(workspace: Path):
    run_dir = workspace / "runs" / "20261202-curate"
    run_dir.mkdir(parents=True)
    state = PipelineState.open("run-3", "brave-heron")
    state.finish("curate", {"run_dir": str(run_dir), "instances": 12})
    state.wait("masks-review", [str(run_dir)])
    assert [s.flow_run_id for s in waiting_for(run_dir, "masks")] == ["run-3"]
    assert waiting_for(run_dir, "identities") == [] and waiting_for(workspace / "runs" / "other", "masks") == []
    for key in ("run-3", "brave-heron", str(run_dir), "runs/20261202-curate", "20261202-curate"):
        assert find(key) is not None and find(key).flow_run_id == "run-3", key
    assert find("nobody") is None
    lines = describe(find("brave-heron"))
    assert lines[0].startswith("pipeline brave-heron (run-3): waiting")
    assert any(line.split()[:2] == ["curate", "done"] and "instances=12" in line for line in lines)
    assert any(line.split()[:2] == ["masks-review", "waiting"] for line in lines)
    assert any(line.split()[:2] == ["registry", "pending"] for line in lines)
    state.finish("masks-review", {"annotated": 3, "tasks": 3})
    assert waiting_for(run_dir, "masks") == []  # review-advance resumes no run that goes on already
    state.end("stopped", "no character dataset was built")
    assert "stopped - no character dataset was built" in describe(PipelineState.open("run-3"))[0]


def test_a_corrupt_state_file_is_skipped(workspace: Path):
    (workspace / "pipelines").mkdir()
    (workspace / "pipelines" / "bad.json").write_text("{not json")
    PipelineState.open("good")
    assert find("good") is not None and find("bad") is None
