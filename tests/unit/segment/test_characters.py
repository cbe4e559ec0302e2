"""Character-aware instances: evidence prompts, character score filter, dedup against automatic masks."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from castlab.config import load_config
from castlab.errors import ConfigError
from castlab.layers import mask_bbox
from castlab.models.segmenter import Instance
from castlab.segment.characters import (
    CharacterScorer,
    CharacterSettings,
    Evidence,
    EvidenceDetector,
    body_box,
    character_instances,
    merge_boxes,
)

H, W = 240, 480
CHARACTERS = [(40, 110), (200, 110), (360, 110)]  # three figures: (x of the body's left edge, head centre y)


def _figure(x: int) -> np.ndarray:
    """A head (disc) on a body (rectangle): what SAM2 would cut for one character."""
    yy, xx = np.mgrid[:H, :W]
    head = (xx - (x + 40)) ** 2 + (yy - 60) ** 2 <= 25**2
    body = (xx >= x + 10) & (xx < x + 70) & (yy >= 85) & (yy < 220)
    return head | body


PROP = np.zeros((H, W), bool)
PROP[200:230, 440:475] = True  # a box on the floor


class FakeSegmenter:
    """Returns the figure a prompt falls in; automatic masks: every figure, a prop and the background."""

    dedup_iou = 0.7
    max_instances = 6

    def __init__(self) -> None:
        self.prompts: list[tuple] = []

    def prompt_instance(self, image, points=None, labels=None, box=None):
        self.prompts.append((points, labels, box))
        x = (points[0][0] if points else (box[0] + box[2]) / 2)
        mask = next((_figure(left) for left, _ in CHARACTERS if left <= x < left + 80), np.zeros((H, W), bool))
        return Instance(mask, mask_bbox(mask), int(mask.sum()), 0.9 if mask.any() else 0.1)

    def auto_instances(self, image):
        masks = [_figure(x) for x, _ in CHARACTERS] + [PROP, ~PROP]
        return [Instance(m, mask_bbox(m), int(m.sum()), 0.8 - 0.01 * i) for i, m in enumerate(masks)]

    def min_side(self, height):
        return 10.0


class FaceDetector:
    def detect(self, image):
        return [Evidence("face", (x + 20, 40, x + 60, 80)) for x, _ in CHARACTERS]


class ColourScorer:
    """Scores a mask by whether it lies on the figures (stands in for open_clip)."""

    def scores(self, image, masks):
        figures = np.any([_figure(x) for x, _ in CHARACTERS], axis=0)
        return [float((m & figures).sum() / max(m.sum(), 1)) for m in masks]


SETTINGS = CharacterSettings(min_score=0.5, body_widths=3.0, body_heights=4.0)
IMAGE = np.zeros((H, W, 3), np.uint8)


def test_three_characters_from_faces_and_no_props():
    seg = FakeSegmenter()
    found = character_instances(seg, IMAGE, SETTINGS, detector=FaceDetector(), scorer=ColourScorer())
    assert [c.source for c in found] == ["face", "face", "face"]  # automatic copies are duplicates
    assert sorted(c.instance.bbox[0] for c in found) == [x + 10 for x, _ in CHARACTERS]
    assert all(c.character_score == pytest.approx(1.0) for c in found)
    points, labels, box = seg.prompts[0]
    assert labels == [1] and box[3] > 80  # a point on the face and a box reaching down over the body


def test_fallback_to_automatic_masks_filtered_by_character_score():
    found = character_instances(FakeSegmenter(), IMAGE, SETTINGS, detector=None, scorer=ColourScorer())
    assert [c.source for c in found] == ["auto"] * 3  # the prop and the background scored ~0
    unfiltered = character_instances(FakeSegmenter(), IMAGE, SETTINGS, detector=None, scorer=None)
    assert len(unfiltered) == 5 and all(c.character_score is None for c in unfiltered)


def test_max_instances_caps_evidence_first():
    seg = FakeSegmenter()
    seg.max_instances = 2
    found = character_instances(seg, IMAGE, SETTINGS, detector=FaceDetector(), scorer=None)
    assert [c.source for c in found] == ["face", "face"]


def test_body_box_is_clipped_to_the_frame():
    assert body_box((10, 10, 30, 30), 3.0, 4.0, 100, 50) == (0.0, 5.0, 50.0, 50.0)
    x0, y0, x1, y1 = body_box((40, 10, 60, 30), 3.0, 4.0, 1000, 1000)
    assert (x1 - x0, y1 - 10) == (60.0, 80.0)


def test_merge_boxes_keeps_one_box_per_object():
    merged = merge_boxes([(0, 0, 10, 10), (1, 1, 11, 11), (50, 50, 60, 60), (2, 2, 5, 5)])
    assert merged == [(0, 0, 10, 10), (50, 50, 60, 60)] or merged == [(1, 1, 11, 11), (50, 50, 60, 60)]


def test_haar_evidence_finds_both_faces():
    astronaut = skdata.astronaut()
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[100:612, 100:612] = astronaut
    frame[100:612, 700:1212] = astronaut[:, ::-1]
    faces = [e for e in EvidenceDetector(("face",)).detect(frame) if e.kind == "face"]
    centres = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in (f.box for f in faces)]
    assert any(260 < cx < 400 and 150 < cy < 290 for cx, cy in centres)  # the face at (177..270, 67..160) + offset
    assert any(930 < cx < 1050 and 150 < cy < 290 for cx, cy in centres)  # the mirrored one (profile cascade too)
    assert EvidenceDetector(("face",)).detect(np.zeros((200, 300, 3), np.uint8)) == []


def test_unknown_evidence_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="segmentation.evidence"):
        EvidenceDetector(("tail",))


def test_real_scorer_on_the_tiny_embedder():
    from castlab.models.embedder import load_embedder

    cfg = load_config()
    scorer = CharacterScorer.from_config(load_embedder(cfg), cfg)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    masks = [_figure(x) for x, _ in CHARACTERS] + [PROP]
    scores = scorer.scores(image, masks)
    assert len(scores) == 4 and all(0.0 < s < 1.0 for s in scores)
    assert scores == scorer.scores(image, masks)  # deterministic
    crop = np.asarray(scorer.crop(image, PROP))
    assert crop.shape == (30, 35, 3)
    with pytest.raises(ConfigError, match="non_character_prompts"):
        CharacterScorer(scorer.embedder, "a character", [], (127, 127, 127))


class _Faces:
    """A face analyzer that sees the faces it is given (boxes in image pixels)."""

    def __init__(self, *boxes):
        from castlab.models.faces import Face

        self.faces = [Face(tuple(float(v) for v in b), 0.9, np.zeros((5, 2), np.float32)) for b in boxes]

    def detect(self, image_rgb, region=None):
        return list(self.faces)


def test_insightface_evidence_adds_the_faces_haar_misses():
    frame = np.full((480, 640, 3), 90, np.uint8)  # nothing for the cascades
    analyzer = _Faces((300, 100, 360, 170), (10, 10, 14, 14))  # a face, and one far below min_face_fraction
    found = EvidenceDetector(("insightface",), face_analyzer=analyzer).detect(frame)
    assert found == [Evidence("face", (300.0, 100.0, 360.0, 170.0))]
    both = EvidenceDetector(("face", "insightface"), face_analyzer=_Faces((300, 100, 360, 170), (302, 98, 361, 171)))
    assert len(both.detect(frame)) == 1  # one face seen twice is one piece of evidence
    with pytest.raises(ConfigError, match="insightface"):
        EvidenceDetector(("insightface",))


def test_insightface_evidence_from_config_uses_the_profile_face_models():
    cfg = load_config(profile="tiny", extra={"segmentation": {"evidence": ["insightface", "person"]}})
    detector = EvidenceDetector.from_config(cfg)
    assert detector.face_analyzer is not None and detector.face_analyzer.profile == "tiny"
    evidence = detector.detect(skdata.astronaut())
    assert all(e.kind in ("face", "person") for e in evidence)  # random tiny weights: noise faces, real plumbing
