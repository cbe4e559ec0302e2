"""Expression labels (caption words, zero-shot) and face crops with their gates, on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from castlab.config import load_config
from castlab.expression.crops import crop_box, face_crop
from castlab.expression.labels import OTHER, ExpressionScorer, caption_label, label_names
from castlab.models.embedder import Embedder

CFG = load_config()


@pytest.mark.parametrize(("phrase", "label"), [
    ("a big toothy grin", "happy"), ("Laughing out loud", "happy"), ("wide-eyed, gasping", "surprised"),
    ("scowling at the camera", "angry"), ("quiet tears", "sad"), ("calm", "neutral"),
    ("determined", OTHER), ("unknown", None), (None, None), ("", None),
])
def test_caption_words_give_the_label(phrase, label):
    assert caption_label(phrase, CFG) == label


class ColourEmbedder:
    """Unit vectors: text k → axis k; an image → the axis of its dominant colour channel (R, G, B, grey); the
    real embedder's zero-shot softmax over them."""

    zero_shot = Embedder.zero_shot

    def encode_texts(self, texts):
        return np.eye(8)[: len(texts)]

    def encode_images(self, images):
        out = []
        for im in images:
            mean = np.asarray(im, float).reshape(-1, 3).mean(axis=0)
            axis = 3 if np.ptp(mean) < 10 else int(np.argmax(mean))
            out.append(np.eye(8)[axis])
        return np.stack(out)


def test_zero_shot_picks_the_matching_prompt():
    scorer = ExpressionScorer(ColourEmbedder(), CFG)
    assert scorer.prompts[0] == "a close-up of a 3d animated character with a happy facial expression"
    red, grey = np.full((8, 8, 3), (200, 20, 20), np.uint8), np.full((8, 8, 3), 120, np.uint8)
    first, fourth = scorer.score([red, grey])
    assert (first.label, fourth.label) == (scorer.labels[0], scorer.labels[3])
    assert first.probability > 0.99 and sum(first.probabilities.values()) == pytest.approx(1, abs=1e-3)
    assert label_names(CFG)[-1] == OTHER and OTHER not in scorer.labels


def test_zero_shot_with_the_tiny_embedder():
    from castlab.models.embedder import load_embedder

    tiny = load_config(profile="tiny")
    scorer = ExpressionScorer(load_embedder(tiny), tiny)
    got = scorer.score([np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)])
    assert got[0].label in scorer.labels and set(got[0].probabilities) == set(scorer.labels)


def frame_with_face(sharp: bool = True) -> np.ndarray:
    rng = np.random.default_rng(1)
    frame = np.full((200, 300, 3), 90, np.uint8)
    face = rng.integers(0, 255, (60, 60, 3), dtype=np.uint8) if sharp else np.full((60, 60, 3), 170, np.uint8)
    frame[50:110, 100:160] = face
    return frame


def test_face_crops_and_their_gates():
    mask = np.zeros((200, 300), bool)
    mask[40:200, 90:170] = True  # the character: head and body
    ok = face_crop(frame_with_face(), [100, 50, 160, 110], mask, CFG)
    assert ok.reason is None and ok.box == crop_box((100, 50, 160, 110), 0.5, 300, 200) == (70, 20, 190, 140)
    assert ok.image.shape == (120, 120, 3) and ok.occlusion == 0.0
    assert face_crop(frame_with_face(), [100, 50, 130, 80], mask, CFG).reason == "small_face"
    assert face_crop(frame_with_face(sharp=False), [100, 50, 160, 110], mask, CFG).reason == "blurred_face"
    covered = mask.copy()
    covered[50:110, 100:130] = False  # a prop in front of half the face
    hidden = face_crop(frame_with_face(), [100, 50, 160, 110], covered, CFG)
    assert hidden.reason == "occluded_face" and hidden.occlusion == pytest.approx(0.5)
    assert face_crop(frame_with_face(), None, mask, CFG).reason == "no_face"
    assert crop_box((0, 0, 60, 60), 0.5, 300, 200) == (0, 0, 90, 90)  # clipped at the frame's edge
