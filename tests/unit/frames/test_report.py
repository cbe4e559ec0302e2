import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from castlab.frames.report import CONTACT_SHEET, REPORT_CSV, REPORT_MD, contact_sheet, write_report


def _rows(folder: Path) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    spec = [  # (video, status, codes, split)
        ("v1", "kept", None, "train"), ("v1", "kept", None, "val"), ("v1", "rejected", "blur", "train"),
        ("v1", "rejected", "blur;too_dark", "train"), ("v2", "rejected", "duplicate", "train"),
        ("v2", "kept", None, "train"),
    ]
    rows = []
    for i, (vid, status, codes, split) in enumerate(spec):
        path = folder / f"{vid}_{i}.jpg"
        Image.fromarray(np.full((36, 64, 3), 40 * i, np.uint8)).save(path)
        rows.append({"row_id": f"frame:{vid}:{i}", "kind": "frame", "video_id": vid, "shot_id": f"{vid}_s0",
                     "frame_index": i, "time_s": i / 24, "path": str(path), "status": status, "reject_codes": codes,
                     "blur": 10.0 * i, "brightness": 5.0, "split": split,
                     "duplicate_of": "frame:v1:0" if codes == "duplicate" else None})
    return rows


def _shots(run: Path) -> None:
    videos = {
        "v1": {"video": "/media/one film.mp4", "frames_decoded": 100, "decode_errors": [{"frame": 7}],
               "shots": [{"shot_id": "v1_s0"}, {"shot_id": "v1_s1"}]},
        "v2": {"video": "/media/two.mp4", "frames_decoded": 50, "decode_errors": [], "shots": [{"shot_id": "v2_s0"}]},
    }
    (run / "shots.json").write_text(json.dumps({"videos": videos}))


def test_report_counts_per_stage_and_reason(tmp_path: Path):
    run = tmp_path / "run"
    rows = _rows(run / "frames")
    _shots(run)
    report = write_report(run, rows, profile="tiny")
    stages, reasons = report["stages"], report["reasons"]
    assert stages["videos"] == 2 and stages["shots"] == 3 and stages["frames decoded"] == 150
    assert stages["decode errors"] == 1 and stages["frames selected"] == 6
    assert stages["rejected by quality gates"] == 2 and stages["rejected as duplicates"] == 1
    assert stages["kept"] == 3 and stages["kept train"] == 2 and stages["kept val"] == 1
    assert reasons["blur"] == 2 and reasons["too_dark"] == 1 and reasons["duplicate"] == 1 and reasons["corrupt"] == 0

    table = list(csv.DictReader((run / REPORT_CSV).open()))
    lookup = {(r["scope"], r["section"], r["name"]): int(r["count"]) for r in table}
    assert lookup[("all", "reason", "blur")] == 2
    assert lookup[("v1", "stage", "kept")] == 2 and lookup[("v2", "stage", "kept")] == 1
    assert lookup[("v2", "reason", "duplicate")] == 1 and lookup[("v1", "reason", "duplicate")] == 0

    markdown = (run / REPORT_MD).read_text()
    assert "| kept | 3 | 2 | 1 |" in markdown and "one film.mp4" in markdown and CONTACT_SHEET in markdown
    assert "Model profile: **tiny**" in markdown and '"frame": 7' in markdown


def test_contact_sheet_has_one_row_per_group(tmp_path: Path):
    rows = _rows(tmp_path)
    sheet = contact_sheet(rows, tile=(64, 36))
    groups = 1 + 3  # kept + blur, too_dark, duplicate
    assert sheet.height == 4 + groups * (36 + 14 + 4)
    pixels = np.asarray(sheet)
    # the first kept example (frame 0, black) is pasted at the first tile of the first row
    assert pixels[4 + 18, 120 + 4 + 32].tolist() == [0, 0, 0]
