import copy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from castlab.dataset.report import (
    CONTACT_SHEET,
    HEADER_COLOUR,
    HISTOGRAMS,
    LIMIT_COLOUR,
    MISSING_COLOUR,
    REPORT_MD,
    VAL_COLOUR,
    contact_sheet,
    histograms,
    shot_counts,
    view_order,
    write_dataset_report,
)
from castlab.pictures import TINY_STAMP

# (name, view, split, shot, (w, h), caption source, tokens)
IMAGES = [
    ("inst_ab12_0_0", "front", "train", "ab12_s0000", (40, 80), "reviewed", 30),
    ("inst_ab12_1_0", "front", "val", "ab12_s0001", (90, 60), "predicted", 41),
    ("inst_ab12_2_0", "front", "train", "ab12_s0000", (64, 64), "reviewed", 25),
    ("inst_cd34_0_0", "profile", "train", "cd34_s0003", (30, 100), "template", 12),
    ("inst_cd34_1_0", "profile", "train", "cd34_s0003", (120, 50), "predicted", 93),
    ("inst_cd34_2_0", None, "train", "cd34_s0004", (50, 70), "reviewed", 33),
]
REJECTED = [("duplicate", "duplicate of inst:ab12:0:0 (cosine 0.991)")] * 3 + [
    ("low_quality", "quality 0.21 below 0.40"), ("low_quality", "quality 0.33 below 0.40"),
    ("view_quota", "front quota of 40% reached"),
]


