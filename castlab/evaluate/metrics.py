"""Per-image evaluation metrics over rendered images, with the models injected (no Prefect, no files).

For each render (see the evaluation contract) :func:`score_images` adds:

- ``identity_margin``: the DINOv2 embedding of the character's head region (:func:`head_region`) compared with
  the reviewed reference crops: mean cosine to the character's references minus the highest mean cosine to any
  other character of the film (``identity_rival``). The margin cancels what every character of a film shares
  (studio style, lighting, render look). No head found → ``evaluation.identity.miss_margin`` and
  ``detected: False``: a miss is a failure, never a skip. A film with one character has no rival: the margin is
  then the plain similarity.
- ``arcface``: mean ArcFace cosine of the best face to the faces found in the character's references (None when
  the image or the references have no face, and under ``region: image``).
- ``clip_t``: open_clip cosine of the whole image with ``scoring_prompt`` (the trigger replaced by the class word).
- ``memorisation``: highest cosine of the whole-image DINOv2 embedding to the training images' (None without them).
- ``drift`` (family ``leakage`` only, else None): 1 - cosine of the whole-image embedding with the base model's
  image of the same ``prompt_id`` and ``seed``.

The head region is the best face of the identity stage's detector (score >= ``identity.face_min_score``) grown
``evaluation.identity.head_scale`` times about its centre into a square (the encoder centre-crops a square, so
a square keeps the whole head), clipped to the image. References go through the same rule, except that a
reviewed reference without a detected face keeps its whole crop (it is known to show the character). Every crop
is composited on ``dataset.background_rgb`` and padded to a square, as the identity stage does. With
``evaluation.identity.region: image`` (characters whose faces the detector cannot find) the whole image is the
region, the detector is not used and ``detected`` is True.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from castlab.config import Config
from castlab.errors import InputError
from castlab.identity.embed import FaceModel, square_on_background
from castlab.models.faces import Face

Box = tuple[float, float, float, float]
BASE = "base"


class Encoder(Protocol):
    """What the metrics need from :class:`castlab.models.image_encoder.ImageEncoder`."""

    model_version: str

    def encode(self, images: list[Any]) -> np.ndarray: ...


class TextScorer(Protocol):
    """What the metrics need from :class:`castlab.models.embedder.Embedder`."""

    model_version: str

    def clip_t(self, images: list[Any], texts: list[str]) -> list[float]: ...


# -- head region ----------------------------------------------------------------------------------------
def _uses_faces(cfg: Config, analyzer: FaceModel | None) -> bool:
    if cfg.evaluation.identity.region == "image":
        return False
    if analyzer is None:
        raise ValueError("evaluation.identity.region is 'face' but no face analyzer was given")
    return True


def best_face(image: Image.Image, analyzer: FaceModel, cfg: Config) -> Face | None:
    """The detector's best face in `image` if it scores at least ``identity.face_min_score``, else None."""
    faces = analyzer.detect(np.asarray(image.convert("RGB")))
    best = max(faces, key=lambda f: f.score, default=None)
    return best if best is not None and best.score >= float(cfg.identity.face_min_score) else None


def grow_box(bbox: Box, scale: float, size: tuple[int, int]) -> Box | None:
    """A square of side `scale` × the box's longer side about its centre, clipped to `size` (width, height);
    None when less than 2 pixels remain on a side."""
    x0, y0, x1, y1 = bbox
    half = scale * max(x1 - x0, y1 - y0) / 2.0
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    box = (max(0.0, cx - half), max(0.0, cy - half), min(float(size[0]), cx + half), min(float(size[1]), cy + half))
    return box if box[2] - box[0] >= 2 and box[3] - box[1] >= 2 else None


def head_region(image: Image.Image, analyzer: FaceModel | None, cfg: Config) -> Box | None:
    """The head box (x0, y0, x1, y1) of `image` (module docstring); the whole image under ``region: image``;
    None when no face is found."""
    if not _uses_faces(cfg, analyzer):
        return (0.0, 0.0, float(image.width), float(image.height))
    face = best_face(image, analyzer, cfg)
    return None if face is None else grow_box(face.bbox, float(cfg.evaluation.identity.head_scale), image.size)


def _square(image: Image.Image, cfg: Config) -> Image.Image:
    return square_on_background(image.convert("RGBA"), tuple(int(c) for c in cfg.dataset.background_rgb))


def _crop(image: Image.Image, box: Box, cfg: Config) -> Image.Image:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return _square(image.crop((x0, y0, x1, y1)), cfg)


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


