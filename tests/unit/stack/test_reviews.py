"""Reviews move the pipeline, the parts without servers: the receiver's answers, the shared secret, which run a
project's review belongs to, the once-only claim of the next stage, and the reconciliation's watermark."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from castlab.config import load_config
from castlab.errors import StackError
from castlab.reviews import advance, reconcile
from castlab.reviews.events import EVENT, annotation_event, project_of
from castlab.reviews.secret import HEADER, webhook_secret
from flows import receiver

SECRET = "s3cret-value"


@pytest.fixture
def sent(monkeypatch):
    events: list[list[dict]] = []
    monkeypatch.setattr(receiver, "post_events", lambda api, batch: events.append(batch))
    return events


@pytest.fixture
def app(sent):
    return TestClient(receiver.create_app(SECRET, "http://prefect.invalid/api"))


def test_the_receiver_refuses_requests_without_the_secret(app, sent):
    body = {"action": "ANNOTATION_CREATED", "project": {"id": 3}, "annotation": {"id": 8, "task": 2}}
    assert app.post("/labelstudio", json=body).status_code == 401
    assert app.post("/labelstudio", json=body, headers={HEADER: "wrong"}).status_code == 401
    assert sent == []  # nothing happened
    assert app.get("/health").status_code == 200


def test_the_receiver_turns_a_webhook_into_one_event(app, sent):
    body = {"action": "ANNOTATION_UPDATED", "project": {"id": 3}, "annotation": {"id": 8, "task": 2,
                                                                                "updated_at": "2026-12-02T10:00:00Z"}}
    answer = app.post("/labelstudio", json=body, headers={HEADER: SECRET})
    assert answer.status_code == 202 and answer.json() == {"accepted": 1}
    (batch,) = sent
    (event,) = batch
    assert event["event"] == EVENT and event["resource"]["prefect.resource.id"] == "castlab.labelstudio.project.3"
    assert event["payload"]["annotation_id"] == 8 and event["payload"]["source"] == "webhook"
    app.post("/labelstudio", json=body, headers={HEADER: SECRET})
    assert sent[1][0]["id"] == event["id"]  # the same delivery twice is the same event


@pytest.mark.parametrize("body", [{"action": "PROJECT_CREATED", "project": {"id": 1}}, {"action": "ANNOTATION_CREATED"},
                                  [1, 2]])
def test_the_receiver_refuses_what_is_not_an_annotation_webhook(app, sent, body):
    assert app.post("/labelstudio", json=body, headers={HEADER: SECRET}).status_code == 400
    assert app.post("/labelstudio", content=b"{not json", headers={HEADER: SECRET}).status_code == 400
    assert sent == []


def test_project_of_reads_both_payload_shapes():
    assert project_of({"project": {"id": 4}}) == 4
    assert project_of({"annotation": {"project": 5}}) == 5
    assert project_of({}) is None


def test_the_secret_file_is_private_and_created_once(workspace, monkeypatch):
    monkeypatch.delenv("CASTLAB_WEBHOOK_SECRET", raising=False)
    assert webhook_secret() is None
    first = webhook_secret(create=True)
    path = workspace / "stack" / "webhook.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 32
    assert webhook_secret(create=True) == first
    path.chmod(0o644)
    with pytest.raises(StackError, match="chmod 600"):
        webhook_secret()
    monkeypatch.setenv("CASTLAB_WEBHOOK_SECRET", "from-env")
    assert webhook_secret() == "from-env"


def _run(workspace: Path, name: str, pushes: dict[str, dict]) -> Path:
    run = workspace / "runs" / name
    for rel, record in pushes.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(json.dumps(record))
    return run


def test_a_project_maps_to_the_runs_that_pushed_to_it(workspace):
    cfg = load_config(profile="tiny")
    a = _run(workspace, "a-curate", {"labelstudio_push.json": {"project_id": 1},
                                     "identity_push.json": {"instances": {"project_id": 2},
                                                            "clusters": {"project_id": 3}}})
    b = _run(workspace, "b-curate", {"labelstudio_push.json": {"project_id": 1},
                                     "captions/captions_push.json": {"project_id": 4},
                                     "pose/push.json": {"project_id": 5},
                                     "tracks/push.json": {"video_project_id": 6, "frames_project_id": 7}})
    masks = advance.reviews_of_project(cfg, 1)
    assert [(r.run_dir, r.stage, r.next_stage) for r in masks] == [(a, "masks", "identify"), (b, "masks", "identify")]
    (identities,) = advance.reviews_of_project(cfg, 2)
    assert identities.counted_projects == (3, 2) and identities.next_stage == "caption"
    (captions,) = advance.reviews_of_project(cfg, 4)
    assert advance.next_parameters(captions) == {"run_dirs": [str(b)]}
    assert captions.claim_name == "dataset"
    (pose,) = advance.reviews_of_project(cfg, 5)  # a dataset type's review → that type's dataset, claimed apart
    assert (pose.stage, pose.next_stage, pose.claim_name) == ("pose", "dataset", "dataset-pose")
    assert advance.next_parameters(pose) == {"run_dirs": [str(b)], "dataset_type": "pose"}
    (tracks,) = advance.reviews_of_project(cfg, 7)  # a frame fix wakes the track review; the video tasks decide
    assert (tracks.stage, tracks.next_stage, tracks.counted_projects) == ("tracks", "export-video", (6,))
    assert advance.next_parameters(tracks) == {"run_dir": str(b)} and advance.reviews_of_project(cfg, 6) == [tracks]
    assert advance.reviews_of_project(cfg, 99) == []


def test_progress_counts_only_the_run_s_tasks(workspace):
    review = advance.Review(workspace / "runs" / "x", "masks", (1,), (1,))
    assert review.run == "runs/x"
    tasks = [{"data": {"castlab_run": review.run}, "annotations": [{"id": 1, "updated_at": "t"}]},
             {"data": {"castlab_run": review.run}, "annotations": []},
             {"data": {"castlab_run": "runs/other"}, "annotations": []}]
    assert advance.review_progress(tasks, review) == (1, 2)
    assert not advance.is_complete(1, 2, 1.0) and advance.is_complete(1, 2, 0.5)
    assert not advance.is_complete(0, 0, 0.5)  # nothing pushed: never complete


def test_the_next_stage_is_claimed_once(tmp_path):
    assert advance.claim(tmp_path, "identify", {"after": "masks"})
    assert not advance.claim(tmp_path, "identify", {"after": "masks"})
    assert json.loads((tmp_path / "pipeline" / "identify.started").read_text())["after"] == "masks"
    advance.release(tmp_path, "identify")
    assert advance.claim(tmp_path, "identify", {})


def test_reconciliation_finds_what_came_after_the_watermark(workspace):
    tasks = [{"id": 1, "annotations": [{"id": 10, "updated_at": "2026-12-02T10:00:00Z"}]},
             {"id": 2, "annotations": [{"id": 11, "updated_at": "2026-12-02T11:00:00Z"}]}]
    count, event, mark = reconcile.missed(7, tasks, "")  # a project that had no annotation when first seen
    assert count == 2 and mark == "2026-12-02T11:00:00Z" and event["payload"]["annotation_id"] == 11
    assert event["payload"]["source"] == "reconcile"
    assert reconcile.missed(7, tasks, "2026-12-02T10:30:00Z")[0] == 1
    assert reconcile.missed(7, tasks, mark) == (0, None, mark)
    reconcile.save_watermarks({"7": mark})
    assert reconcile.read_watermarks() == {"7": mark}


def test_annotation_event_ids_differ_per_update():
    one = annotation_event(1, "ANNOTATION_UPDATED", {"id": 5, "updated_at": "a"}, "webhook")
    two = annotation_event(1, "ANNOTATION_UPDATED", {"id": 5, "updated_at": "b"}, "webhook")
    assert one["id"] != two["id"]


def test_the_receiver_address_label_studio_uses_can_be_set(monkeypatch):
    import requests

    from castlab.reviews import hooks

    asked: list[str] = []

    class Answer:
        def __init__(self, status: int) -> None:
            self.status_code = status

    monkeypatch.setenv(hooks.URL_ENV, "http://receiver:4202/")
    monkeypatch.setattr(requests, "get", lambda url, timeout: asked.append(url) or Answer(200))
    assert hooks.receiver_url(load_config(profile="tiny")) == "http://receiver:4202/labelstudio"
    assert asked == ["http://receiver:4202/health"]

    def down(url: str, timeout: float) -> Answer:
        raise requests.ConnectionError("refused")

    monkeypatch.setattr(requests, "get", down)
    assert hooks.receiver_url(load_config(profile="tiny")) is None  # not answering: no webhook to a dead end


def test_review_advance_waits_out_the_trigger_window_before_it_syncs(monkeypatch):
    from datetime import datetime, timedelta, timezone

    import yaml

    from castlab.config import PROJECT_ROOT
    from flows import review_advance

    slept: list[float] = []
    monkeypatch.setattr(review_advance.time, "sleep", slept.append)
    now = datetime.now(timezone.utc)
    assert 6.0 <= review_advance.settle((now - timedelta(seconds=3)).isoformat(), 10) <= 7.0
    assert review_advance.settle(str(now - timedelta(seconds=30)), 10) == 0.0  # the window is over
    assert review_advance.settle(None) == review_advance.settle("not a time") == 0.0  # started by hand
    assert len(slept) == 1
    declared = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    trigger = next(d for d in declared if d["name"] == "review-advance")["triggers"][0]
    assert trigger["within"] == review_advance.DEBOUNCE_S and trigger["posture"] == "Reactive"
    assert trigger["parameters"]["event_time"] == "{{ event.occurred | string }}"
