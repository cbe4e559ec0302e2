"""castlab.labelstudio.client against a real Label Studio server (validates label_configs/masks.xml)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from castlab.config import PROJECT_ROOT
from castlab.errors import InputError, StackError
from castlab.labelstudio import client

pytestmark = pytest.mark.integration

MASKS_XML = PROJECT_ROOT / "label_configs" / "masks.xml"


def _auth(ls_server) -> dict[str, str]:
    return {"Authorization": f"Token {ls_server.token}"}


@pytest.fixture(scope="module")
def project(ls_server) -> dict:
    """The masks project with local storage over a folder of frames, and pushed tasks."""
    ls = client.connect(ls_server.url, ls_server.token)
    project_id = client.ensure_project(ls, "castlab masks it", MASKS_XML.read_text(encoding="utf-8"))
    frames = Path(ls_server.workspace) / "media" / "client_test"
    frames.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    items, masks = [], {}
    for i in range(5):
        height, width = 48 + i, 64 + 3 * i  # odd sizes
        path = frames / f"frame_{i}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        mask = rng.random((height, width)) > 0.6
        masks[f"frame:{i}"] = mask
        region = client.brush_result(mask, "character", width, height, region_id=f"r{i}")
        items.append({
            "data": {"image": client.local_file_url(path), "castlab_key": f"frame:{i}"},
            "predictions": [{"result": [region], "score": 0.5, "model_version": "tiny-test"}],
        })  # fmt: skip
    storage_id = client.ensure_local_storage(ls, project_id, frames)
    chunks: list[dict[str, int]] = []
    mapping = client.push_tasks(ls, project_id, items, chunk_size=2, on_chunk=chunks.append)
    return {"ls": ls, "id": project_id, "storage": storage_id, "frames": frames, "items": items,
            "masks": masks, "mapping": mapping, "chunks": chunks}  # fmt: skip


def test_project_from_masks_xml_is_created_once_and_validated(ls_server, project):
    ls = project["ls"]
    xml = MASKS_XML.read_text(encoding="utf-8")
    assert client.ensure_project(ls, "castlab masks it", xml) == project["id"]
    titles = [p.title for p in ls.projects.list()]
    assert titles.count("castlab masks it") == 1
    saved = ls.projects.get(id=project["id"]).label_config
    assert 'name="kp"' in saved and 'name="box"' in saved and 'name="mask"' in saved
    with pytest.raises(StackError, match="refused project"):
        client.ensure_project(ls, "castlab broken xml", "<View><Image name='image' value='$image'/><Brush")


def test_label_config_change_is_applied(ls_server):
    ls = client.connect(ls_server.url, ls_server.token)
    first = (
        '<View><Image name="image" value="$image"/>'
        '<Choices name="c" toName="image"><Choice value="a"/></Choices></View>'
    )
    second = first.replace('<Choice value="a"/>', '<Choice value="a"/><Choice value="b"/>')
    project_id = client.ensure_project(ls, "castlab config change", first)
    assert client.ensure_project(ls, "castlab config change", second) == project_id
    assert 'value="b"' in ls.projects.get(id=project_id).label_config


def test_local_storage_is_reused_and_must_be_in_the_workspace(ls_server, project, tmp_path):
    ls = project["ls"]
    assert client.ensure_local_storage(ls, project["id"], project["frames"]) == project["storage"]
    assert len(ls.import_storage.local.list(project=project["id"])) == 1
    with pytest.raises(InputError, match="outside the workspace"):
        client.ensure_local_storage(ls, project["id"], tmp_path)


def test_push_is_idempotent_and_keeps_predictions(ls_server, project):
    ls, project_id, items = project["ls"], project["id"], project["items"]
    mapping = project["mapping"]
    assert sorted(mapping) == sorted(project["masks"]) and len(set(mapping.values())) == len(items)
    assert [len(c) for c in project["chunks"]] == [2, 4, 5]  # recorded after every chunk
    again_chunks: list[dict[str, int]] = []
    again = client.push_tasks(ls, project_id, items, chunk_size=2, on_chunk=again_chunks.append)
    assert again == mapping and again_chunks == [] and again.created == []
    assert sorted(mapping.created) == sorted(mapping)
    tasks = client.list_tasks(ls, project_id)
    assert len(tasks) == len(items)
    for task in tasks:
        key = task["data"]["castlab_key"]
        assert mapping[key] == task["id"]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "tiny-test"
        decoded = client.mask_from_result(prediction["result"][0])
        assert np.array_equal(decoded.astype(bool), project["masks"][key])
    # a partly new batch: only the new item is created
    extra = dict(items[0], data=dict(items[0]["data"], castlab_key="frame:extra"))
    grown = client.push_tasks(ls, project_id, [*items, extra])
    assert len(client.list_tasks(ls, project_id)) == len(items) + 1
    assert {k: grown[k] for k in mapping} == mapping and grown.created == ["frame:extra"]


def test_annotation_round_trips_the_exact_mask(ls_server, project):
    ls = project["ls"]
    task_id = project["mapping"]["frame:3"]
    height, width = 48 + 3, 64 + 9
    mask = np.zeros((height, width), np.uint8)
    mask[10:30, 5:41] = 1
    mask[10, 5] = 0  # odd pixels, so an off-by-one anywhere would show
    mask[-1, -1] = 1
    result = [client.brush_result(mask, "character", width, height)]
    annotation_id = client.create_annotation(ls, task_id, result)
    task = next(t for t in client.list_tasks(ls, project["id"]) if t["id"] == task_id)
    (annotation,) = [a for a in task["annotations"] if a["id"] == annotation_id]
    assert annotation["result"][0]["type"] == "brushlabels"
    assert np.array_equal(client.mask_from_result(annotation["result"][0]), mask)


def test_local_files_are_served_only_inside_the_document_root(ls_server, project):
    path = project["frames"] / "frame_0.png"
    url = ls_server.url + client.local_file_url(path)
    ok = requests.get(url, headers=_auth(ls_server), timeout=30)
    assert ok.status_code == 200 and ok.content == path.read_bytes()
    assert requests.get(url, timeout=30).status_code in (401, 403)  # token required
    secret = Path(ls_server.workspace).parent / "outside-secret.txt"
    secret.write_text("not for label studio")
    for d in ("../outside-secret.txt", str(secret)):
        url = f"{ls_server.url}/data/local-files/"
        refused = requests.get(url, params={"d": d}, headers=_auth(ls_server), timeout=30)
        assert refused.status_code != 200 and b"not for label studio" not in refused.content
    # inside the root but outside any storage folder: not served either
    loose = Path(ls_server.workspace) / "loose.txt"
    loose.write_text("no storage here")
    refused = requests.get(ls_server.url + client.local_file_url(loose), headers=_auth(ls_server), timeout=30)
    assert refused.status_code == 404
