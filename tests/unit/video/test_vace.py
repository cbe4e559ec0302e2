"""VACE clip files: Wan's sizes (multiples of 16) and frame counts (4k + 1), binary masks after resizing, files
PyAV opens, the CSV DiffSynth-Studio reads, nothing half-written."""

from __future__ import annotations

import csv

import av
import numpy as np
import pytest
from PIL import Image

from castlab.errors import InputError
from castlab.video.vace import CSV_COLUMNS, Clip, wan_frame_count, wan_size, write_clip, write_metadata


def moving_square(n: int, size: tuple[int, int] = (90, 70)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`n` frames (width x height `size`) of a white square moving right on grey, and its masks."""
    width, height = size
    frames, masks = [], []
    for k in range(n):
        mask = np.zeros((height, width), bool)
        mask[20:44, 5 + 4 * k:29 + 4 * k] = True
        frames.append(np.where(mask[..., None], 255, 90).astype(np.uint8) * np.ones((1, 1, 3), np.uint8))
        masks.append(mask)
    return frames, masks


def read(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_sizes_and_frame_counts():
    assert wan_size(1920, 1080, 832) == (832, 464) and wan_size(90, 70, 832) == (80, 64)
    assert [wan_frame_count(n) for n in (5, 8, 9, 81, 100)] == [5, 5, 9, 81, 97]
    with pytest.raises(InputError, match="at least 5 frames"):
        wan_frame_count(4)


def test_a_clip_writes_four_files_and_a_csv_row(tmp_path):
    frames, masks = moving_square(11)
    clip = Clip("shot_0001_obj1", frames, masks, Image.new("RGB", (32, 32), (200, 10, 10)), "a white box slides")
    row = write_clip(tmp_path, clip, wan_size(90, 70, 832), fps=24)
    out = tmp_path / "shot_0001_obj1"
    source, vace, mask = (read(out / n) for n in ("video.mp4", "vace_video.mp4", "vace_video_mask.mp4"))
    assert len(source) == len(vace) == len(mask) == 9  # 11 frames → 4k + 1 = 9
    assert source[0].shape == (64, 80, 3)  # multiples of 16
    first = mask[0][..., 0] > 127
    assert 0.05 < first.mean() < 0.3 and np.abs(mask[0][..., 0].astype(int) - mask[0][..., 2]).max() < 40
    assert vace[0][first].mean() < 40 and source[0][first].mean() > 200  # the object region zeroed in vace_video
    assert np.argwhere(mask[8][..., 0] > 127)[:, 1].mean() > np.argwhere(first)[:, 1].mean() + 20  # it moves
    path = write_metadata(tmp_path, [row])
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS and rows[0]["vace_video_mask"] == "shot_0001_obj1/vace_video_mask.mp4"
    assert Image.open(out / "vace_reference_image.png").size == (32, 32)
    with pytest.raises(InputError, match="exists already"):
        write_clip(tmp_path, clip, (80, 64), fps=24)


def test_a_failed_clip_leaves_nothing(tmp_path, monkeypatch):
    frames, masks = moving_square(6)
    clip = Clip("broken", frames, masks, Image.new("RGB", (8, 8)), "x")
    calls = []

    def failing(path, frames, fps):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError("disk full")
        path.write_bytes(b"partial")

    monkeypatch.setattr("castlab.video.vace.write_video", failing)
    with pytest.raises(OSError, match="disk full"):
        write_clip(tmp_path, clip, (80, 64), fps=24)
    assert list(tmp_path.iterdir()) == []  # no clip folder, no temporary left
    with pytest.raises(InputError, match="6 frames but 5 masks"):
        write_clip(tmp_path, Clip("short", frames, masks[:5], Image.new("RGB", (8, 8)), "x"), (80, 64), 24)
