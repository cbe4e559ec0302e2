"""Face-first identity embeddings: yaw/view buckets, the tiny InsightFace pack, routing, storage, sampling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from castlab.config import load_config
from castlab.errors import ConfigError
from castlab.identity.embed import (
    embed_instances,
    embedding_meta,
    estimate_yaw,
    load_embeddings,
    save_embeddings,
    view_balanced_sample,
    view_bucket,
)
from castlab.layers import write_instance_layers
from castlab.models.faces import ARCFACE_TEMPLATE, Face, FaceAnalyzer, load_face_analyzer

# A head in units of the eye distance: x right, y down, z towards the camera (eyes, nose tip, mouth corners).
HEAD = np.array([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.45, 0.42], [-0.42, 0.95, 0.0], [0.42, 0.95, 0.0]])


def head_kps(yaw_deg: float, roll_deg: float = 0.0, scale: float = 60.0) -> np.ndarray:
    """Orthographic image keypoints of HEAD turned by `yaw_deg` (nose to image right when positive)."""
    t, r = math.radians(yaw_deg), math.radians(roll_deg)
    x = HEAD[:, 0] * math.cos(t) + HEAD[:, 2] * math.sin(t)
    pts = np.stack([x, HEAD[:, 1]], axis=1)
    rot = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    return (pts @ rot.T * scale + [200.0, 150.0]).astype(np.float32)


def template_face(box: tuple[float, float, float, float], score: float = 0.9) -> Face:
    """A frontal face whose keypoints are the ArcFace template fitted to `box`."""
    x0, y0, x1, y1 = box
    kps = ARCFACE_TEMPLATE / 112.0 * [x1 - x0, y1 - y0] + [x0, y0]
    return Face(box, score, kps.astype(np.float32))


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


@pytest.fixture(scope="module")
def analyzer(cfg) -> FaceAnalyzer:
    return load_face_analyzer(cfg)


@pytest.fixture(scope="module")
def clip(cfg):
    from castlab.models.embedder import load_embedder

    return load_embedder(cfg)


# -- yaw and views ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("yaw", "view"), [(0, "front"), (15, "front"), (45, "three_quarter"), (-45, "three_quarter"),
                                           (80, "profile"), (-80, "profile"), (90, "profile")])
def test_view_buckets_from_keypoints(yaw: float, view: str):
    kps = head_kps(yaw)
    assert view_bucket(kps) == view
    if abs(yaw) < 90:
        assert estimate_yaw(kps) == pytest.approx(yaw, abs=5)
    assert math.copysign(1, estimate_yaw(kps)) == math.copysign(1, yaw) or yaw == 0


def test_yaw_ignores_roll_scale_and_template_is_frontal():
    assert estimate_yaw(head_kps(45, roll_deg=30, scale=20)) == pytest.approx(estimate_yaw(head_kps(45)), abs=0.5)
    assert abs(estimate_yaw(ARCFACE_TEMPLATE)) < 2
    assert view_bucket(ARCFACE_TEMPLATE) == "front"


def test_view_unknown_without_usable_face_and_thresholds_are_settings():
    assert view_bucket(None) == "unknown"
    assert view_bucket(np.full((5, 2), np.nan)) == "unknown"
    assert view_bucket(np.zeros((5, 2))) == "unknown"  # all keypoints on one pixel
    assert math.isnan(estimate_yaw([1, 2, 3]))
    assert view_bucket(head_kps(45), front_max=50) == "front"
    assert view_bucket(head_kps(45), three_quarter_max=40) == "profile"


# -- the tiny analyzer -----------------------------------------------------------------------------------
def test_tiny_analyzer_loads_offline_and_embeds_a_face(analyzer: FaceAnalyzer, cfg, monkeypatch):
    import castlab.models.faces as faces_mod

    assert analyzer.model_version.startswith("tiny-faces-") and analyzer.profile == "tiny"
    assert type(analyzer.detector).__name__ == "SCRFD" and type(analyzer.recognizer).__name__ == "ArcFaceONNX"
    image = skdata.astronaut()
    face = template_face((170.0, 70.0, 250.0, 170.0))
    vec = analyzer.embed(image, face)
    assert vec.shape == (512,) and vec.dtype == np.float32
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(analyzer.embed(image, face), vec, atol=1e-6)
    other = analyzer.embed(image, template_face((300.0, 300.0, 380.0, 400.0)))
    assert float(vec @ other) < 0.9999
    many = analyzer.embed_many(image, [face, face])
    assert many.shape == (2, 512)
    # the second load reuses the cached ONNX files: same version, nothing rebuilt
    monkeypatch.setattr(faces_mod, "_build_tiny_pack", lambda *a: pytest.fail("tiny pack rebuilt"))
    again = load_face_analyzer(cfg)
    assert again.model_version == analyzer.model_version
    np.testing.assert_allclose(again.embed(image, face), vec, atol=1e-6)


def test_tiny_detector_output_is_well_formed(analyzer: FaceAnalyzer, monkeypatch):
    image = skdata.astronaut()
    monkeypatch.setattr(analyzer, "det_thresh", 0.0)  # every anchor passes: detections are guaranteed
    faces = analyzer.detect(image)
    assert faces
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    for f in faces:
        assert f.kps.shape == (5, 2) and np.all(np.isfinite(f.kps)) and 0.0 <= f.score <= 1.0
        assert f.bbox[0] < f.bbox[2] and f.bbox[1] < f.bbox[3]
    region = (100.0, 50.0, 300.0, 200.0)
    inside = analyzer.detect(image, region=region)
    assert inside and all(region[0] <= f.centre[0] < region[2] and region[1] <= f.centre[1] < region[3] for f in inside)


# -- routing ---------------------------------------------------------------------------------------------
class InjectedFaces:
    """The real tiny analyzer with detections given by the test (random detector scores are noise)."""

    def __init__(self, real: FaceAnalyzer, faces: list[Face]) -> None:
        self.real, self.faces, self.model_version, self.calls = real, faces, real.model_version, 0

    @property
    def dim(self) -> int:
        return self.real.dim

    def detect(self, image_rgb, region=None):
        self.calls += 1
        if region is None:
            return list(self.faces)
        return [f for f in self.faces if region[0] <= f.centre[0] < region[2] and region[1] <= f.centre[1] < region[3]]

    def embed(self, image_rgb, face):
        return self.real.embed(image_rgb, face)


def _scene(tmp_path: Path) -> tuple[list[dict], dict[str, dict]]:
    """One 512×512 frame with four instances (rectangular masks), written like curate writes them."""
    image = skdata.astronaut()
    frame_path = tmp_path / "frames" / "f0.png"
    frame_path.parent.mkdir(parents=True)
    Image.fromarray(image).save(frame_path)
    frames = {"frame:v:0": {"row_id": "frame:v:0", "kind": "frame", "path": str(frame_path)}}
    boxes = {"a": (150, 50, 120, 200), "b": (300, 250, 150, 150), "c": (20, 300, 100, 150),
             "d": (350, 20, 120, 120), "e": (30, 30, 60, 60)}
    rows = []
    for name, (x, y, w, h) in boxes.items():
        mask = np.zeros(image.shape[:2], bool)
        mask[y : y + h, x : x + w] = True
        row_id = f"inst:v:0:{name}"
        layers = write_instance_layers(image, mask, tmp_path, row_id)
        rows.append({"row_id": row_id, "kind": "instance", "parent_id": "frame:v:0", "bbox": layers["bbox"],
                     "mask_path": layers["mask_path"], "crop_path": layers["crop_path"], "view": None})
    rows[-1]["parent_id"] = "frame:v:missing"  # e: its frame is unknown → clip route, no face search
    Path(rows[2]["crop_path"]).unlink()  # c: crop file lost → missing
    return rows, frames


def test_routes_face_clip_missing(tmp_path: Path, analyzer: FaceAnalyzer, clip, cfg):
    rows, frames = _scene(tmp_path)
    face_a = template_face((170.0, 80.0, 250.0, 180.0), score=0.93)  # centre inside a's mask
    weak_a = template_face((160.0, 150.0, 240.0, 240.0), score=0.6)  # also inside a, but the weaker one
    near_b = template_face((262.0, 300.0, 322.0, 360.0), score=0.95)  # centre (292, 330): in b's margin, not its mask
    face_d = template_face((380.0, 40.0, 440.0, 110.0), score=0.3)  # inside d's mask, too weak
    fake = InjectedFaces(analyzer, [face_a, weak_a, near_b, face_d])

    updates, face_m, clip_m = embed_instances(rows, frames, fake, clip, cfg)
    by_id = {u["row_id"]: u for u in updates}
    assert [u["row_id"] for u in updates] == [r["row_id"] for r in rows]  # input order, nothing dropped
    a, b, c, d, e = (by_id[f"inst:v:0:{k}"] for k in "abcde")

    assert a["embedding_route"] == "face" and a["face_score"] == pytest.approx(0.93)
    assert a["view"] == "front" and abs(a["yaw"]) < 5 and len(a["face_kps"]) == 5
    assert a["face_bbox"] == [170.0, 80.0, 250.0, 180.0]
    assert a["embedding_model"] == analyzer.model_version and a["clip_model"] == clip.model_version
    np.testing.assert_allclose(face_m[0], analyzer.embed(skdata.astronaut(), face_a), atol=1e-6)

    assert b["embedding_route"] == "clip" and b["view"] == "unknown" and "no face inside" in b["embedding_reason"]
    assert d["embedding_route"] == "clip" and "0.30 < 0.5" in d["embedding_reason"]
    assert e["embedding_route"] == "clip" and "frame:v:missing" in e["embedding_reason"]
    assert c["embedding_route"] == "missing" and "does not exist" in c["embedding_reason"]
    assert c["embedding_model"] is None and c["face_score"] is None

    assert face_m.shape == (5, 512) and clip_m.shape == (5, clip.dim)
    assert np.all(np.isfinite(face_m[0])) and np.all(np.isnan(face_m[1:]))
    assert np.all(np.isnan(clip_m[2])) and np.all(np.isfinite(np.delete(clip_m, 2, axis=0)))
    np.testing.assert_allclose(np.linalg.norm(clip_m[[0, 1, 3, 4]], axis=1), 1.0, atol=1e-5)
    assert fake.calls == 3  # a, b, d searched; c (no crop) and e (no frame) not


def test_real_tiny_detector_routes_an_instance_to_faces(tmp_path: Path, analyzer: FaceAnalyzer, clip, monkeypatch):
    """Without injection: detector threshold and face_min_score at 0 make the noise detector's faces count."""
    rows, frames = _scene(tmp_path)
    monkeypatch.setattr(analyzer, "det_thresh", 0.0)
    cfg0 = load_config(profile="tiny", extra={"identity": {"face_min_score": 0.0}})
    updates, face_m, _ = embed_instances(rows[:2], frames, analyzer, clip, cfg0)
    assert [u["embedding_route"] for u in updates] == ["face", "face"]
    assert all(u["view"] in ("front", "three_quarter", "profile") for u in updates)
    np.testing.assert_allclose(np.linalg.norm(face_m, axis=1), 1.0, atol=1e-5)


