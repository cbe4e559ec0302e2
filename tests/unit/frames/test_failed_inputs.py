"""A batch that survives a bad file: unreadable videos and frames are recorded with their reason, the rest goes on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_media import make_video

from castlab.config import load_config
from castlab.errors import InputError
from castlab.frames import stage
from castlab.frames.dedup import deduplicate
from castlab.frames.failures import check_videos, failed_frames, failed_videos, process_each
from castlab.frames.report import REPORT_MD
from castlab.manifest import Manifest


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 64, dtype=np.uint8).tobytes())
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one good video and one corrupt one (random bytes named .mp4)."""
    folder = tmp_path_factory.mktemp("mixed")
    make_video(folder / "good.mp4", frames_per_shot=12)
    _corrupt(folder / "broken.mp4")
    return folder


def _cfg():
    return load_config(extra={"safety": {"enabled": False}})


def test_a_corrupt_video_is_recorded_and_the_good_one_processed(mixed: Path, tmp_path: Path):
    run = tmp_path / "run"
    summary = stage.run(run, _cfg(), mixed)
    by_name = {Path(v["video"]).name: v for v in summary["videos"]}
    assert by_name["good.mp4"]["frames"] > 0 and by_name["broken.mp4"]["frames"] == 0
    [failed] = summary["failed"]
    assert failed["input"].endswith("broken.mp4") and "broken.mp4" in failed["reason"]
    assert "cannot be opened as a video" in failed["reason"]  # the decoder's verdict

    manifest = Manifest.load(run / "manifest.parquet")
    [row] = manifest.rows(kind="video")
    assert row["status"] == "rejected" and row["reject_reason"] == failed["reason"]
    assert all(r["video"].endswith("good.mp4") for r in manifest.rows(kind="frame"))
    shots = json.loads((run / "shots.json").read_text())
    assert len(shots["videos"]) == 1
    [entry] = shots["failed"].values()
    assert entry["reason"] == failed["reason"]
    report = (run / REPORT_MD).read_text()
    assert "## Failed inputs" in report and "broken.mp4" in report
    assert summary["report"]["stages"]["videos failed"] == 1


def test_no_readable_video_is_an_input_error_that_keeps_the_record(tmp_path: Path):
    folder = tmp_path / "bad"
    _corrupt(folder / "a.mp4")
    _corrupt(folder / "b.mkv")
    (folder / "empty.mp4").write_bytes(b"")
    run = tmp_path / "run"
    with pytest.raises(InputError, match=r"no video could be read \(3 failed") as caught:
        stage.run(run, _cfg(), folder)
    assert "a.mp4" in str(caught.value) and "empty (0 bytes)" in str(caught.value)
    assert len(failed_videos(Manifest.load(run / "manifest.parquet").rows(kind="video"))) == 3


def test_check_videos_probes_before_anything_runs(mixed: Path, tmp_path: Path):
    readable, failed = check_videos([str(mixed)])
    assert [Path(p).name for p in readable] == ["good.mp4"]
    assert [Path(f["input"]).name for f in failed] == ["broken.mp4"]
    with pytest.raises(InputError, match="no video could be read"):
        check_videos([str(_corrupt(tmp_path / "only.mp4"))])


def test_dedup_rejects_an_unreadable_frame_and_goes_on(tmp_path: Path):
    rows = []
    for i in range(3):
        path = tmp_path / f"f{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        rows.append({"row_id": f"frame:v:{i}", "kind": "frame", "path": str(path), "status": "kept", "blur": 1.0})
    Path(rows[1]["path"]).write_bytes(b"not a png")
    out = deduplicate(rows, load_config(), progress=False)
    assert [r["status"] for r in out] == ["kept", "rejected", "kept"]
    assert out[1]["reject_codes"] == "unreadable" and "f1.png" in out[1]["reject_reason"]
    assert [f["input"] for f in failed_frames(out)] == [rows[1]["path"]]


def test_process_each_redoes_a_failing_chunk_row_by_row(tmp_path: Path):
    rows = [{"row_id": f"frame:v:{i}", "path": str(tmp_path / f"{i}.png")} for i in range(4)]

    def work(some):
        for r in some:
            if r["row_id"] == "frame:v:2":
                raise InputError(r["path"], "is not a readable image")
            if r["row_id"] == "frame:v:3":
                raise PermissionError(13, "Permission denied", str(tmp_path / "character" / "x.png"))
        return [{"row_id": r["row_id"].replace("frame", "inst")} for r in some]

    out, rejected = process_each(rows, work, "segmentation")
    assert [r["row_id"] for r in out] == ["inst:v:0", "inst:v:1"]
    assert [(r["row_id"], r["status"], r["reject_codes"]) for r in rejected] == [
        ("frame:v:2", "rejected", "unreadable"), ("frame:v:3", "rejected", "write_failed")]
    assert "2.png: is not a readable image" in rejected[0]["reject_reason"]
    assert "Permission denied" in rejected[1]["reject_reason"]
    assert process_each(rows[:2], work, "segmentation") == ([{"row_id": "inst:v:0"}, {"row_id": "inst:v:1"}], [])

    def bug(some):
        raise KeyError("a bug is not bad input")

    with pytest.raises(KeyError):
        process_each(rows, bug, "segmentation")


def test_cli_exit_status_and_allow_failures(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    from flows import cli

    summary = {"run_dir": "runs/x", "failed": [{"input": "broken.mp4", "reason": "broken.mp4: not a video"}]}
    monkeypatch.setattr(cli, "cmd_curate", lambda args: summary)
    assert cli.main(["curate", "folder"]) == cli.INPUTS_FAILED == 3
    assert "broken.mp4: not a video" in capsys.readouterr().err
    assert cli.main(["curate", "folder", "--allow-failures"]) == 0
    monkeypatch.setattr(cli, "cmd_curate", lambda args: {**summary, "failed": []})
    assert cli.main(["curate", "folder"]) == 0
