"""identify under a real Prefect runtime against a real Label Studio: curate → identify → a reviewer names
a cluster and renames one instance → review-sync gives every clustered instance its identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_thin_path import make_video

from castlab.labelstudio import client
from castlab.manifest import Manifest

pytestmark = pytest.mark.integration



def test_identify_and_review(ls_env, tmp_path: Path):
    from flows.curate import curate
    from flows.identify import identify
    from flows.review_sync import review_sync

    override = tmp_path / "small_clusters.yaml"  # a tiny run: clusters of 3 are enough
    override.write_text("clustering:\n  min_cluster_size: 3\n  min_samples: 1\n"
                        "labelstudio:\n  identity_instances_title: ids flow\n  identity_clusters_title: idc flow\n")
    media = Path(ls_env.workspace) / "media"
    media.mkdir(parents=True, exist_ok=True)
    video = make_video(media / "identify flow.mp4", shots=2, frames_per_shot=24)
    run_dir = Path(curate(video=str(video), mode="scene", project_title="masks identify flow",
                          config_files=[str(override)])["run_dir"])
    summary = identify(run_dir=str(run_dir), config_files=[str(override)])
    assert summary["instances"] > 0 and summary["clusters"] >= 1, summary
    assert summary["labelstudio"]["clusters"]["new_tasks"] == summary["clusters"]
    again = identify(run_dir=str(run_dir), force=True, config_files=[str(override)])
    assert again["labelstudio"]["instances"]["new_tasks"] == 0  # re-running adds no task

    ls = client.connect(ls_env.url, ls_env.token)
    cluster_tasks = client.list_tasks(ls, summary["labelstudio"]["clusters"]["project_id"])
    ours = [t for t in cluster_tasks if t["data"]["castlab_run"] == f"runs/{run_dir.name}"]  # the project is shared
    first = next(t for t in ours if t["data"]["cluster"] == 0)
    client.create_annotation(ls, first["id"], [
        {"from_name": "decision", "to_name": "sheet", "type": "choices", "value": {"choices": ["name"]}},
        {"from_name": "name", "to_name": "sheet", "type": "textarea", "value": {"text": ["Bunny"]}}])
    members = [r for r in Manifest.for_run(run_dir).rows(kind="instance") if r.get("identity_cluster") == 0]
    instance_tasks = {t["data"]["instance"]: t
                      for t in client.list_tasks(ls, summary["labelstudio"]["instances"]["project_id"])}
    renamed = members[0]["row_id"]
    client.create_annotation(ls, instance_tasks[renamed]["id"], [
        {"from_name": "new_identity", "to_name": "crop", "type": "textarea", "value": {"text": ["Squirrel"]}}])

    counts = review_sync(run_dir=str(run_dir), config_files=[str(override)])
    assert counts["identities"]["cluster_decisions"] == 1 and counts["identities"]["instance_decisions"] == 1
    rows = {r["row_id"]: r for r in Manifest.for_run(run_dir).rows(kind="instance")}
    assert rows[renamed]["identity"] == "Squirrel"
    assert all(rows[m["row_id"]]["identity"] == "Bunny" for m in members[1:])
    review = json.loads((run_dir / "identity_review.json").read_text())
    assert review["identities"]["Bunny"] == len(members) - 1