def test_relative_paths_resolve_against_base_dir(tmp_path: Path, analyzer: FaceAnalyzer, clip, cfg):
    rows, frames = _scene(tmp_path)
    row = dict(rows[0], crop_path=str(Path(rows[0]["crop_path"]).relative_to(tmp_path)),
               mask_path=str(Path(rows[0]["mask_path"]).relative_to(tmp_path)))
    frames = {"frame:v:0": {"path": "frames/f0.png"}}
    fake = InjectedFaces(analyzer, [template_face((170.0, 80.0, 250.0, 180.0))])
    updates, _, _ = embed_instances([row], frames, fake, clip, cfg, base_dir=tmp_path)
    assert updates[0]["embedding_route"] == "face" and updates[0]["embedding_reason"] is None


# -- storage ---------------------------------------------------------------------------------------------
def test_embeddings_round_trip(tmp_path: Path, cfg):
    class Model:
        model_version = "tiny-faces-x"

    face = np.random.default_rng(0).normal(size=(3, 512)).astype(np.float32)
    face[1] = np.nan
    clip = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
    clip[2] = np.nan
    meta = embedding_meta(Model(), Model(), cfg)
    path = save_embeddings(tmp_path, ["i0", "i1", "i2"], face, clip, meta)
    assert path == tmp_path / "embeddings" / "identity.npz"
    loaded = load_embeddings(tmp_path)
    assert loaded.row_ids == ["i0", "i1", "i2"]
    np.testing.assert_array_equal(loaded.face, face)
    np.testing.assert_array_equal(loaded.clip, clip)
    assert loaded.face_mask.tolist() == [True, False, True] and loaded.clip_mask.tolist() == [True, True, False]
    sidecar = json.loads((tmp_path / "embeddings" / "identity.json").read_text())
    assert sidecar["profile"] == "tiny" and sidecar["face_model"] == "tiny-faces-x"
    assert sidecar["face_rows"] == 2 and sidecar["clip_rows"] == 2 and loaded.meta == sidecar
    with pytest.raises(ValueError, match="line up"):
        save_embeddings(tmp_path, ["i0"], face, clip, meta)


