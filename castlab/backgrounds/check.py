"""Is a background image free of characters? Two looks, as the segmentation stage takes them on a frame:

1. **evidence**: the face and person detectors (:class:`castlab.segment.characters.EvidenceDetector`) find
   nothing;
2. **character score**: open_clip (:class:`castlab.segment.characters.CharacterScorer`) on the whole image gives
   ``segmentation.character_prompt`` less than ``backgrounds.max_character_score`` against the non-character
   prompts (a half-erased character, a reflection, a character the masks missed raise it).

A background failing either is rejected with the reason and its numbers; nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

REASONS = ("character_evidence", "character_score")


class Detector(Protocol):
    def detect(self, image_rgb: np.ndarray) -> list[Any]: ...


class Scorer(Protocol):
    def scores(self, image: np.ndarray, masks: list[np.ndarray]) -> list[float]: ...


@dataclass(frozen=True)
class CharacterCheck:
    ok: bool
    reason: str | None  # one of REASONS when not ok
    detail: str
    evidence: int  # boxes the detectors found
    character_score: float | None  # None without a scorer

    def as_row(self) -> dict[str, Any]:
        return {"character_free": self.ok, "character_check": self.detail, "evidence_boxes": self.evidence,
                "background_character_score": self.character_score}


def check_character_free(image_rgb: np.ndarray, detector: Detector | None, scorer: Scorer | None,
                         max_score: float) -> CharacterCheck:
    """The two looks of the module docstring on one RGB image (either may be None: that look is skipped)."""
    found = detector.detect(image_rgb) if detector is not None else []
    score = None
    if scorer is not None:
        score = round(float(scorer.scores(image_rgb, [np.ones(image_rgb.shape[:2], bool)])[0]), 4)
    if found:
        kinds = sorted({getattr(e, "kind", "box") for e in found})
        return CharacterCheck(False, "character_evidence", f"{len(found)} {'/'.join(kinds)} box(es) found",
                              len(found), score)
    if score is not None and score >= max_score:
        return CharacterCheck(False, "character_score", f"character score {score:.3f} >= "
                              f"backgrounds.max_character_score {max_score}", 0, score)
    return CharacterCheck(True, None, "no face or person found" + ("" if score is None else
                                                                     f", character score {score:.3f}"), 0, score)
