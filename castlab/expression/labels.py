"""Expression labels: from the caption's ``expression`` field (the words of ``expression.labels``) and from an
open_clip zero-shot score over ``expression.prompt`` per label; the two are kept side by side so a reviewer sees
where they disagree. ``other`` is every expression that is none of the labels."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from castlab.config import Config

OTHER = "other"
UNSURE = ("", "unknown", "unsure", "n/a", "none")


def label_names(cfg: Config) -> list[str]:
    """The review choices: the configured labels, then ``other``."""
    return [*cfg.expression.labels, OTHER]


def caption_label(text: Any, cfg: Config) -> str | None:
    """The label whose words occur in an expression phrase (the first label listed wins a tie); ``other`` for a
    phrase with none of them; None when there is no phrase (or it says unknown)."""
    phrase = str(text or "").strip().lower()
    if phrase in UNSURE:
        return None
    words = set(re.findall(r"[a-z][a-z-]*", phrase))
    for label, synonyms in cfg.expression.labels.items():
        if words & {w.lower() for w in synonyms}:
            return str(label)
    return OTHER


@dataclass(frozen=True)
class ZeroShot:
    label: str
    probability: float
    probabilities: dict[str, float]


class ExpressionScorer:
    """open_clip zero-shot over the configured labels (``other`` is never a prompt: it is what fits none)."""

    def __init__(self, embedder: Any, cfg: Config) -> None:
        self.labels = [str(label) for label in cfg.expression.labels]
        medium = str(cfg.dataset.caption_prefix)
        self.prompts = [str(cfg.expression.prompt).format(label=label, medium=medium) for label in self.labels]
        self.embedder = embedder
        self._text = embedder.encode_texts(self.prompts)

    def score(self, images: list[Any]) -> list[ZeroShot]:
        """The label of each face crop (PIL images or RGB arrays)."""
        if not images:
            return []
        pil = [Image.fromarray(im) if isinstance(im, np.ndarray) else im for im in images]
        probs = self.embedder.zero_shot(pil, self._text)
        out = []
        for row in probs:
            best = int(np.argmax(row))
            out.append(ZeroShot(self.labels[best], round(float(row[best]), 4),
                                {label: round(float(p), 4) for label, p in zip(self.labels, row, strict=True)}))
        return out
