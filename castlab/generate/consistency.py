"""Is a generated image on-model? Each character LoRA (registry ``type: character``) used at a non-zero weight
scores every image against its reviewed reference crops (the LoRA's castlab dataset), as the checkpoint evaluation
does (:func:`castlab.evaluate.metrics.identity_regions`): the head region's DINOv2 embedding, its mean cosine to
the character's references, normalised to ``(1 + cosine) / 2`` in 0..1. An image whose head is not found scores 0.
Below ``generation.consistency.threshold`` (0.65 by default) in any character, the image is off-model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from castlab.config import Config
from castlab.errors import InputError
from castlab.generate.loras import LoraUse


@dataclass
class CharacterReferences:
    lora: str
    character: str
    refs: Any  # castlab.evaluate.metrics.References


class ConsistencyCheck:
    """The references of every character LoRA in use, the identity models, and the threshold."""

    def __init__(self, references: list[CharacterReferences], encoder: Any, analyzer: Any, cfg: Config) -> None:
        self.references = references
        self.encoder = encoder
        self.analyzer = analyzer
        self.cfg = cfg
        self.threshold = float(cfg.generation.consistency.threshold)

    @classmethod
    def for_loras(cls, uses: list[LoraUse], cfg: Config, device: str = "cpu") -> ConsistencyCheck | None:
        """The check of the character LoRAs among `uses` (None when there is none); InputError naming a LoRA whose
        dataset (its references) is missing."""
        from castlab.evaluate.metrics import build_references
        from castlab.evaluate.stage import load_reference_set
        from castlab.models.faces import load_face_analyzer
        from castlab.models.image_encoder import load_image_encoder

        characters = [u for u in uses if u.weight != 0 and u.entry.get("type", "character") == "character"]
        if not characters:
            return None
        encoder = load_image_encoder(cfg, device)
        analyzer = load_face_analyzer(cfg, device) if cfg.evaluation.identity.region == "face" else None
        references = []
        for use in characters:
            dataset = use.entry.get("dataset")
            if not dataset or not (Path(dataset) / "metadata.json").is_file():
                raise InputError(dataset or use.name, f"LoRA {use.name!r} has no castlab dataset to check "
                                                      "consistency against (pass --no-check to skip the check)")
            crops = load_reference_set(Path(dataset), cfg)["crops"]
            refs = build_references(crops, encoder, analyzer, cfg, source=str(dataset))
            references.append(CharacterReferences(use.name, str(use.entry["character"]), refs))
        return cls(references, encoder, analyzer, cfg)

    def scores(self, images: list[Image.Image]) -> list[dict[str, float]]:
        """Per image: {LoRA name: normalised identity score}."""
        from castlab.evaluate.metrics import identity_regions

        regions = identity_regions(images, self.encoder, self.analyzer, self.cfg)
        found = set(regions.found)
        out: list[dict[str, float]] = [{} for _ in images]
        for ref in self.references:
            _, own, _ = ref.refs.margins(regions.head, ref.character)
            for i in range(len(images)):
                out[i][ref.lora] = round(float((1.0 + own[i]) / 2.0), 4) if i in found else 0.0
        return out

    def passes(self, scores: dict[str, float]) -> bool:
        return all(v >= self.threshold for v in scores.values())

