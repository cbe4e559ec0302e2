"""Review analytics from real Label Studio annotations: a reviewer accepts, edits, deletes and adds masks (each
annotation with its lead time) on the pre-annotations of two model versions; review-sync pulls them back and the
report flow counts exactly what was scripted, per model version and per project."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import numpy as np
import pytest
from run_builder import instance_run

from castlab.labelstudio import client
from castlab.manifest import Manifest

pytestmark = pytest.mark.integration

SIZE = (96, 128)  # height x width
BOX = (10, 80, 30, 90)  # y0, y1, x0, x1 of every predicted mask
VERSIONS = ["sam2-analytics-a"] * 3 + ["sam2-analytics-b"] * 3


def _run(workspace: Path) -> Path:
    """Six frames with one predicted instance each: frames 0-2 by one model version, 3-5 by another."""
    run = workspace / "runs" / "report-analytics-it"
    manifest = instance_run(run, len(VERSIONS), "ra", seed=11, size=SIZE, box=BOX, fields=lambda f: {
        "model_version": VERSIONS[f], "score": 0.9, "video_id": "ra", "shot_id": f"s{f // 3}"})
    for f in range(len(VERSIONS)):
        manifest.update(f"frame:ra:{f}", width=SIZE[1], height=SIZE[0], video_id="ra", shot_id=f"s{f // 3}",
                        frame_index=f)
    manifest.save()
    return run


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros(SIZE, np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def test_report_counts_scripted_reviews(ls_env, tmp_path: Path):
    from castlab.config import load_config
    from castlab.labelstudio.projects.masks import push_masks
    from flows.report import report
    from flows.review_sync import review_sync

    override = tmp_path / "analytics.yaml"
    override.write_text("labelstudio:\n  masks_project_title: report analytics it\n")
    cfg = load_config([override])
    run = _run(Path(ls_env.workspace))
    manifest = Manifest.for_run(run)
    ls = client.connect(ls_env.url, ls_env.token)
    pushed = push_masks(ls, manifest, run, cfg)
    manifest.save()
    tasks = {t["data"]["castlab_key"]: t for t in client.list_tasks(ls, pushed["project_id"])
             if client.in_run(t, f"runs/{run.name}")}
    assert len(tasks) == len(VERSIONS) and all(t["predictions"] for t in tasks.values())

    def predicted(f: int) -> list[dict]:
        return [dict(r) for r in tasks[f"frame:ra:{f}"]["predictions"][0]["result"]]

    h, w = SIZE
    edited = _box(20, 70, 40, 100)
    drawn = _box(0, 30, 0, 25)  # a character the model missed
    script = [  # frame, the reviewer's regions, lead time (s)
        (0, predicted(0), 4.0),  # accepted unchanged
        (1, [client.brush_result(edited, "character", w, h, region_id=predicted(1)[0]["id"])], 10.0),  # edited
        (2, [], 2.0),  # deleted
        (3, [*predicted(3), client.brush_result(drawn, "character", w, h, region_id="drawn1")], 6.0),  # + added
        (4, predicted(4), 3.0),  # accepted unchanged; frame 5 is left for later
    ]
    for f, result, lead_time in script:
        client.create_annotation(ls, tasks[f"frame:ra:{f}"]["id"], result, lead_time=lead_time)

    counts = review_sync(run_dir=str(run), config_files=[str(override)])
    assert {k: counts[k] for k in ("reviewed", "pending", "accepted", "corrected", "removed", "added")} == {
        "reviewed": 5, "pending": 1, "accepted": 3, "corrected": 1, "removed": 1, "added": 1}

    files = report(run_dirs=[str(run)], config_files=[str(override)])[str(run.resolve())]
    masks = {row["model version"]: row for row in csv.DictReader(open(files["mask_review"], encoding="utf-8"))}
    expected_iou = _iou(edited, _box(*BOX))
    assert set(masks) == {"sam2-analytics-a", "sam2-analytics-b"}
    a, b = masks["sam2-analytics-a"], masks["sam2-analytics-b"]
    assert [a[k] for k in ("pre-annotated", "accepted unchanged", "edited", "deleted", "added")] == \
        ["3", "1", "1", "1", "0"]
    assert float(a["accepted share"]) == pytest.approx(1 / 3, abs=1e-3)
    assert float(a["mean IoU of edits"]) == pytest.approx(expected_iou, abs=1e-3)
    assert [b[k] for k in ("pre-annotated", "accepted unchanged", "edited", "deleted", "added")] == \
        ["2", "2", "0", "0", "1"]  # frame 5 was not reviewed: it is not counted
    assert float(b["accepted share"]) == 1.0 and b["mean IoU of edits"] == ""

    leads = {row["review"]: row for row in csv.DictReader(open(files["lead_times"], encoding="utf-8"))}
    times = [lead for _, _, lead in script]
    assert set(leads) == {"masks"} and int(leads["masks"]["project"]) == pushed["project_id"]
    assert int(leads["masks"]["annotations"]) == len(times)
    assert float(leads["masks"]["median s"]) == statistics.median(times)
    assert float(leads["masks"]["mean s"]) == pytest.approx(statistics.fmean(times))
    assert float(leads["masks"]["total s"]) == pytest.approx(sum(times))

    page = Path(files["html"]).read_text(encoding="utf-8")
    assert "Review analytics" in page and "sam2-analytics-a" in page and "Label Studio was not asked" not in page
    markdown = Path(files["markdown"]).read_text(encoding="utf-8")
    assert "| sam2-analytics-a | 3 | 1 | 1 | 1 | 0 | 0.3333 |" in markdown
