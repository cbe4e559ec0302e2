"""The ML backend's caption suggestions over HTTP: batches, per-task outcomes, budget, the real tiny VLM."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from scripted_captioner import ScriptedCaptioner

from castlab.config import load_config
from castlab.labelstudio.projects.captions import LABEL_CONFIG
from castlab.manifest import Manifest
from ml_backend.app import create_app

CAPTIONS_XML = LABEL_CONFIG.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("workspace")
    mp = pytest.MonkeyPatch()
    mp.setenv("CASTLAB_WORKSPACE", str(root))
    mp.delenv("LABEL_STUDIO_URL", raising=False)
    crops = root / "runs" / "r1" / "crops"
    crops.mkdir(parents=True)
    for name, colour in (("red.png", (220, 40, 40, 255)), ("green.png", (40, 200, 60, 255)),
                         ("clear.png", (0, 0, 0, 0))):
        Image.new("RGBA", (40, 60), colour).save(crops / name)
    (crops / "corrupt.png").write_bytes(b"not a png")
    manifest = Manifest.for_run(root / "runs" / "r1")
    manifest.add_rows([
        {"row_id": "i1", "kind": "instance", "identity": "Bob", "identity_state": "reviewed"},
        {"row_id": "i2", "kind": "instance", "identity": "character_2", "identity_state": "unreviewed"},
    ])
    manifest.save()
    yield {"root": root}
    mp.undo()


def _task(task_id: int, image: str | None, **data) -> dict:
    if image is not None:
        data["image"] = f"/data/local-files/?d=runs/r1/crops/{image}"
    return {"id": task_id, "data": {"castlab_run": "runs/r1", **data}}


def _predict(client: TestClient, tasks: list[dict]):
    return client.post("/predict", json={"tasks": tasks, "label_config": CAPTIONS_XML, "project": "1.0"})


@pytest.fixture(scope="module")
def scripted(media) -> Iterator[tuple[TestClient, ScriptedCaptioner]]:
    captioner = ScriptedCaptioner()
    app = create_app(load_config(profile="tiny"), labelstudio=lambda: None, captioner_factory=lambda cfg: captioner,
                     embedder_factory=lambda cfg: None)
    with TestClient(app) as client:
        yield client, captioner


def test_a_batch_gives_every_task_its_outcome(scripted):
    client, captioner = scripted
    captioner.batches.clear()
    tasks = [_task(1, "red.png", instance="i1"), _task(2, None, instance="i1"),
             _task(3, "red.png", instance="i2"), _task(4, "green.png", instance="i1"),
             _task(5, "corrupt.png", instance="i1"), _task(6, "clear.png", instance="i1"),
             _task(7, "red.png", identity="Ann"), _task(8, "../../../../secret.png", instance="i1")]
    response = _predict(client, tasks)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 8 and response.json()["model_version"] == "scripted-vlm"
    ok = results[0]
    caption = next(r for r in ok["result"] if r["from_name"] == "caption")["value"]["text"][0]
    assert caption.startswith("cstlb character") and "error" not in ok
    assert {r["from_name"] for r in ok["result"]} >= {"caption", "view", "shot_size", "key_light"}
    assert "no 'image'" in results[1]["error"]
    assert "no reviewed identity" in results[2]["error"]
    assert "schema" in results[3]["error"]
    assert "not a readable image" in results[4]["error"]
    assert "empty" in results[5]["error"]
    assert results[6]["result"]  # identity from the task data (no manifest row needed)
    assert "refused" in results[7]["error"]
    assert captioner.batches == [3]  # the three readable tasks with an identity, in one generate call
    health = client.get("/health").json()
    assert health["captioner_loaded"] and health["captions_suggested"] == 2


def test_an_identity_reviewed_later_is_seen_without_a_restart(scripted, media):
    client, _ = scripted
    assert "no reviewed identity" in _predict(client, [_task(1, "red.png", instance="i2")]).json()["error"]
    manifest = Manifest.for_run(media["root"] / "runs" / "r1")
    manifest.update("i2", identity="Cleo", identity_state="reviewed")
    manifest.save()  # review-sync rewrote the manifest
    try:
        assert _predict(client, [_task(1, "red.png", instance="i2")]).status_code == 200
    finally:
        manifest.update("i2", identity="character_2", identity_state="unreviewed")
        manifest.save()


def test_a_request_whose_tasks_all_fail_is_an_error_and_the_service_stays_up(scripted):
    client, _ = scripted
    response = _predict(client, [_task(1, None, instance="i1")])
    assert response.status_code == 422 and "no 'image'" in response.json()["error"]
    assert _predict(client, [_task(2, "red.png", instance="i1")]).status_code == 200


def test_the_budget_leaves_later_chunks_for_the_next_request(media):
    cfg = load_config(profile="tiny", extra={"ml_backend": {"batch_budget_s": 0}, "captions": {"batch_size": 1}})
    app = create_app(cfg, labelstudio=lambda: None, captioner_factory=lambda c: ScriptedCaptioner(),
                     embedder_factory=lambda c: None)
    with TestClient(app) as client:
        results = _predict(client, [_task(n, "red.png", instance="i1") for n in range(3)]).json()["results"]
    assert results[0]["result"]
    assert all("result" not in r and "batch_budget_s" in r["error"] for r in results[1:])


def test_the_real_tiny_captioner_suggests_schema_captions(media):
    app = create_app(load_config(profile="tiny"), labelstudio=lambda: None, embedder_factory=lambda c: None)
    with TestClient(app) as client:
        response = _predict(client, [_task(1, "red.png", instance="i1"), _task(2, "green.png", instance="i1")])
        assert response.status_code == 200, response.text
        body = response.json()
    assert body["model_version"].startswith("tiny-qwen2-vl")
    for entry in body["results"]:  # a prediction, or a recorded schema failure of the random model
        if "error" in entry:
            assert "schema" in entry["error"]
            continue
        text = next(r for r in entry["result"] if r["from_name"] == "caption")["value"]["text"][0]
        assert text.startswith("cstlb character, 3d animated character")
        assert np.isfinite(entry["score"])


def test_a_captioner_that_cannot_load_does_not_stop_the_backend(media):
    from castlab.errors import ConfigError

    def broken(cfg):
        raise ConfigError("models.full.captioner.model is not set")

    app = create_app(load_config(profile="tiny"), labelstudio=lambda: None, captioner_factory=broken,
                     embedder_factory=lambda c: None)
    backend = app.state.backend
    backend.captions.setup()  # what `python -m ml_backend` runs at start (with ml_backend.preload_captioner)
    with TestClient(app) as client:
        health = client.get("/health").json()
        assert health["status"] == "UP" and "captioner.model" in health["captioner_error"]
        response = _predict(client, [_task(1, "red.png", instance="i1")])
        assert response.status_code == 500 and "captioner.model" in response.json()["error"]
