"""The identity stage end to end on the tiny models: routes, clusters, outputs, manifest, re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from castlab.config import load_config
from castlab.errors import InputError
from castlab.identity.stage import build_identities, identity_vectors
from castlab.layers import write_instance_layers
from castlab.manifest import Manifest

COLOURS = [(220, 60, 40), (40, 90, 220), (60, 200, 80)]  # three "characters"


def _run(tmp_path: Path, per: int = 14) -> tuple[Path, Manifest]:
    run = tmp_path / "run"
    manifest = Manifest.for_run(run)
    rng = np.random.default_rng(0)
    rows = []
    for f in range(per):
        frame = np.full((120, 360, 3), 30, np.uint8)
        frame += rng.integers(0, 20, frame.shape, dtype=np.uint8)
        masks = []
        for k, colour in enumerate(COLOURS):
            mask = np.zeros(frame.shape[:2], bool)
            x = 20 + 120 * k + int(rng.integers(0, 20))
            mask[20:100, x:x + 60] = True
            frame[mask] = np.clip(np.array(colour) + rng.integers(-15, 15, 3), 0, 255)
            masks.append(mask)
        path = run / "frames" / f"f{f}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(path)
        rows.append({"row_id": f"frame:v:{f}", "kind": "frame", "status": "kept", "path": str(path)})
        for k, mask in enumerate(masks):
            layers = write_instance_layers(frame, mask, run, f"inst:v:{f}:{k}")
            rows.append({"row_id": f"inst:v:{f}:{k}", "kind": "instance", "status": "kept",
                         "parent_id": f"frame:v:{f}", **layers})
    manifest.add_rows(rows)
    manifest.save()
    return run, manifest


class NoFaces:
    """A detector that never finds a face (a run of backs and stylised faces)."""

    model_version = "no-faces"
    dim = 512

    def detect(self, image, region=None):
        return []

    def embed(self, image, face):  # pragma: no cover - never called without faces
        raise AssertionError


def test_identities_on_the_tiny_models(tmp_path: Path):
    run, manifest = _run(tmp_path)
    Path(manifest.get("inst:v:0:0")["crop_path"]).unlink()  # an unreadable crop is kept, as missing
    cfg = load_config(profile="tiny")
    summary = build_identities(run, manifest, cfg)
    rows = {r["row_id"]: r for r in manifest.rows(kind="instance")}  # in memory: the caller saves
    assert len(rows) == summary["instances"] == 42
    assert summary["routes"]["missing"] == 1 and sum(summary["routes"].values()) == 42
    missing = rows["inst:v:0:0"]
    assert missing["embedding_route"] == "missing" and missing["identity_cluster"] is None
    assert "crop" in missing["embedding_reason"]
    clustered = [r for r in rows.values() if r["embedding_route"] != "missing"]
    assert all(r["identity_cluster"] is not None for r in clustered)
    report = json.loads((run / "identity" / "cluster_report.json").read_text())
    assert report and (run / "identity" / "umap_scatter.png").is_file()
    assert set(identity_vectors(run)) == {r["row_id"] for r in clustered}
    assert all(Path(p).is_file() for p in summary["sheets"].values())
    with pytest.raises(InputError, match="force"):
        build_identities(run, manifest, cfg)
    assert build_identities(run, manifest, cfg, force=True)["instances"] == 42


def test_a_run_without_any_face_is_clustered_on_open_clip(tmp_path: Path):
    run, manifest = _run(tmp_path)
    summary = build_identities(run, manifest, load_config(profile="tiny"), analyzer=NoFaces())
    assert summary["routes"]["face"] == 0 and summary["clustered_on"] == "clip"
    assert "no face" in summary["note"]
    rows = manifest.rows(kind="instance")
    assert all(r["embedding_route"] == "clip" and r["identity_cluster"] is not None for r in rows)


def test_subclusters_split_an_identity_by_its_variants():
    from castlab.identity.stage import subclusters

    rng = np.random.default_rng(1)
    base = rng.normal(size=64)
    costume_a, costume_b = base + rng.normal(size=64), base + rng.normal(size=64)  # one identity, two looks
    vectors = np.stack([costume_a + 0.1 * rng.normal(size=64) for _ in range(6)]
                       + [costume_b + 0.1 * rng.normal(size=64) for _ in range(4)] + [rng.normal(size=64)])
    labels = np.array([0] * 10 + [-1])
    sub = subclusters(vectors, labels, np.arange(11), distance=0.35)
    assert [sub[i] for i in range(10)] == [0] * 6 + [1] * 4  # the larger look is subcluster 0
    assert 10 not in sub  # noise has none
    assert subclusters(vectors, labels, np.arange(11), distance=0.0) == {}
