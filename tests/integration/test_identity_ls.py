"""Identity review through a real Label Studio: both projects, dynamic identity lists, decisions synced back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from castlab.config import load_config
from castlab.labelstudio import client
from castlab.labelstudio.projects.identity import push_identity_review, sync_identity_reviews
from castlab.manifest import Manifest

pytestmark = pytest.mark.integration


def _png(path: Path, seed: int, size=(48, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _choices(from_name, to_name, value):
    return {"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [value]}}


def test_identity_review_round_trip(ls_server):
    titles = {"identity_instances_title": "ids it", "identity_clusters_title": "idc it"}
    cfg = load_config(extra={"labelstudio": titles})
    run = Path(ls_server.workspace) / "runs" / "identity-it"
    manifest = Manifest.for_run(run)
    frame = {"row_id": "frame:v:1", "kind": "frame", "status": "kept", "path": str(_png(run / "frames" / "f1.png", 0))}
    clusters = [0, 0, 1, 1, 2, -1]
    rows = [{"row_id": f"inst:v:1:{k}", "kind": "instance", "parent_id": frame["row_id"], "status": "kept",
             "crop_path": str(_png(run / "character" / f"i{k}.png", k + 1)), "identity_cluster": c,
             "cluster_probability": 0.9} for k, c in enumerate(clusters)]
    manifest.add_rows([frame, *rows])
    manifest.save()
    sheet_dir = run / "identity" / "contact_sheets"
    sheets = {c: _png(sheet_dir / f"character_{c}.png", 50 + c, (120, 160)) for c in (0, 1, 2)}
    ls = client.connect(ls_server.url, ls_server.token)
    first = push_identity_review(ls, manifest, run, cfg, sheets, "tiny-test")
    assert (first["instances"]["new_tasks"], first["clusters"]["new_tasks"]) == (6, 3)
    again = push_identity_review(ls, manifest, run, cfg, sheets, "tiny-test")
    assert (again["instances"]["new_tasks"], again["clusters"]["new_tasks"]) == (0, 0)

    instance_tasks = {t["data"]["instance"]: t for t in client.list_tasks(ls, first["instances"]["project_id"])}
    preselected = instance_tasks["inst:v:1:2"]["predictions"][0]["result"][0]["value"]["choices"]
    assert preselected == ["character_1"]  # the cluster's name, from a prediction
    assert not instance_tasks["inst:v:1:5"]["predictions"]  # noise: nothing preselected
    cluster_tasks = {t["data"]["cluster"]: t for t in client.list_tasks(ls, first["clusters"]["project_id"])}
    client.create_annotation(ls, cluster_tasks[0]["id"], [
        _choices("decision", "sheet", "name"),
        {"from_name": "name", "to_name": "sheet", "type": "textarea", "value": {"text": ["Bob"]}}])
    client.create_annotation(ls, cluster_tasks[1]["id"], [
        _choices("decision", "sheet", "merge"), _choices("merge_into", "sheet", "character_0")])
    client.create_annotation(ls, instance_tasks["inst:v:1:4"]["id"], [
        {"from_name": "new_identity", "to_name": "crop", "type": "textarea", "value": {"text": ["Zed"]}}])
    client.create_annotation(ls, instance_tasks["inst:v:1:0"]["id"], [_choices("verdict", "crop", "not a character")])
    report = sync_identity_reviews(ls, manifest, run, cfg)
    got = {r["row_id"]: (r["identity"], r["identity_state"]) for r in manifest.rows(kind="instance")}  # in memory
    assert got["inst:v:1:1"] == ("Bob", "cluster")
    assert got["inst:v:1:2"] == ("Bob", "cluster") and got["inst:v:1:3"] == ("Bob", "cluster")  # merged
    assert got["inst:v:1:4"] == ("Zed", "reviewed")
    assert got["inst:v:1:0"] == (None, "not_character")
    assert got["inst:v:1:5"] == (None, "noise")
    assert report["identities"] == {"Bob": 3, "Zed": 1}
