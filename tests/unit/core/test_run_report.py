"""The run report from a scripted run: the funnel, what reviewers did to the pre-annotations (accepted, edited with a
known IoU, deleted, added), the caption phrases they took out, annotator lead times; the page renders in headless
Chromium with every section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from browser import rendered_dom, screenshot
from PIL import Image

from castlab.manifest import Manifest
from castlab.report.collect import collect
from castlab.report.render import SECTIONS, write

VERSION = "tiny-sam2.1_hiera_t-256"


def _mask(path: Path, columns: slice) -> str:
    mask = np.zeros((10, 10), np.uint8)
    mask[:, columns] = 255
    Image.fromarray(mask).save(path)
    return str(path)


def scripted_run(workspace: Path) -> Path:
    run_dir = workspace / "runs" / "20261202-000000-curate"
    (run_dir / "captions").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("profile: tiny\n")
    (run_dir / "shots.json").write_text(json.dumps({"videos": {"v1": {
        "shots": [{}, {}], "frames_decoded": 48, "decode_errors": []}}}))
    frames = [{"row_id": f"frame:v1:{i}", "kind": "frame", "video_id": "v1", "status": status, "reject_codes": codes,
               "split": "train"} for i, (status, codes) in enumerate([("kept", ""), ("kept", ""), ("rejected", "blur"),
                                                                      ("rejected", "duplicate")])]
    base = {"kind": "instance", "video_id": "v1", "parent_id": "frame:v1:0", "model_version": VERSION,
            "status": "kept", "identity_cluster": 0, "view": "front"}
    masks = run_dir / "masks"
    masks.mkdir()
    predicted = _mask(masks / "pred.png", slice(0, 4))
    instances = [
        {**base, "row_id": "i0", "review_state": "accepted", "identity": "Hero", "caption": "hero, red coat"},
        {**base, "row_id": "i1", "review_state": "accepted", "identity": "Hero", "identity_cluster": 1},
        {**base, "row_id": "i2", "review_state": "corrected", "identity": "Hero", "mask_path": predicted,
         "reviewed_mask_path": _mask(masks / "reviewed.png", slice(0, 2))},  # IoU 20/40 = 0.5
        {**base, "row_id": "i3", "review_state": "removed", "status": "rejected"},
        {**base, "row_id": "i4", "review_state": "added", "model_version": "human", "identity": "Sidekick",
         "identity_cluster": -1},
        {**base, "row_id": "i5"},  # not reviewed yet
    ]
    manifest = Manifest.for_run(run_dir)
    manifest.add_rows(frames + instances)
    manifest.save()
    records = [{"row_id": "i0", "caption": "hero, red coat, smiling", "reviewed_caption": "hero, red coat, angry",
                "fields": {"outfit": "red coat", "expression": "smiling"}},
               {"row_id": "i1", "caption": "hero, red coat", "reviewed_caption": None,
                "fields": {"outfit": "red coat"}}]
    (run_dir / "captions" / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "labelstudio_push.json").write_text(json.dumps({"project_id": 7}))
    return run_dir


def test_review_analytics_match_the_scripted_review(workspace: Path):
    run_dir = scripted_run(workspace)
    run = "runs/20261202-000000-curate"
    tasks = {"masks": [{"data": {"castlab_run": run}, "annotations": [{"lead_time": 10.0}, {"lead_time": 30.0}]},
                       {"data": {"castlab_run": "runs/other"}, "annotations": [{"lead_time": 999.0}]}]}
    report = collect(run_dir, tasks)

    funnel = report["funnel"]["all"]["stages"]
    assert funnel["frames decoded"] == 48 and funnel["frames selected"] == 4 and funnel["kept"] == 2
    assert funnel["rejected by quality gates"] == 1 and funnel["rejected as duplicates"] == 1
    assert funnel["instances"] == 6 and funnel["instances kept"] == 5 and funnel["reviewed"] == 5
    assert report["funnel"]["all"]["identities"] == {"Hero": 3, "Sidekick": 1}
    assert report["funnel"]["v1"]["stages"] == funnel  # one video: its column is the total

    masks = report["reviews"]["masks"]
    assert masks == {VERSION: {"accepted": 2, "corrected": 1, "removed": 1, "added": 1, "predicted": 4,
                               "accepted_share": 0.5, "mean_iou_of_edits": 0.5}}
    assert report["reviews"]["lead_times"]["masks"] == {"annotations": 2, "median_s": 20.0, "mean_s": 20.0,
                                                        "total_s": 40.0}  # the other run's annotation left out
    identity = report["identity"]["review"]
    assert identity["merges"] == {"Hero": [0, 1]} and identity["named_from_noise"] == 1
    assert report["captions"]["fields"] == {
        "expression": {"reviewed": 1, "edited": 1, "edited_share": 1.0},
        "outfit": {"reviewed": 1, "edited": 0, "edited_share": 0.0}}

    files = write(report, run_dir / "report")
    assert "| tiny-sam2.1_hiera_t-256 | 4 | 2 | 1 | 1 | 1 | 0.5 | 0.5 |" in Path(files["markdown"]).read_text()
    assert Path(files["mask_review"]).read_text().splitlines()[1] == f"{VERSION},4,2,1,1,1,0.5,0.5"


def test_the_page_renders_every_section_in_headless_chromium(workspace: Path, tmp_path: Path):
    run_dir = scripted_run(workspace)
    page = Path(write(collect(run_dir, None), run_dir / "report")["html"])
    assert "src=\"http" not in page.read_text()  # self-contained: nothing fetched
    dom = rendered_dom(page, tmp_path)
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom, section
    assert "tiny profile" in dom and "Label Studio was not asked" in dom and VERSION in dom
    shot = screenshot(page, tmp_path, tmp_path / "report.png")
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10  # a page was drawn, not a blank