# -- sampling --------------------------------------------------------------------------------------------
def test_view_balanced_sample_is_balanced_and_seeded():
    rows = ([{"row_id": f"f{i}", "view": "front"} for i in range(30)]
            + [{"row_id": f"t{i}", "view": "three_quarter"} for i in range(10)]
            + [{"row_id": f"p{i}", "view": "profile"} for i in range(5)]
            + [{"row_id": f"u{i}", "view": None} for i in range(5)])

    def counts(sample):
        out: dict[str, int] = {}
        for r in sample:
            out[r["view"] or "unknown"] = out.get(r["view"] or "unknown", 0) + 1
        return out

    assert counts(view_balanced_sample(rows, 12, seed=1)) == {"front": 3, "three_quarter": 3, "profile": 3,
                                                              "unknown": 3}
    assert counts(view_balanced_sample(rows, 26, seed=1)) == {"front": 8, "three_quarter": 8, "profile": 5,
                                                              "unknown": 5}
    first = [r["row_id"] for r in view_balanced_sample(rows, 20, seed=7)]
    assert first == [r["row_id"] for r in view_balanced_sample(rows, 20, seed=7)]
    assert first != [r["row_id"] for r in view_balanced_sample(rows, 20, seed=8)]
    assert len(view_balanced_sample(rows, 500, seed=1)) == len(rows)
    assert view_balanced_sample([], 5, seed=1) == []


