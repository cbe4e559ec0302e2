"""ML backend over HTTP (FastAPI TestClient) with the real tiny SAM2 segmenter."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from castlab.config import PROJECT_ROOT, load_config
from castlab.labelstudio import client
from castlab.segment.characters import CharacterSettings, character_instances
from ml_backend.app import create_app
from ml_backend.errors import BackendError
from ml_backend.images import LabelStudioSource, local_files_path
from ml_backend.kinds import parse_label_config
from ml_backend.prompts import parse_context

MASKS_XML = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="character"/><Label value="prop"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="character"/></KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="character"/></RectangleLabels>
</View>"""


def _figure(height: int, width: int, seed: int) -> np.ndarray:
    """A plain set with one bright elliptic figure (different per seed)."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = rng.integers(20, 90, 3)
    yy, xx = np.mgrid[:height, :width]
    cx, cy = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.65)
    img[((xx - cx) / (width / 6)) ** 2 + ((yy - cy) / (height / 3)) ** 2 < 1] = rng.integers(160, 255, 3)
    return img


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("workspace")
    mp = pytest.MonkeyPatch()
    mp.setenv("CASTLAB_WORKSPACE", str(root))
    mp.delenv("LABEL_STUDIO_URL", raising=False)
    mp.delenv("LABEL_STUDIO_API_KEY", raising=False)
    frames = root / "media" / "frames"
    frames.mkdir(parents=True)
    images = {"a.png": _figure(96, 128, 1), "b.png": _figure(120, 80, 2)}
    for name, img in images.items():
        Image.fromarray(img).save(frames / name)
    (frames / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root.parent / "secret.png").write_bytes((frames / "a.png").read_bytes())  # outside the media root
    yield {"root": root, "images": images}
    mp.undo()


@pytest.fixture(scope="module")
def app_client(media) -> Iterator[TestClient]:
    app = create_app(load_config(profile="tiny"), labelstudio=lambda: None)
    with TestClient(app) as test_client:
        yield test_client


def _task(name: str, task_id: int = 1) -> dict:
    return {"id": task_id, "data": {"image": f"/data/local-files/?d=media/frames/{name}"}}


def _predict(app_client: TestClient, tasks: list[dict], context: dict | None = None):
    params = {"context": context}
    body = {"tasks": tasks, "project": "1.1700000000", "label_config": MASKS_XML, "params": params}
    return app_client.post("/predict", json=body)


def _keypoint(x: float, y: float, positive: bool = True, label: str = "character") -> dict:
    return {
        "id": f"kp{x:.0f}-{y:.0f}", "type": "keypointlabels", "from_name": "kp", "to_name": "image",
        "is_positive": positive, "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]},
    }  # fmt: skip


def _rect(x: float, y: float, w: float, h: float, label: str = "character") -> dict:
    return {
        "id": f"r{x:.0f}-{y:.0f}", "type": "rectanglelabels", "from_name": "box", "to_name": "image",
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
    }  # fmt: skip


def test_health_answers_without_loading_the_model(media):
    app = create_app(load_config(profile="tiny"), segmenter_factory=lambda cfg: pytest.fail("model loaded"))
    with TestClient(app) as fresh:
        body = fresh.get("/health").json()
    assert body["status"] == "UP" and body["model_class"] and body["model_loaded"] is False


def test_setup_model_version_matches_predictions(app_client):
    setup = app_client.post("/setup", json={"project": "1.1700000000", "schema": MASKS_XML})
    assert setup.status_code == 200
    version = setup.json()["model_version"]
    assert version.startswith("tiny-")
    predicted = _predict(app_client, [_task("a.png")], {"result": [_keypoint(50, 50)]}).json()
    assert predicted["results"][0]["model_version"] == version


def test_predict_without_context_returns_auto_instances_per_task(app_client, media):
    images = media["images"]
    response = _predict(app_client, [_task("a.png", 1), _task("b.png", 2)])
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 2
    backend = app_client.app.state.backend
    segmenter = backend.masks.segmenter()
    detector, scorer = backend.masks.characters()
    assert scorer is not None  # the real tiny open_clip model scores them, as in curate
    settings = CharacterSettings.from_config(backend.cfg)
    for name, entry in zip(["a.png", "b.png"], results, strict=True):
        image = images[name]
        expected = [c.instance for c in character_instances(segmenter, image, settings, detector, scorer)]
        assert expected, "tiny segmenter found no instance to compare with"
        assert len(entry["result"]) == len(expected)
        for region, inst in zip(entry["result"], expected, strict=True):
            assert region["type"] == "brushlabels"
            assert (region["from_name"], region["to_name"]) == ("mask", "image")
            assert region["value"]["brushlabels"] == ["character"]
            assert (region["original_width"], region["original_height"]) == (image.shape[1], image.shape[0])
            decoded = client.mask_from_result(region).astype(bool)
            assert decoded.shape == image.shape[:2]
            assert np.array_equal(decoded, inst.mask)
        assert len({r["id"] for r in entry["result"]}) == len(entry["result"])
        assert entry["score"] == pytest.approx(np.mean([i.score for i in expected]))


def test_predict_with_keypoints_returns_one_brush_mask(app_client, media):
    image = media["images"]["a.png"]
    height, width = image.shape[:2]
    context = {"result": [_keypoint(40, 50), _keypoint(60, 50), _keypoint(10, 10, positive=False)]}
    response = _predict(app_client, [_task("a.png")], context)
    assert response.status_code == 200, response.text
    regions = response.json()["results"][0]["result"]
    assert len(regions) == 1
    mask = client.mask_from_result(regions[0]).astype(bool)
    segmenter = app_client.app.state.backend.masks.segmenter()
    points = [(0.4 * width, 0.5 * height), (0.6 * width, 0.5 * height), (0.1 * width, 0.1 * height)]
    expected, score = segmenter.predict_image(image, points=points, labels=[1, 1, 0])
    assert mask.shape == (height, width) and mask.any()
    assert np.array_equal(mask, expected)
    assert regions[0]["score"] == pytest.approx(score)
    # the same request again gives the same region (stable ids, cached embedding)
    again = _predict(app_client, [_task("a.png")], context).json()["results"][0]["result"]
    assert again[0]["id"] == regions[0]["id"]


def test_several_rectangles_give_one_region_each(app_client):
    context = {"result": [_rect(5, 5, 40, 40), _rect(55, 50, 40, 45), _keypoint(20, 20)]}
    regions = _predict(app_client, [_task("b.png")], context).json()["results"][0]["result"]
    assert len(regions) == 2
    assert regions[0]["id"] != regions[1]["id"]


def test_prompt_groups_and_labels():
    groups = parse_context(
        [_rect(0, 0, 50, 50), _keypoint(10, 10), _keypoint(90, 90), _keypoint(80, 10, positive=False),
         _keypoint(50, 50, label="prop"), {"type": "brushlabels", "value": {}}],
        width=200, height=100,
    )  # fmt: skip
    by_label = {(g.label, g.box is not None): g for g in groups}
    assert len(groups) == 3
    boxed = by_label[("character", True)]
    assert boxed.box == (0.0, 0.0, 100.0, 50.0) and boxed.points == [(20.0, 10.0)]
    loose = by_label[("character", False)]
    assert loose.points == [(180.0, 90.0), (160.0, 10.0)] and loose.point_labels == [1, 0]
    assert by_label[("prop", False)].points == [(100.0, 50.0)]
    schema = parse_label_config(MASKS_XML)
    assert schema.kind == "masks"
    assert (schema.brush_name, schema.image_name, schema.data_key) == ("mask", "image", "image")
    assert schema.brush_label("prop") == "prop" and schema.brush_label("unknown") == "character"
    with pytest.raises(BackendError, match="no prompts"):
        parse_context([_keypoint(10, 10, positive=False)], 100, 100)
    with pytest.raises(BackendError, match="no BrushLabels"):
        parse_label_config('<View><Image name="i" value="$image"/></View>')


@pytest.mark.parametrize(
    "reference",
    [
        "/data/local-files/?d=../../etc/passwd",
        "/data/local-files/?d=/etc/passwd",
        "/data/local-files/?d=media/../../secret.png",
        "/data/local-files/?d=..%2Fsecret.png",
    ],
)
def test_paths_outside_the_media_root_are_refused(app_client, reference):
    response = _predict(app_client, [{"id": 7, "data": {"image": reference}}])
    assert response.status_code == 403
    assert "outside the media root" in response.json()["error"]
    assert app_client.get("/health").status_code == 200


def test_bad_images_give_clear_errors_and_the_server_stays_up(app_client):
    missing = _predict(app_client, [_task("nope.png")])
    assert missing.status_code == 404 and "nope.png" in missing.json()["error"]
    corrupt = _predict(app_client, [_task("corrupt.png")])
    assert corrupt.status_code == 422 and "not a readable image" in corrupt.json()["error"]
    no_prompt = _predict(app_client, [_task("a.png")], {"result": [_keypoint(5, 5, positive=False)]})
    assert no_prompt.status_code == 400 and "no prompts" in no_prompt.json()["error"]
    assert app_client.post("/predict", content=b"{not json").status_code == 400
    assert app_client.post("/predict", json={"tasks": "x"}).status_code == 400
    elsewhere = _predict(app_client, [{"id": 3, "data": {"image": "http://example.com/a.png"}}])
    assert elsewhere.status_code == 400 and "error" in elsewhere.json()
    assert app_client.get("/health").json()["status"] == "UP"


def test_one_bad_task_in_a_batch_keeps_the_others(app_client):
    response = _predict(app_client, [_task("nope.png", 1), _task("a.png", 2)])
    assert response.status_code == 200
    first, second = response.json()["results"]
    assert first["result"] == [] and "nope.png" in first["error"]
    assert second["result"] and "error" not in second


def test_empty_context_clears_suggestions(app_client):
    response = _predict(app_client, [_task("a.png")], {"result": []})
    assert response.status_code == 200 and response.json()["results"][0]["result"] == []


def test_webhook_acknowledges(app_client):
    response = app_client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 3}})
    assert response.status_code == 200 and response.json()["action"] == "ANNOTATION_CREATED"


def test_local_files_reference_parsing():
    assert local_files_path("/data/local-files/?d=media/a%20b.png") == "media/a b.png"
    assert local_files_path("http://host/data/local-files/?d=x.png") is None
    assert local_files_path("/data/upload/1/x.png") is None
    with pytest.raises(BackendError, match="'d'"):
        local_files_path("/data/local-files/?x=1")


class _FakeLabelStudio(BaseHTTPRequestHandler):
    png = b""
    seen_auth: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        type(self).seen_auth.append(self.headers.get("Authorization", ""))
        if self.path.startswith("/data/upload/"):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(self.png)
        else:
            self.send_response(302)
            self.send_header("Location", "http://example.com/x.png")
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_images_served_by_label_studio_are_downloaded_with_its_token(app_client, media):
    import io

    buffer = io.BytesIO()
    Image.fromarray(media["images"]["b.png"]).save(buffer, format="PNG")
    _FakeLabelStudio.png = buffer.getvalue()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeLabelStudio)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    shared = app_client.app.state.backend.masks.segmenter()
    source = LabelStudioSource(url, "secret-token-123")
    app = create_app(load_config(profile="tiny"), segmenter_factory=lambda cfg: shared, labelstudio=source)
    try:
        with TestClient(app) as test_client:
            context = {"result": [_keypoint(50, 50)]}
            for reference in (f"{url}/data/upload/1/b.png", "/data/upload/1/b.png"):
                response = _predict(test_client, [{"id": 1, "data": {"image": reference}}], context)
                assert response.status_code == 200, response.text
                region = response.json()["results"][0]["result"][0]
                assert (region["original_width"], region["original_height"]) == (80, 120)
            assert _FakeLabelStudio.seen_auth[-2:] == ["Token secret-token-123"] * 2
            redirected = _predict(test_client, [{"id": 1, "data": {"image": f"{url}/other"}}], context)
            assert redirected.status_code == 403 and "redirect" in redirected.json()["error"]
            other = [{"id": 1, "data": {"image": "http://127.0.0.1:1/x.png"}}]
            other_port = _predict(test_client, other, context)
            assert other_port.status_code == 403 and "only downloaded from" in other_port.json()["error"]
            assert "secret-token-123" not in redirected.text + other_port.text
    finally:
        server.shutdown()
        server.server_close()


def test_requests_without_label_config_use_the_masks_project_config(app_client):
    context = {"result": [_rect(10, 10, 60, 70)]}
    response = app_client.post("/predict", json={"tasks": [_task("a.png")], "params": {"context": context}})
    assert response.status_code == 200, response.text
    (region,) = response.json()["results"][0]["result"]
    assert (region["from_name"], region["to_name"]) == ("mask", "image")
    assert region["value"]["brushlabels"] == ["character"]
    health = app_client.get("/health").json()
    assert health["model_loaded"] and health["embedding_cache"]["hits"] > 0


def test_concurrent_clicks_on_one_task_share_one_embedding(app_client, media):
    image = _figure(88, 120, 5)
    Image.fromarray(image).save(media["root"] / "media" / "frames" / "busy.png")
    segmenter = app_client.app.state.backend.masks.segmenter()
    misses = segmenter.cache_misses
    contexts = [{"result": [_keypoint(30 + 5 * i, 50)]} for i in range(6)]
    answers: list = [None] * len(contexts)

    def click(i: int) -> None:
        answers[i] = _predict(app_client, [_task("busy.png", 40)], contexts[i])

    threads = [threading.Thread(target=click, args=(i,)) for i in range(len(contexts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(a is not None and a.status_code == 200 for a in answers), [a and a.text for a in answers]
    assert segmenter.cache_misses == misses + 1  # six clicks at once, one image encoding
    height, width = image.shape[:2]
    for i, answer in enumerate(answers):  # each got the mask of its own click, not a neighbour's
        mask = client.mask_from_result(answer.json()["results"][0]["result"][0]).astype(bool)
        expected, _ = segmenter.predict_image(image, points=[((30 + 5 * i) / 100 * width, 0.5 * height)], labels=[1])
        assert np.array_equal(mask, expected)
    assert app_client.get("/health").json()["status"] == "UP"


def test_a_batch_stops_at_its_time_budget_and_leaves_the_rest_for_later(media):
    cfg = load_config(profile="tiny", extra={"ml_backend": {"batch_budget_s": 0}})
    with TestClient(create_app(cfg, labelstudio=lambda: None)) as budget_client:
        response = _predict(budget_client, [_task("a.png", 1), _task("b.png", 2), _task("a.png", 3)])
    assert response.status_code == 200, response.text
    first, *rest = response.json()["results"]
    assert first["result"] and "error" not in first  # at least one task per request is always predicted
    assert len(rest) == 2 and all("result" not in r and "batch_budget_s" in r["error"] for r in rest)


IDENTITY_XML = (PROJECT_ROOT / "label_configs" / "identity_instances.xml").read_text(encoding="utf-8")


def test_identity_suggestions_learn_from_each_annotation(media):
    from castlab.manifest import Manifest

    run = media["root"] / "runs" / "identity-unit"
    rng = np.random.default_rng(3)
    centres = {"Bob": rng.normal(size=32), "Ann": rng.normal(size=32)}
    vectors = {}
    for name, centre in centres.items():
        for k in range(4):
            vectors[f"inst:{name}:{k}"] = ("face", centre + 0.05 * rng.normal(size=32))
    vectors["inst:new:0"] = ("face", centres["Ann"] + 0.05 * rng.normal(size=32))
    vectors["inst:other:0"] = ("face", -centres["Bob"])  # like nobody reviewed so far
    vectors["inst:other:1"] = ("face", -centres["Bob"] + 0.05 * rng.normal(size=32))
    manifest = Manifest.for_run(run)
    manifest.add_rows([{"row_id": r, "kind": "instance", "status": "kept",
                        "identity": r.split(":")[1] if r.split(":")[1] in centres else None,
                        "identity_state": "reviewed" if r.split(":")[1] in centres else "unreviewed"}
                       for r in vectors])
    manifest.save()
    cfg = load_config(profile="tiny", extra={"identity": {"suggest_k": 3, "suggest_min_similarity": 0.5}})
    app = create_app(cfg, labelstudio=lambda: None, identity_loader=lambda run_dir: vectors)
    run_rel = "runs/identity-unit"

    def suggest(instance: str):
        task = {"id": 1, "data": {"castlab_run": run_rel, "instance": instance}}
        body = {"tasks": [task], "label_config": IDENTITY_XML}
        entry = test_client.post("/predict", json=body).json()["results"][0]
        return entry["result"][0]["value"]["choices"][0] if entry["result"] else None

    with TestClient(app) as test_client:
        assert suggest("inst:new:0") == "Ann"
        assert suggest("inst:other:1") is None  # nothing reviewed looks like it
        annotation = {"id": 9, "result": [{"from_name": "new_identity", "to_name": "crop", "type": "textarea",
                                           "value": {"text": ["Zed"]}}]}
        hook = {"action": "ANNOTATION_CREATED", "project": {"id": 2}, "annotation": annotation,
                "task": {"id": 5, "data": {"castlab_run": run_rel, "instance": "inst:other:0"}}}
        assert test_client.post("/webhook", json=hook).json()["learnt"] is True
        assert suggest("inst:other:1") == "Zed"  # learnt without a restart
        outside = {"tasks": [{"id": 1, "data": {"castlab_run": "../../etc", "instance": "x"}}],
                   "label_config": IDENTITY_XML}
        assert test_client.post("/predict", json=outside).status_code == 403
