"""castlab track against a real Label Studio under a real Prefect runtime, with the real tiny SAM2 video predictor:
per-frame brush tasks (ordered, object labels stable across frames) and a shot-level video task (served video, box
tracks per object) are pushed once; a reviewer corrects one frame and rejects one track; review-sync writes the
reviewed mask and the decisions, and export-video takes only the accepted track."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from video_run import truth_mask, video_run

from castlab.config import load_config
from castlab.labelstudio import client
from castlab.manifest import Manifest

pytestmark = pytest.mark.integration
CORRECTED = range(4, 13)  # the reviewer redraws the first object on these frames (random-weight masks)


def test_track_review_round_trip(ls_env, tmp_path: Path):
    from flows.review_sync import review_sync
    from flows.video import export_video, track

    override = tmp_path / "tracks.yaml"
    override.write_text("propagation:\n  max_frames: 8\n"
                        "labelstudio:\n  track_frames_title: track frames it\n  tracks_title: tracks it\n"
                        "video:\n  vace:\n    max_side: 64\n    fps: null\n")
    run = Path(ls_env.workspace) / "runs" / "track-it"
    _, frame = video_run(run, load_config(overrides=[override]))
    summary = track(run_dir=str(run), frame=frame["row_id"], config_files=[str(override)])
    pushed = summary["labelstudio"]
    assert summary["frames"] == 20 and pushed["new_frame_tasks"] == 20 and pushed["new_video_tasks"] == 1
    again = track(run_dir=str(run), frame=frame["row_id"], config_files=[str(override)])
    assert again["reused"] and again["labelstudio"]["new_frame_tasks"] == 0 == again["labelstudio"]["new_video_tasks"]

    recorded = json.loads((run / "tracks" / "push.json").read_text())  # what castlab.reviews moves on from
    assert recorded == {key: pushed[key] for key in ("frames_project_id", "video_project_id")}
    ls = client.connect(ls_env.url, ls_env.token)
    tasks = sorted(client.list_tasks(ls, pushed["frames_project_id"]), key=lambda t: t["id"])
    assert [t["data"]["frame_index"] for t in tasks] == list(range(20))  # one task per frame, in frame order
    labels = [o["value"] for o in tasks[0]["data"]["objects"]]
    assert labels == ["1 Mia", "2 teapot"] and all([o["value"] for o in t["data"]["objects"]] == labels
                                                   for t in tasks)
    predicted = {r["value"]["brushlabels"][0] for t in tasks for r in t["predictions"][-1]["result"]}
    assert predicted <= set(labels)  # every predicted region names a tracked object

    (video,) = client.list_tasks(ls, pushed["video_project_id"])
    regions = video["predictions"][-1]["result"]
    assert {r["type"] for r in regions} == {"videorectangle"} and regions[0]["value"]["framesCount"] == 20
    served = requests.get(ls_env.url + video["data"]["video"], headers={"Authorization": f"Token {ls_env.token}"},
                          timeout=30)
    assert served.status_code == 200 and served.content[4:8] == b"ftyp"  # the shot video is served to the editor

    for task in tasks[CORRECTED.start:CORRECTED.stop]:
        fixed = truth_mask(1, task["data"]["frame_index"])
        client.create_annotation(ls, task["id"], [client.brush_result(fixed.astype(np.uint8), "1 Mia", 96, 64)])
    client.create_annotation(ls, video["id"], regions + [
        {"from_name": "rejected", "to_name": "video", "type": "choices", "value": {"choices": ["2 teapot"]}}])

    counts = review_sync(run_dir=str(run), config_files=[str(override)])["tracks"]
    assert counts["reviewed_frames"] == len(CORRECTED) and counts["accepted"] == 1 and counts["rejected"] == 1, counts
    folder = run / "tracks" / summary["track_id"]
    for index in CORRECTED:
        reviewed = np.asarray(Image.open(folder / "reviewed" / "1" / f"{index:06d}.png")) > 127
        assert np.array_equal(reviewed, truth_mask(1, index))
    review = json.loads((folder / "review.json").read_text())
    assert review["frames"][str(CORRECTED[0])]["objects"]["2"] == "absent"  # no region: absent on that frame
    rows = {r["row_id"].rsplit(":", 1)[1]: r for r in Manifest.for_run(run).rows(kind="track")}
    assert rows["1"]["review_state"] == "accepted" and rows["2"]["review_state"] == "rejected"

    exported = export_video(run_dir=str(run), config_files=[str(override)])
    assert len(exported["clip_names"]) == 1 and exported["skipped"][0]["why"] == "rejected"
    clip = json.loads((run / "exports" / "vace" / "castlab_export.json").read_text())["clips"][0]
    assert clip["frames"] == 9 and clip["reviewed_frames"] == 9  # the reviewed frames 4-12: 4k + 1 of them
    assert (run / "exports" / "vace" / "metadata_vace.csv").is_file()