# -- references -----------------------------------------------------------------------------------------
@dataclass
class References:
    """Per character: DINOv2 embeddings of its reference crops (``dino``, (n, D)) and ArcFace embeddings of the
    faces found in them (``arcface``, (m, 512), m may be 0). `source` names where the crops came from."""

    dino: dict[str, np.ndarray]
    arcface: dict[str, np.ndarray]
    source: str = "reference crops"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def characters(self) -> list[str]:
        return sorted(self.dino)

    def check(self, character: str) -> None:
        if character not in self.dino:
            raise InputError(self.source, f"no references for character {character!r} "
                                          f"(characters with references: {', '.join(self.characters) or 'none'})")

    def margins(self, embeddings: np.ndarray, character: str) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """Per row of `embeddings`: (margin, similarity to `character`, name of the most similar other one)."""
        self.check(character)
        emb = np.asarray(embeddings, np.float32).reshape(len(embeddings), -1)
        own = (emb @ self.dino[character].T).mean(axis=1) if len(emb) else np.zeros(0, np.float32)
        others = [c for c in self.characters if c != character]
        if not others or not len(emb):
            return own, own, [None] * len(emb)
        sims = np.stack([(emb @ self.dino[c].T).mean(axis=1) for c in others], axis=1)
        best = sims.argmax(axis=1)
        return own - sims[np.arange(len(emb)), best], own, [others[i] for i in best]

    def arcface_similarity(self, vector: np.ndarray, character: str) -> float | None:
        """Mean ArcFace cosine of `vector` to the character's reference faces; None without any."""
        self.check(character)
        faces = self.arcface.get(character)
        if faces is None or not len(faces):
            return None
        return float((faces @ np.asarray(vector, np.float32).ravel()).mean())


def build_references(
    crops_by_character: Mapping[str, Sequence[Image.Image]],
    encoder: Encoder,
    analyzer: FaceModel | None,
    cfg: Config,
    source: str = "reference crops",
) -> References:
    """Embed each character's reviewed reference crops (head region where a face is found, else the whole crop;
    one encoder call for all of them). A character without crops → :class:`InputError` naming it."""
    if not crops_by_character:
        raise InputError(source, "no characters with reference crops")
    empty = [name for name, crops in crops_by_character.items() if not crops]
    if empty:
        raise InputError(source, f"no reference crops for character(s) {', '.join(map(repr, sorted(empty)))}")
    faces_on = _uses_faces(cfg, analyzer)
    scale = float(cfg.evaluation.identity.head_scale)
    regions: list[Image.Image] = []
    owners: list[str] = []
    arcface: dict[str, list[np.ndarray]] = {name: [] for name in crops_by_character}
    with_face = dict.fromkeys(crops_by_character, 0)
    for name, crops in crops_by_character.items():
        for crop in crops:
            flat = _square(crop, cfg)
            face = best_face(flat, analyzer, cfg) if faces_on else None
            box = grow_box(face.bbox, scale, flat.size) if face is not None else None
            regions.append(_crop(flat, box, cfg) if box is not None else flat)
            owners.append(name)
            if face is not None:
                with_face[name] += 1
                arcface[name].append(np.asarray(analyzer.embed(_rgb(flat), face), np.float32).ravel())
    vectors = np.asarray(encoder.encode(regions), np.float32)
    owners_arr = np.array(owners)
    dino = {name: vectors[owners_arr == name] for name in crops_by_character}
    faces = {name: np.stack(v) if v else np.zeros((0, 0), np.float32) for name, v in arcface.items()}
    meta = {
        "encoder": encoder.model_version,
        "faces": getattr(analyzer, "model_version", None) if faces_on else None,
        "region": cfg.evaluation.identity.region,
        "crops": {name: len(crops) for name, crops in crops_by_character.items()},
        "with_face": with_face,
    }
    return References(dino, faces, source, meta)


# -- scoring --------------------------------------------------------------------------------------------
def embed_training_images(images: Sequence[Image.Image], encoder: Encoder, cfg: Config) -> np.ndarray:
    """Whole-image embeddings of the training images for ``memorisation`` (composited and squared as renders)."""
    return np.asarray(encoder.encode([_square(im, cfg) for im in images]), np.float32)


def base_embeddings(
    renders: Sequence[Mapping[str, Any]], embeddings: np.ndarray, base: str = BASE
) -> dict[tuple[str, int], np.ndarray]:
    """(prompt_id, seed) → whole-image embedding of the base model's renders among `renders` (for ``drift``)."""
    return {
        (str(r["prompt_id"]), int(r["seed"])): np.asarray(embeddings[i], np.float32)
        for i, r in enumerate(renders) if r["checkpoint"] == base
    }


@dataclass
class Regions:
    """What identity scoring sees of some images: whole-image and head-region embeddings, the faces and boxes."""

    whole: np.ndarray  # (N, D) whole-image embeddings (composited, squared)
    head: np.ndarray  # (N, D) head-region embeddings (zeros where no head was found)
    faces: list[Face | None]
    boxes: list[Box | None]
    found: list[int]  # indices of the images with a head region (all of them under region: image)


