"""The grounder role: a tiny Grounding DINO (real architecture, seeded random weights, an offline WordPiece
vocabulary) turns a text query into boxes inside the image, best first; a query that finds nothing is a clear
InputError; the boxes prompt SAM2 and their masks seed the video tracker; the full profile never falls back to
random weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from castlab.config import load_config
from castlab.errors import ConfigError, InputError
from castlab.models.grounding import (
    FIXED_IDS,
    Detection,
    Grounder,
    boxes_to_masks,
    ground_boxes,
    load_grounder,
    normalise_query,
)

H, W = 64, 96


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


@pytest.fixture(scope="module")
def grounder(cfg) -> Grounder:
    return load_grounder(cfg)


def shot(n: int = 4) -> list[np.ndarray]:
    """`n` frames of a grey-blue backdrop with a red square moving 6 px right a frame."""
    frames = []
    for k in range(n):
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[:] = (60, 70, 90)
        rgb[20:40, 10 + 6 * k : 30 + 6 * k] = (220, 30, 30)
        frames.append(rgb)
    return frames


def test_tiny_grounder_is_a_real_grounding_dino_with_an_offline_tokenizer(grounder):
    assert type(grounder.model).__name__ == "GroundingDinoForObjectDetection"
    assert grounder.model_version.startswith("tiny-grounding-dino-") and grounder.model_version.endswith("-s1234")
    tokenizer = grounder.processor.tokenizer
    assert grounder.model.config.text_config.vocab_size == len(tokenizer)
    ids = tokenizer("The Girl with red hair. teapot?").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:7] == ["[CLS]", "the", "girl", "with", "red", "hair", "."] and "[UNK]" not in tokens
    for token in ("[CLS]", "[SEP]", ".", "?"):  # the delimiter ids Grounding DINO hard-codes (bert-base-uncased's)
        assert tokenizer.convert_tokens_to_ids(token) == FIXED_IDS[token]
    assert normalise_query("  The Girl  with RED hair ") == "the girl with red hair."
    assert normalise_query("teapot.") == "teapot." and normalise_query(" . ") == ""


def test_detect_gives_sorted_boxes_inside_the_image_and_is_seeded(cfg, grounder):
    image = Image.fromarray(shot(1)[0])
    found = grounder.detect(image, "teapot", box_threshold=0.0, text_threshold=0.0, max_boxes=5)
    assert 1 <= len(found) <= 5 and all(isinstance(d, Detection) for d in found)
    scores = [d.score for d in found]
    assert scores == sorted(scores, reverse=True)
    for d in found:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        assert d.label == "teapot"  # only the query's word can name a box (special tokens stripped)
    assert len(grounder.detect(image, "teapot", 0.0, 0.0, max_boxes=2)) <= 2
    again = load_grounder(load_config(profile="tiny")).detect(image, "teapot.", 0.0, 0.0, 5)
    assert again == found  # the same seed, the same weights and boxes
    with pytest.raises(InputError, match="is empty"):
        grounder.detect(image, " . ", 0.0, 0.0, 5)


def test_a_query_that_finds_nothing_names_the_frame_and_the_query(cfg, grounder):
    strict = cfg.settings.video.grounding.model_copy(update={"box_threshold": 1.0})
    with pytest.raises(InputError, match=r"frame_000042\.jpg: the query 'teapot\.' found nothing.*"
                                         r"lower video\.grounding\.box_threshold"):
        ground_boxes(grounder, shot(1)[0], "teapot.", strict, where="frame_000042.jpg")
    with pytest.raises(InputError, match="frame_000042.jpg: the text query is empty"):
        ground_boxes(grounder, shot(1)[0], "  ", strict, where="frame_000042.jpg")


def test_unknown_tiny_arch_is_a_config_error():
    cfg = load_config(profile="tiny", extra={"models": {"tiny": {"grounder": {"arch": "tiny-owlvit"}}}})
    with pytest.raises(ConfigError, match=r"models\.tiny\.grounder\.arch: unknown tiny grounder 'tiny-owlvit'"):
        load_grounder(cfg)


def test_full_grounder_missing_is_a_config_error():
    missing = {"model": "nobody/no-such-grounding-dino", "local_files_only": True}
    cfg = load_config(profile="full", extra={"models": {"full": {"grounder": missing}}})
    with pytest.raises(ConfigError, match=r"models\.full\.grounder\.model: .*never falls back to random weights"):
        load_grounder(cfg)
    cfg = load_config(profile="full", extra={"models": {"full": {"grounder": {"model": None}}}})
    with pytest.raises(ConfigError, match=r"models\.full\.grounder\.model is not set"):
        load_grounder(cfg)


def test_full_grounder_loads_a_local_folder(tmp_path, grounder):
    folder = tmp_path / "my-grounding-dino"
    grounder.model.save_pretrained(folder)
    grounder.processor.save_pretrained(folder)
    cfg = load_config(profile="full", extra={"models": {"full": {"grounder": {"model": str(folder), "device": "cpu"}}}})
    full = load_grounder(cfg)
    assert full.model_version == "grounding-my-grounding-dino" and full.device == "cpu"
    image = Image.fromarray(shot(1)[0])
    assert full.detect(image, "teapot.", 0.0, 0.0, 3) == grounder.detect(image, "teapot.", 0.0, 0.0, 3)


def test_query_boxes_seed_the_tiny_sam2_video_tracker(cfg, grounder):
    from castlab.models.segmenter import load_segmenter
    from castlab.segment.propagate import load_video_predictor
    from castlab.video.track import track_objects

    frames = shot(4)
    settings = cfg.settings.video.grounding.model_copy(update={"box_threshold": 0.0, "text_threshold": 0.0,
                                                               "max_boxes": 2})
    found = ground_boxes(grounder, frames[1], "red square.", settings, where="frame 1")
    assert 1 <= len(found) <= 2
    segmenter = load_segmenter(cfg)
    # and a box of our own, last: object ids follow the detections' order
    detections = [*found, Detection("red square", 1.0, (16.0, 20.0, 36.0, 40.0))]
    seeds = boxes_to_masks(cfg, Image.fromarray(frames[1]), detections, segmenter, where="frame 1")
    assert sorted(seeds) == list(range(1, len(detections) + 1))
    assert all(m.dtype == bool and m.shape == (H, W) for m in seeds.values()) and any(m.any() for m in seeds.values())
    predictor, version = load_video_predictor(cfg)
    track = track_objects(predictor, lambda s, e: frames[s:e], seeds, seed_frame=1, first=0, last=4, max_frames=3,
                          threshold=0.0)
    assert version.startswith("tiny-")
    tracked = {k for k, m in seeds.items() if m.any()}  # an empty seed is not tracked
    assert set(track.masks) | set(track.absent) == tracked
    for obj_id in tracked:  # one answer (a mask or an absence) per frame per object
        present, absent = set(track.masks.get(obj_id, {})), set(track.absent.get(obj_id, []))
        assert present | absent == {0, 1, 2, 3} and not present & absent