def _rgba(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    """A crop with a real background and a soft elliptical mask (alpha 0 → 255)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2)
    pixels = np.zeros((h, w, 4), np.uint8)
    pixels[..., :3] = colour
    pixels[..., 3] = np.clip((1.0 - r) * 2 * 255, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGBA")


def build_dataset(root: Path, small: bool = True, profile: str = "real") -> dict:
    """A dataset folder per the contract (images/, captions/) and its metadata dict."""
    (root / "images").mkdir(parents=True)
    (root / "captions").mkdir()
    images = []
    for i, (name, view, split, shot, size, source, tokens) in enumerate(IMAGES):
        _rgba(size, (40 * i, 200, 255 - 40 * i)).save(root / "images" / f"{name}.png")
        caption = "zorvik rabbit, " + ("a very long caption " * 20 if tokens > 77 else f"image {i}")
        (root / "captions" / f"{name}.txt").write_text(caption + "\n")
        images.append({
            "name": name, "image": f"images/{name}.png", "caption_file": f"captions/{name}.txt", "caption": caption,
            "caption_tokens": tokens, "caption_source": source, "split": split, "row_id": name.replace("_", ":"),
            "run": "runs/20261202-curate", "shot_key": shot, "view": view, "quality": 0.9 - i / 10,
            "size": list(size), "crop_box": [0, 0, *size], "scale": 1.0,
        })
    rejected = [{"row_id": f"inst:rej:{i}:0", "run": "runs/20261202-curate", "code": code, "reason": reason,
                 "view": "front", "shot_key": "ab12_s0000", "quality": 0.3}
                for i, (code, reason) in enumerate(REJECTED)]
    return {
        "format": "castlab-dataset/1", "profile": profile, "character": "Bunny", "trigger": "zorvik",
        "class_word": "rabbit", "class_tokens": "zorvik rabbit", "runs": ["runs/20261202-curate"], "resolution": 512,
        "background": "original", "num_repeats": 7, "target_size": {"min": 200, "max": 500}, "small": small,
        "counts": {"candidates": 12, "selected": 6, "train": 5, "val": 1, "rejected": 6},
        "images": images, "rejected": rejected, "long_captions": ["inst_cd34_1_0"],
    }


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "ds"
    return root, build_dataset(root)


def _runs(column: np.ndarray, colour: tuple[int, int, int]) -> int:
    """How many separate runs of `colour` a column of pixels has."""
    hit = np.all(column == colour, axis=-1).astype(int)
    return int(np.sum(np.diff(np.concatenate([[0], hit])) == 1))


def test_writes_three_valid_files(dataset):
    root, meta = dataset
    files = write_dataset_report(root, meta)
    assert files == {"report": REPORT_MD, "contact_sheet": CONTACT_SHEET, "histograms": HISTOGRAMS}
    for rel in (CONTACT_SHEET, HISTOGRAMS):
        with Image.open(root / rel) as im:
            im.verify()
        with Image.open(root / rel) as im:
            assert im.format == "PNG" and 600 <= im.width <= 1400 and 300 <= im.height <= 3000
    assert (root / REPORT_MD).read_text().startswith("# Dataset report: Bunny\n")


def test_contact_sheet_has_one_band_per_present_view(dataset):
    root, meta = dataset
    sheet, bands = contact_sheet(root, meta)
    assert [(b.view, b.total, b.shown, b.more) for b in bands] == [
        ("front", 3, 3, 0), ("profile", 2, 2, 0), ("unknown", 1, 1, 0)]
    pixels = np.asarray(sheet)
    assert _runs(pixels[:, 1], HEADER_COLOUR) == 3  # one header bar per band, nothing else in that colour
    assert bands[0].box[1] > 0 and bands[-1].box[3] == sheet.height
    assert all(a.box[3] == b.box[1] for a, b in zip(bands, bands[1:], strict=False))
    # the one val image (front) is outlined; the soft mask shows the checkerboard's two greys
    assert np.all(pixels == VAL_COLOUR, axis=-1).sum() > 400
    front = pixels[bands[0].box[1]:bands[0].box[3]]
    assert np.all(front == (150, 150, 150), axis=-1).any() and np.all(front == (205, 205, 205), axis=-1).any()


def test_contact_sheet_caps_tiles_and_survives_missing_and_empty(dataset):
    root, meta = dataset
    (root / "images" / "inst_cd34_2_0.png").unlink()
    sheet, bands = contact_sheet(root, meta, tiles_per_view=2, columns=2)
    assert [(b.view, b.shown, b.more) for b in bands] == [("front", 2, 1), ("profile", 2, 0), ("unknown", 1, 0)]
    assert np.all(np.asarray(sheet)[bands[2].box[1]:] == MISSING_COLOUR, axis=-1).sum() > 1000
    empty = copy.deepcopy(meta) | {"images": []}
    sheet, bands = contact_sheet(root, empty)
    assert bands == [] and sheet.height < 150
    files = write_dataset_report(root, empty)
    assert (root / files["histograms"]).is_file() and "No images." in (root / REPORT_MD).read_text()


def test_view_order_and_shot_counts():
    assert view_order(["unknown", "back", "profile", "front", "aerial"]) == [
        "front", "profile", "unknown", "aerial", "back"]
    images = [{"shot_key": f"s{i:02d}", "split": "val" if i % 2 else "train"}
              for i in range(40) for _ in range(i % 3 + 1)]
    rows = shot_counts(images, top=30)
    assert len(rows) == 31 and rows[0][1] + rows[0][2] == 3
    assert rows[-1][0] == "other (10 shots)"
    assert sum(t + v for _, t, v in rows) == len(images)


def test_histograms_mark_the_clip_limit_and_grow_with_shots(dataset):
    _, meta = dataset
    chart = histograms(meta)
    assert np.all(np.asarray(chart) == LIMIT_COLOUR, axis=-1).sum() > 100
    more = copy.deepcopy(meta)
    more["images"] += [dict(meta["images"][0], shot_key=f"x{i}") for i in range(40)]
    taller = histograms(more)
    assert taller.height - chart.height == (31 - 4) * 18  # 4 shots → top 30 + "other"


def test_markdown_tells_counts_warning_rejections_and_long_captions(dataset):
    root, meta = dataset
    write_dataset_report(root, meta)
    md = (root / REPORT_MD).read_text()
    assert "| 12 | 6 | 5 | 1 | 6 |" in md  # candidates, selected, train, val, rejected
    assert "Warning: small dataset" in md and "target minimum of 200" in md and "num_repeats = 7" in md
    assert "| duplicate | 3 |" in md and "| low_quality | 2 |" in md and "| view_quota | 1 |" in md
    assert md.index("| duplicate |") < md.index("| low_quality |") < md.index("| view_quota |")
    assert "duplicate of inst:ab12:0:0 (cosine 0.991)" in md and "quality 0.33 below 0.40" in md
    assert "Long captions (over 77 CLIP tokens): 1" in md and "`inst_cd34_1_0` (93 tokens)" in md
    assert "| front | 3 | 2 | 1 | 50% |" in md and "| unknown | 1 | 1 | 0 | 17% |" in md
    assert md.index("| front |") < md.index("| profile |") < md.index("| unknown |")
    assert "| reviewed | 3 |" in md and "| predicted | 2 |" in md and "| template | 1 |" in md
    assert "4 shots" in md and "`zorvik rabbit`" in md and "runs/20261202-curate" in md
    assert f"]({CONTACT_SHEET})" in md and f"]({HISTOGRAMS})" in md
    assert TINY_STAMP not in md and "random-weight" not in md


def test_no_small_warning_when_big_and_tiny_stamp_under_tiny(tmp_path):
    root = tmp_path / "ds"
    meta = build_dataset(root, small=False, profile="tiny")
    write_dataset_report(root, meta)
    md = (root / REPORT_MD).read_text()
    assert "Warning" not in md and "small dataset" not in md
    assert md.startswith(f"# Dataset report: Bunny{TINY_STAMP}\n") and "random-weight models" in md