def identity_regions(images: Sequence[Image.Image], encoder: Encoder, analyzer: FaceModel | None, cfg: Config
                     ) -> Regions:
    """The head region of each image (module docstring) and both embeddings; the encoder is called at most
    twice (whole images, then every head found)."""
    squared = [_square(im, cfg) for im in images]
    whole = np.asarray(encoder.encode(squared), np.float32).reshape(len(images), -1)
    scale = float(cfg.evaluation.identity.head_scale)
    faces: list[Face | None] = [None] * len(images)
    boxes: list[Box | None] = [None] * len(images)
    if not _uses_faces(cfg, analyzer):
        return Regions(whole, whole, faces, [(0.0, 0.0, float(im.width), float(im.height)) for im in images],
                       list(range(len(images))))
    for i, image in enumerate(images):
        faces[i] = best_face(image, analyzer, cfg)
        boxes[i] = grow_box(faces[i].bbox, scale, image.size) if faces[i] is not None else None
    found = [i for i, box in enumerate(boxes) if box is not None]
    head = np.zeros((len(images), whole.shape[1]), np.float32)
    if found:
        head[found] = np.asarray(encoder.encode([_crop(images[i], boxes[i], cfg) for i in found]), np.float32)
    return Regions(whole, head, faces, boxes, found)


def score_images(
    renders: Sequence[Mapping[str, Any]],
    images: Sequence[Image.Image],
    refs: References,
    character: str,
    encoder: Encoder,
    analyzer: FaceModel | None,
    embedder: TextScorer,
    train_embeddings: np.ndarray | None,
    base_lookup: Mapping[tuple[str, int], np.ndarray] | None,
    cfg: Config,
    drift: bool = True,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The per-image metrics of `renders` (module docstring) and their whole-image DINOv2 embeddings (N, D).

    `images[i]` is the image of `renders[i]`. `base_lookup` maps (prompt_id, seed) to the base model's
    whole-image embedding (:func:`base_embeddings`); base renders in `renders` are added to it, so base and
    checkpoints can be scored in one call. ``drift=False`` leaves ``drift`` None, for :func:`add_drift` once
    the base model's embeddings are at hand (renders scored apart, e.g. by workers). Returns new dicts (inputs
    are not changed), in input order; every render gets a row. Each encoder is called once per call (batched),
    ArcFace once per detected face.
    """
    if len(renders) != len(images):
        raise ValueError(f"score_images needs one image per render, got {len(renders)} renders, {len(images)} images")
    refs.check(character)
    regions = identity_regions(images, encoder, analyzer, cfg)
    whole, faces, boxes, found = regions.whole, regions.faces, regions.boxes, regions.found
    margins, own, rivals = refs.margins(regions.head, character)
    clip_t = embedder.clip_t(list(images), [str(r["scoring_prompt"]) for r in renders]) if renders else []
    train = None if train_embeddings is None else np.asarray(train_embeddings, np.float32)
    memorisation = np.clip((whole @ train.T).max(axis=1), -1.0, 1.0) if train is not None and train.size else None
    lookup = dict(base_lookup or {})
    lookup.update(base_embeddings(renders, whole))
    miss = float(cfg.evaluation.identity.miss_margin)
    detected = set(found)
    rows = []
    for i, render in enumerate(renders):
        hit = i in detected
        arcface = None
        if hit and faces[i] is not None and len(refs.arcface.get(character, ())):
            arcface = refs.arcface_similarity(analyzer.embed(_rgb(images[i]), faces[i]), character)
        rows.append({
            **render,
            "detected": hit,
            "identity_margin": float(margins[i]) if hit else miss,
            "identity_similarity": float(own[i]) if hit else None,
            "identity_rival": rivals[i] if hit else None,
            "head_box": [round(v, 1) for v in boxes[i]] if hit else None,
            "arcface": arcface,
            "clip_t": float(clip_t[i]),
            "memorisation": None if memorisation is None else float(memorisation[i]),
            "drift": _drift(render, whole[i], lookup) if drift else None,
        })
    return rows, whole


def add_drift(rows: Sequence[Mapping[str, Any]], embeddings: Sequence[np.ndarray] | np.ndarray,
              base: str = BASE) -> list[dict[str, Any]]:
    """`rows` (scored with ``drift=False``) with ``drift`` set as :func:`score_images` sets it, from their
    whole-image `embeddings` (``embeddings[i]`` is row i's); the base model's rows must be among them."""
    if not len(rows):
        return []
    lookup = base_embeddings(rows, np.asarray(embeddings, np.float32).reshape(len(rows), -1), base)
    return [{**row, "drift": _drift(row, embeddings[i], lookup)} for i, row in enumerate(rows)]


def _drift(render: Mapping[str, Any], vector: np.ndarray, lookup: Mapping[tuple[str, int], np.ndarray]) -> float | None:
    if render["family"] != "leakage":
        return None
    key = (str(render["prompt_id"]), int(render["seed"]))
    if key not in lookup:
        raise ValueError(f"drift: no base-model image for leakage prompt {key[0]!r} seed {key[1]} "
                         "(score the base renders first or in the same call)")
    return float(max(0.0, 1.0 - float(np.dot(vector, lookup[key]))))
