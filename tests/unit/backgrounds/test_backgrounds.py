"""Background candidates of a run, and the character-free check (a leftover character is rejected)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scene_run import RED, RedFaceDetector, RedShareScorer

from castlab.backgrounds.candidates import background_candidates
from castlab.backgrounds.check import check_character_free
from castlab.config import load_config
from castlab.manifest import Manifest


def set_image(character: int = 0) -> np.ndarray:
    """A grey set with a green floor; `character` red pixels (a leftover character) in a block at the left."""
    img = np.full((60, 80, 3), 150, np.uint8)
    img[40:] = (40, 140, 60)
    flat = img.reshape(-1, 3)
    flat[np.arange(character) * 7 % flat.shape[0]] = RED
    return img


def test_a_background_with_a_leftover_character_is_rejected_with_its_reason():
    limit = load_config().backgrounds.max_character_score
    clean = check_character_free(set_image(), RedFaceDetector(), RedShareScorer(), limit)
    assert clean.ok and clean.reason is None and clean.character_score == 0.1
    head = np.array(set_image())
    head[10:20, 10:20] = RED  # a whole head left: the detector sees it
    whole = check_character_free(head, RedFaceDetector(), RedShareScorer(), limit)
    assert not whole.ok and whole.reason == "character_evidence" and whole.evidence == 1
    traces = check_character_free(set_image(character=19), RedFaceDetector(), RedShareScorer(), limit)
    assert not traces.ok and traces.reason == "character_score" and traces.character_score >= limit
    assert "backgrounds.max_character_score" in traces.detail
    assert check_character_free(set_image(character=19), RedFaceDetector(), None, limit).ok  # the score look off
    assert traces.as_row()["character_free"] is False


def test_each_kept_frame_gives_its_best_background(tmp_path: Path):
    manifest = Manifest.for_run(tmp_path)
    layer = tmp_path / "background" / "f1.png"
    reviewed = tmp_path / "background" / "reviewed" / "f2.png"
    for path in (layer, reviewed):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(set_image()).save(path)
    frame = {"kind": "frame", "status": "kept", "path": str(tmp_path / "frame.png")}
    manifest.add_rows([
        {**frame, "row_id": "f0"},  # no character: the frame itself
        {**frame, "row_id": "f1"}, {"row_id": "i1", "kind": "instance", "status": "kept", "parent_id": "f1",
                                    "background_path": str(layer)},
        {**frame, "row_id": "f2", "review_state": "reviewed"},
        {"row_id": "i2", "kind": "instance", "status": "kept", "parent_id": "f2", "background_path": str(reviewed)},
        {**frame, "row_id": "f3", "review_state": "pending"},
        {**frame, "row_id": "f4"}, {"row_id": "i4", "kind": "instance", "status": "kept", "parent_id": "f4"},
        {**frame, "row_id": "f5", "status": "rejected"},
    ])
    candidates, skipped = background_candidates(manifest)
    got = {c["row_id"]: (c["background_source"], c["image_path"]) for c in candidates}
    assert got == {"f0": ("empty_frame", frame["path"]), "f1": ("layer", str(layer)),
                   "f2": ("reviewed_layer", str(reviewed))}
    reasons = {s["row_id"]: s["reason"] for s in skipped}
    assert set(reasons) == {"f3", "f4"} and reasons["f3"].startswith("masks review pending")
    assert "segmentation.background_inpaint is none" in reasons["f4"]
