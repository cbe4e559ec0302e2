"""Reviewed work is never asked for twice: the same clip run twice through curate → identify → caption against a real
Label Studio adds no identity or caption task the second time, and the first run's answers reach the second run's
manifest through its review-sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_thin_path import make_video

from castlab.config import load_config
from castlab.labelstudio import client
from castlab.labelstudio.projects.captions import accept_caption_predictions
from castlab.labelstudio.projects.identity import name_clusters
from castlab.labelstudio.projects.masks import accept_predictions
from castlab.manifest import Manifest
from castlab.workspace import relative_to_workspace

pytestmark = pytest.mark.integration
TITLES = {"masks_project_title": "rerun masks", "identity_instances_title": "rerun identities",
          "identity_clusters_title": "rerun identity clusters", "captions_title": "rerun captions"}
EDITED = "cstlb character, waving at a friend"


def _tasks(ls: Any, title: str, run: Path) -> list[dict[str, Any]]:
    return client.run_tasks(ls, title, relative_to_workspace(run))


def _walk(video: Path, override: Path, ls: Any, cfg: Any) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """curate → accept the masks → review-sync → identify → review-sync → caption (the run, identify's and caption's
    summaries); the first time, a reviewer also answers in between."""
    from flows.caption import caption
    from flows.curate import curate
    from flows.identify import identify
    from flows.review_sync import review_sync

    settings = {"config_files": [str(override)]}
    curated = curate(video=str(video), mode="scene", project_title=TITLES["masks_project_title"], **settings)
    run = Path(curated["run_dir"])
    accept_predictions(ls, Manifest.for_run(run))  # nothing left to accept the second time
    review_sync(run_dir=str(run), **settings)
    ids = identify(run_dir=str(run), **settings)
    name_clusters(ls, run, cfg)  # the second time: already named
    review_sync(run_dir=str(run), **settings)
    return run, ids, caption(run_dir=str(run), **settings)


def test_a_second_run_of_the_same_clip_asks_nothing_twice(ls_env, tmp_path: Path):
    from flows.review_sync import review_sync

    override = tmp_path / "rerun.yaml"
    override.write_text("clustering:\n  min_cluster_size: 3\n  min_samples: 1\nlabelstudio:\n"
                        + "".join(f"  {k}: {v!r}\n" for k, v in TITLES.items()))
    cfg = load_config(overrides=[override])
    ls = client.connect(ls_env.url, ls_env.token)
    media = Path(ls_env.workspace) / "media"
    media.mkdir(parents=True, exist_ok=True)
    video = make_video(media / "twice.mp4")

    first, ids1, caps1 = _walk(video, override, ls, cfg)
    instance_tasks = _tasks(ls, TITLES["identity_instances_title"], first)
    assert ids1["clusters"] >= 1 and len(instance_tasks) == ids1["labelstudio"]["instances"]["new_tasks"] > 0
    # a reviewer names one instance (its own name overrides its cluster's) and rewrites one caption
    renamed = instance_tasks[0]
    client.create_annotation(ls, renamed["id"], [{"from_name": "new_identity", "to_name": "crop", "type": "textarea",
                                                  "value": {"text": ["Zed"]}}])
    caption_tasks = _tasks(ls, TITLES["captions_title"], first)
    assert len(caption_tasks) == caps1["labelstudio"]["new_tasks"] > 0
    rewritten = next(t for t in caption_tasks if t["data"]["instance"] != renamed["data"]["instance"])
    client.create_annotation(ls, rewritten["id"], [{"from_name": "caption", "to_name": "crop", "type": "textarea",
                                                    "value": {"text": [EDITED]}}])
    accept_caption_predictions(ls, first, cfg)
    review_sync(run_dir=str(first), config_files=[str(override)])
    before = {title: len(client.list_tasks(ls, client.find_project(ls, title))) for title in TITLES.values()}

    second, ids2, caps2 = _walk(video, override, ls, cfg)
    after = {title: len(client.list_tasks(ls, client.find_project(ls, title))) for title in TITLES.values()}
    assert after == before  # no new mask, identity-instance, cluster or caption task
    assert ids2["labelstudio"]["instances"]["new_tasks"] == 0 and caps2["labelstudio"]["new_tasks"] == 0
    assert ids2["labelstudio"]["instances"]["reused_tasks"] == len(instance_tasks)
    # the tasks now belong to both runs: the second run's review counts them, every one already answered
    for title in (TITLES["identity_instances_title"], TITLES["captions_title"]):
        mine = _tasks(ls, title, second)
        assert mine and {t["id"] for t in mine} == {t["id"] for t in _tasks(ls, title, first)}
    assert all(client.latest_annotation(t) for t in _tasks(ls, TITLES["captions_title"], second))

    review_sync(run_dir=str(second), config_files=[str(override)])
    rows = {r["row_id"]: r for r in Manifest.for_run(second).rows(kind="instance")}
    zed = rows[renamed["data"]["instance"]]
    assert (zed["identity"], zed["identity_state"]) == ("Zed", "reviewed")
    edited = rows[rewritten["data"]["instance"]]
    assert (edited["caption"], edited["caption_state"], edited["caption_edited"]) == (EDITED, "reviewed", True)
    named = [r for r in rows.values() if r.get("identity_state") == "cluster"]
    assert named and all(r["identity"].startswith("character_") for r in named)  # the cluster names carried over
