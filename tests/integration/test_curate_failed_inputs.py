"""`castlab curate FOLDER` on a folder with a good and a corrupt video, under a real Prefect runtime: the good one is
processed, the corrupt one recorded with the decoder's reason, the exit status says so unless --allow-failures."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_thin_path import make_video

from castlab.manifest import Manifest

pytestmark = pytest.mark.integration


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, dict[str, Any] | None, str]:
    """(exit status, the printed summary, stderr) of `castlab ARGV` in this process (its env changes undone)."""
    from flows import cli

    saved = dict(os.environ)
    try:
        status = cli.main(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out, err = capsys.readouterr()
    start = out.rfind("\n{\n") + 1 if "\n{\n" in out else (0 if out.startswith("{") else -1)
    return status, (json.loads(out[start:]) if start >= 0 else None), err


def _corrupt(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(5).integers(0, 256, 200, dtype=np.uint8).tobytes())
    return path


def test_a_corrupt_video_is_recorded_and_the_batch_goes_on(ls_env, tmp_path: Path, capsys: pytest.CaptureFixture):
    folder = Path(ls_env.workspace) / "media" / "mixed"
    folder.mkdir(parents=True)
    make_video(folder / "good.mp4")
    _corrupt(folder / "broken.mp4")

    status, summary, err = _cli(["curate", str(folder), "--no-push"], capsys)
    assert status == 3, err[-2000:]
    assert summary is not None
    [failed] = summary["failed"]
    assert Path(failed["input"]).name == "broken.mp4"
    assert "broken.mp4" in failed["reason"] and "cannot be opened as a video" in failed["reason"]
    assert "broken.mp4" in err and "--allow-failures" in err
    good = next(v for v in summary["videos"] if Path(v["video"]).name == "good.mp4")
    assert good["kept"] > 0 and summary["segmentation"]["instances"] > 0

    run = Path(summary["run_dir"])
    manifest = Manifest.load(run / "manifest.parquet")
    [row] = manifest.rows(kind="video")
    assert row["status"] == "rejected" and row["reject_reason"] == failed["reason"]
    assert {Path(r["video"]).name for r in manifest.rows(kind="frame")} == {"good.mp4"}
    shots = json.loads((run / "shots.json").read_text())
    assert [e["reason"] for e in shots["failed"].values()] == [failed["reason"]]
    assert "## Failed inputs" in (run / "report.md").read_text()

    status, summary, err = _cli(["curate", str(folder), "--no-push", "--allow-failures"], capsys)
    assert status == 0, err[-2000:]
    assert summary is not None and len(summary["failed"]) == 1

    bad = folder.parent / "all bad"
    bad.mkdir()
    _corrupt(bad / "one.mp4")
    _corrupt(bad / "two.mov")
    status, summary, err = _cli(["curate", str(bad), "--no-push", "--allow-failures"], capsys)
    assert status == 2 and summary is None
    assert "no video could be read (2 failed" in err and "one.mp4" in err