# -- the full profile ------------------------------------------------------------------------------------
def test_full_profile_needs_a_local_pack(tmp_path: Path, analyzer: FaceAnalyzer, monkeypatch):
    import insightface.app.face_analysis as fa

    monkeypatch.setattr(fa, "ensure_available", lambda *a, **k: pytest.fail("insightface asked to download"))
    with pytest.raises(ConfigError, match=r"models\.full\.faces\.pack is not set"):
        load_face_analyzer(load_config(profile="full"))
    missing = load_config(profile="full", extra={"models": {"full": {"faces": {"pack": "buffalo_l",
                                                                               "root": str(tmp_path)}}}})
    with pytest.raises(ConfigError, match=r"models\.full\.faces\.pack.*buffalo_l.*not found"):
        load_face_analyzer(missing)
    empty = tmp_path / "models" / "empty_pack"
    empty.mkdir(parents=True)
    with pytest.raises(ConfigError, match="no face detector"):
        load_face_analyzer(load_config(profile="full", extra={"models": {"full": {"faces": {"pack": str(empty)}}}}))
    # a folder of ONNX files is a pack: the tiny one stands in for buffalo_l here
    pack = tmp_path / "models" / "my_pack"
    pack.mkdir()
    for onnx in Path(analyzer.detector.model_file).parent.glob("*.onnx"):
        (pack / onnx.name).write_bytes(onnx.read_bytes())
    by_name = load_config(profile="full", extra={"models": {"full": {"faces": {"pack": "my_pack", "root": str(tmp_path),
                                                                             "det_size": 128}}}})
    full = load_face_analyzer(by_name)
    assert full.model_version.startswith("insightface-my_pack-") and full.profile == "full"
    face = template_face((170.0, 80.0, 250.0, 180.0))
    np.testing.assert_allclose(full.embed(skdata.astronaut(), face), analyzer.embed(skdata.astronaut(), face),
                               atol=1e-6)
