"""Character-aware instances: SAM2 prompted from character evidence, automatic masks kept only when they
look like a character.

1. **Evidence** (:class:`EvidenceDetector`): face and person boxes from OpenCV's bundled Haar cascades
   (offline, real detectors; frontal + profile faces, full and upper bodies) and, with ``insightface`` in
   ``segmentation.evidence``, the InsightFace detector of the identity stage (``models.<profile>.faces``;
   stronger on stylised faces than Haar when its pack is good at them). Each face becomes a SAM2
   prompt: a positive point on the face and a box around the body such a face implies
   (``segmentation.body_box``: widths and heights of the face), clipped to the frame; a person box is
   prompted as it is. Overlapping evidence is merged first, so one character gives one prompt.
2. **Fallback**: SAM2's automatic grid instances, scored by open_clip (:class:`CharacterScorer`): the
   softmax probability that the masked crop matches ``segmentation.character_prompt`` rather than one of
   ``segmentation.non_character_prompts``; below ``segmentation.character_min_score`` it is a prop or
   background and is dropped. Automatic masks overlapping an evidence instance are duplicates.

A frame with three characters thus yields three instances; the cap is ``max_instances_per_frame``.
Every instance records how it was found (``source``: ``face`` | ``person`` | ``auto``) and its score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from PIL import Image

from castlab.config import Config
from castlab.errors import ConfigError
from castlab.layers import mask_bbox
from castlab.models.segmenter import Instance

EVIDENCE_KINDS = ("face", "person", "insightface")
DETECT_SIDE = 640  # the cascades look at a copy this large: faces of a few % of the frame stay findable
CASCADES = {
    "face": ("haarcascade_frontalface_default.xml", "haarcascade_profileface.xml"),
    "person": ("haarcascade_fullbody.xml", "haarcascade_upperbody.xml"),
}


@dataclass(frozen=True)
class Evidence:
    """A box (x0, y0, x1, y1, pixels) where a detector saw a face or a person."""

    kind: str
    box: tuple[float, float, float, float]
    score: float = 1.0


@dataclass
class CharacterInstance:
    instance: Instance
    source: str  # face | person | auto
    character_score: float | None  # open_clip probability; None when not scored
    evidence_box: tuple[float, float, float, float] | None = None


class Prompter(Protocol):
    """What :func:`character_instances` needs from :class:`castlab.models.segmenter.Segmenter`."""

    dedup_iou: float
    max_instances: int

    def prompt_instance(
        self, image: np.ndarray, points: list[tuple[float, float]] | None = None, labels: list[int] | None = None,
        box: tuple[float, float, float, float] | None = None,
    ) -> Instance: ...

    def auto_instances(self, image: np.ndarray) -> list[Instance]: ...


# -- evidence -------------------------------------------------------------------------------------------
class EvidenceDetector:
    """Face and person boxes from OpenCV's Haar cascades (shipped inside the opencv wheel) and, for the
    ``insightface`` kind, faces from a face analyzer (:class:`castlab.models.faces.FaceAnalyzer`)."""

    def __init__(self, kinds: tuple[str, ...], min_face_fraction: float = 0.04, face_analyzer: Any = None) -> None:
        unknown = [k for k in kinds if k not in EVIDENCE_KINDS]
        if unknown:
            raise ConfigError(f"segmentation.evidence: unknown kind(s) {unknown}; known: {list(EVIDENCE_KINDS)}")
        if "insightface" in kinds and face_analyzer is None:
            raise ConfigError("segmentation.evidence: 'insightface' needs a face analyzer (models.<profile>.faces)")
        self.kinds = kinds
        self.min_face_fraction = min_face_fraction
        self.face_analyzer = face_analyzer if "insightface" in kinds else None
        self._cascades: dict[str, list[cv2.CascadeClassifier]] = {}
        for kind in (k for k in kinds if k in CASCADES):
            loaded = []
            for name in CASCADES[kind]:
                path = Path(cv2.data.haarcascades) / name
                cascade = cv2.CascadeClassifier(str(path))
                if cascade.empty():
                    raise ConfigError(f"segmentation.evidence: OpenCV cannot load its cascade {path}")
                loaded.append(cascade)
            self._cascades[kind] = loaded

    @classmethod
    def from_config(cls, cfg: Config) -> EvidenceDetector:
        kinds = cfg.segmentation.evidence or []
        if isinstance(kinds, str):
            kinds = [kinds]
        analyzer = None
        if "insightface" in kinds:
            from castlab.models.faces import load_face_analyzer

            analyzer = load_face_analyzer(cfg)
        return cls(tuple(str(k) for k in kinds), float(cfg.segmentation.min_face_fraction), analyzer)

    def detect(self, image_rgb: np.ndarray) -> list[Evidence]:
        """Boxes in `image_rgb` pixels; the cascades run on a copy at most ``DETECT_SIDE`` pixels wide. Faces
        from the cascades and the face analyzer are merged (one box per face)."""
        grey = cv2.equalizeHist(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY))
        scale = min(1.0, DETECT_SIDE / max(grey.shape))
        if scale < 1.0:
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        height, width = grey.shape
        face_side = max(24, int(self.min_face_fraction * min(height, width)))
        boxes: dict[str, list[tuple[float, float, float, float]]] = {}
        for kind, cascades in self._cascades.items():
            side = face_side if kind == "face" else 48
            for cascade in cascades:
                for flip in (False, True) if cascade is cascades[-1] and kind == "face" else (False,):
                    src = cv2.flip(grey, 1) if flip else grey  # the profile cascade only sees left profiles
                    hits = cascade.detectMultiScale(src, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
                    for x, y, w, h in np.asarray(hits).reshape(-1, 4).tolist():
                        x0 = width - x - w if flip else x
                        boxes.setdefault(kind, []).append((x0 / scale, y / scale, (x0 + w) / scale, (y + h) / scale))
        if self.face_analyzer is not None:
            boxes.setdefault("face", []).extend(self._analyzer_faces(image_rgb, face_side / scale))
        return [Evidence(kind, box) for kind, found in boxes.items() for box in merge_boxes(found)]

    def _analyzer_faces(self, image_rgb: np.ndarray, min_side: float) -> list[tuple[float, float, float, float]]:
        """Face boxes at least `min_side` pixels wide from the face analyzer (none without one)."""
        if self.face_analyzer is None:
            return []
        faces = self.face_analyzer.detect(np.ascontiguousarray(image_rgb))
        return [f.bbox for f in faces if min(f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1]) >= min_side]


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def merge_boxes(boxes: list[tuple[float, float, float, float]], iou: float = 0.3) -> list[tuple[float, ...]]:
    """Greedy merge of overlapping detections (largest first): one box per object."""
    kept: list[tuple[float, ...]] = []
    for box in sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1])):
        if all(box_iou(box, k) <= iou and not _inside(box, k) for k in kept):
            kept.append(box)
    return kept


def _inside(small: tuple[float, ...], big: tuple[float, ...]) -> bool:
    cx, cy = (small[0] + small[2]) / 2, (small[1] + small[3]) / 2
    return big[0] <= cx <= big[2] and big[1] <= cy <= big[3]


def body_box(face: tuple[float, ...], widths: float, heights: float, width: int, height: int) -> tuple[float, ...]:
    """The box a character with this face occupies: `widths` face widths wide, `heights` face heights tall
    from the top of the face (3D characters have big heads: 3 x 4 by default), clipped to the frame."""
    x0, y0, x1, y1 = face
    cx, w, h = (x0 + x1) / 2, x1 - x0, y1 - y0
    return (max(0.0, cx - w * widths / 2), max(0.0, y0 - 0.25 * h), min(float(width), cx + w * widths / 2),
            min(float(height), y0 + h * heights))


# -- character score ------------------------------------------------------------------------------------
class CharacterScorer:
    """P(masked crop shows a character) by open_clip: softmax over the character prompt and the others."""

    def __init__(self, embedder: Any, prompt: str, others: list[str], background_rgb: tuple[int, int, int]) -> None:
        if not others:
            raise ConfigError("segmentation.non_character_prompts must list at least one prompt")
        self.embedder = embedder
        self.texts = [prompt, *others]
        self._text = embedder.encode_texts(self.texts)  # (1 + n, D) unit vectors
        self.background = np.asarray(background_rgb, np.uint8)

    @classmethod
    def from_config(cls, embedder: Any, cfg: Config) -> CharacterScorer:
        return cls(embedder, str(cfg.segmentation.character_prompt),
                   [str(t) for t in cfg.segmentation.non_character_prompts or []],
                   tuple(int(v) for v in cfg.dataset.background_rgb))

    def crop(self, image: np.ndarray, mask: np.ndarray) -> Image.Image:
        """The instance on the neutral backdrop, cut to its box (what the dataset will train on)."""
        x0, y0, w, h = mask_bbox(mask)
        if w == 0:
            return Image.fromarray(np.zeros((8, 8, 3), np.uint8) + self.background)
        box = (slice(y0, y0 + h), slice(x0, x0 + w))
        patch = np.where(mask[box][..., None], image[box], self.background)
        return Image.fromarray(patch.astype(np.uint8))

    def scores(self, image: np.ndarray, masks: list[np.ndarray]) -> list[float]:
        if not masks:
            return []
        probs = self.embedder.zero_shot([self.crop(image, m) for m in masks], self._text)
        return [float(p) for p in probs[:, 0]]


# -- instances ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CharacterSettings:
    min_score: float
    body_widths: float
    body_heights: float

    @classmethod
    def from_config(cls, cfg: Config) -> CharacterSettings:
        body = cfg.segmentation.body_box
        # a profile may override the bar (the tiny profile's random CLIP weights score noise)
        default = cfg.segmentation.character_min_score
        override = cfg.model("segmenter").character_min_score
        min_score = float(default if override is None else override)
        if not 0.0 <= min_score <= 1.0:
            raise ConfigError(f"segmentation.character_min_score must be in [0, 1], got {min_score}")
        return cls(min_score, body.face_widths, body.face_heights)


def character_instances(
    segmenter: Prompter, image: np.ndarray, settings: CharacterSettings,
    detector: EvidenceDetector | None = None, scorer: CharacterScorer | None = None,
) -> list[CharacterInstance]:
    """Evidence-prompted instances first, then automatic ones; all scored, those below the bar dropped."""
    height, width = image.shape[:2]
    found: list[CharacterInstance] = []
    for ev in detector.detect(image) if detector is not None else []:
        if ev.kind == "face":
            x0, y0, x1, y1 = ev.box
            box = body_box(ev.box, settings.body_widths, settings.body_heights, width, height)
            inst = segmenter.prompt_instance(image, points=[((x0 + x1) / 2, (y0 + y1) / 2)], labels=[1], box=box)
        else:
            inst = segmenter.prompt_instance(image, box=ev.box)
        if inst.mask.any() and not _overlaps(inst.mask, found, segmenter.dedup_iou):
            found.append(CharacterInstance(inst, ev.kind, None, ev.box))
    for inst in segmenter.auto_instances(image):  # best first
        if not _overlaps(inst.mask, found, segmenter.dedup_iou):
            found.append(CharacterInstance(inst, "auto", None))
    if scorer is not None:
        for c, score in zip(found, scorer.scores(image, [c.instance.mask for c in found]), strict=True):
            c.character_score = score
        found = [c for c in found if c.character_score >= settings.min_score]
    evidence = [c for c in found if c.source != "auto"]
    auto = sorted((c for c in found if c.source == "auto"),
                  key=lambda c: -(c.character_score if c.character_score is not None else c.instance.score))
    return (evidence + auto)[: segmenter.max_instances]


def _overlaps(mask: np.ndarray, found: list[CharacterInstance], iou: float) -> bool:
    return any(_mask_iou(mask, c.instance.mask) > iou for c in found)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.count_nonzero(a & b)
    union = np.count_nonzero(a | b)
    return inter / union if union else 0.0
