import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_media import make_video

import castlab.models.safety as safety_models
from castlab import frames
from castlab.config import load_config
from castlab.frames.report import REPORT_CSV, REPORT_MD, contact_sheet, frame_counts
from castlab.frames.safety import NSFW_SCORE, SAFETY_MODEL, gate_frames
from castlab.manifest import Manifest
from castlab.orchestration import clear_worker_models


class FakeScorer:
    """Scores each frame by the number in its file name / 100, and remembers every batch it saw."""

    model_version = "fake-nsfw-1"

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def score(self, images: list[Image.Image]) -> list[float]:
        self.batches.append([int(im.getpixel((0, 0))[0]) for im in images])
        return [im.getpixel((0, 0))[0] / 100 for im in images]


@pytest.fixture(autouse=True)
def _no_cached_scorer():
    clear_worker_models()
    yield
    clear_worker_models()


def _rows(folder: Path, scores: list[int], rejected: tuple[int, ...] = ()) -> list[dict]:
    """One frame per score (its pixels carry the score the fake gives it); `rejected` failed a quality gate."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, score in enumerate(scores):
        path = folder / f"v1_{i:06d}.jpg"
        Image.fromarray(np.full((36, 64, 3), score, np.uint8)).save(path, quality=100)
        bad = i in rejected
        rows.append({"row_id": f"frame:v1:{i}", "kind": "frame", "video_id": "v1", "shot_id": "v1_s0",
                     "frame_index": i, "time_s": i / 24, "path": str(path), "status": "rejected" if bad else "kept",
                     "reject_reason": "blur 1.0 < 80" if bad else None, "reject_codes": "blur" if bad else None})
    return rows


def _cfg(**safety):
    return load_config(profile="tiny", extra={"safety": safety})


def test_frames_above_the_threshold_are_rejected_with_reason_and_score(tmp_path: Path):
    rows = _rows(tmp_path, [10, 85, 80, 95, 99], rejected=(4,))
    fake = FakeScorer()
    out = gate_frames(rows, _cfg(threshold=0.8, batch_size=2), fake)
    assert fake.batches == [[10, 85], [80, 95]]  # kept frames only, in batches of safety.batch_size
    status = [(r["status"], r["reject_codes"], r.get(NSFW_SCORE)) for r in out]
    assert status == [("kept", None, 0.1), ("rejected", "nsfw", 0.85), ("kept", None, 0.8),  # 0.8 is not above
                      ("rejected", "nsfw", 0.95), ("rejected", "blur", None)]  # never scored
    assert out[1]["reject_reason"] == "nsfw: score 0.850 > 0.8"
    assert out[4]["reject_reason"] == "blur 1.0 < 80" and SAFETY_MODEL not in out[4]
    assert {r[SAFETY_MODEL] for r in out[:4]} == {"fake-nsfw-1"}
    assert rows[1]["status"] == "kept"  # the input rows are left as they were

    counts = frame_counts(out, {"videos": {}})
    assert counts["reasons"]["nsfw"] == 2 and counts["reasons"]["blur"] == 1
    assert counts["stages"]["rejected as nsfw"] == 2 and counts["stages"]["rejected by quality gates"] == 1
    assert counts["safety_models"] == ["fake-nsfw-1"]


def test_an_unreadable_frame_is_rejected_and_the_others_are_scored(tmp_path: Path):
    rows = _rows(tmp_path, [10, 90, 20])
    Path(rows[1]["path"]).write_bytes(b"not a jpeg")
    fake = FakeScorer()
    out = gate_frames(rows, _cfg(threshold=0.8), fake)
    assert fake.batches == [[10, 20]]
    assert out[1]["status"] == "rejected" and out[1]["reject_codes"] == "unreadable" and NSFW_SCORE not in out[1]
    assert "safety gate" in out[1]["reject_reason"] and rows[1]["path"] in out[1]["reject_reason"]
    assert [out[0][NSFW_SCORE], out[2][NSFW_SCORE]] == [0.1, 0.2]


def test_the_off_switch_loads_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def refuse(cfg):
        raise AssertionError("the safety model was loaded")

    monkeypatch.setattr(safety_models, "load_safety_scorer", refuse)
    rows = _rows(tmp_path, [99, 99])
    out = gate_frames(rows, _cfg(enabled=False))
    assert [r["status"] for r in out] == ["kept", "kept"] and all(NSFW_SCORE not in r for r in out)
    lone = gate_frames(_rows(tmp_path, [99], rejected=(0,)), _cfg())  # enabled, nothing kept: nothing loaded
    assert lone[0]["status"] == "rejected" and NSFW_SCORE not in lone[0]


def test_the_configured_scorer_loads_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    loads: list[str] = []

    def load(cfg):
        loads.append(cfg.safety.backend)
        return FakeScorer()

    monkeypatch.setattr(safety_models, "load_safety_scorer", load)
    cfg = _cfg(threshold=0.5)
    first = gate_frames(_rows(tmp_path / "a", [10, 60]), cfg)
    second = gate_frames(_rows(tmp_path / "b", [70]), cfg)
    assert loads == ["classifier"]
    assert [r["status"] for r in first + second] == ["kept", "rejected", "rejected"]


def test_tiny_classifier_end_to_end_manifest_and_report(workspace: Path, tmp_path: Path):
    """The real tiny ViT scores real extracted frames: threshold 0 rejects every frame the quality gates kept,
    threshold 1 none; the scores are the same both times, in the manifest and counted in the report."""
    video = make_video(tmp_path / "clip.mp4", ("sharp", "sharp"), 24, size=(256, 256))
    results = {}
    for threshold in (0.0, 1.0):
        run_dir = tmp_path / f"run-{threshold:g}"
        summary = frames.run(run_dir, _cfg(threshold=threshold), video)
        rows = Manifest.for_run(run_dir).rows(kind="frame")
        results[threshold] = (summary, rows, run_dir)

    summary, rows, run_dir = results[0.0]
    scored = [r for r in rows if r.get("reject_codes") == "nsfw"]
    assert len(scored) >= 5 and all(r["status"] == "rejected" for r in rows)
    assert all(str(r[SAFETY_MODEL]).startswith("tiny-vit-nsfw-") and 0 < r[NSFW_SCORE] < 1 for r in scored)
    assert all(r["reject_reason"].startswith("nsfw: score ") for r in scored)
    assert summary["report"]["reasons"]["nsfw"] == len(scored)
    assert summary["report"]["stages"]["rejected as nsfw"] == len(scored)
    assert summary["report"]["stages"]["kept"] == 0
    lines = (run_dir / REPORT_CSV).read_text().splitlines()
    assert f"all,reason,nsfw,{len(scored)}" in lines
    markdown = (run_dir / REPORT_MD).read_text()
    assert f"| nsfw | {len(scored)} |" in markdown and "Safety model: `tiny-vit-nsfw-" in markdown

    _, open_rows, _ = results[1.0]
    assert not any(r.get("reject_codes") == "nsfw" for r in open_rows)
    strict = {r["row_id"]: r[NSFW_SCORE] for r in scored}
    assert {r["row_id"]: r[NSFW_SCORE] for r in open_rows if r["row_id"] in strict} == strict
    assert all(score < 0.8 for score in strict.values())  # random weights: the default bar keeps every frame
    assert json.loads((run_dir / "shots.json").read_text())["videos"]  # the frames stage ran as usual


def test_contact_sheet_never_shows_an_unsafe_frame(tmp_path: Path):
    rows = _rows(tmp_path, [200, 250], rejected=())
    rows[1].update(status="rejected", reject_codes="nsfw", reject_reason="nsfw: score 0.990 > 0.8", nsfw_score=0.99)
    sheet = np.asarray(contact_sheet(rows, tile=(64, 36)))
    kept_tile = sheet[4 + 18, 120 + 4 + 32]  # first row (kept): the frame itself
    nsfw_tile = sheet[4 + (36 + 14 + 4) + 18, 120 + 4 + 32]  # second row (nsfw): a blank tile
    assert kept_tile.tolist() == [200, 200, 200] and nsfw_tile.tolist() == [90, 90, 90]
