"""The grounder model role (``models.<profile>.grounder``): an open-vocabulary detector turns a text query
("teapot.", "the girl with red hair.") into boxes that prompt SAM2, for objects that are not characters and for
shots where evidence finds no face.

- ``tiny``: transformers' ``GroundingDinoForObjectDetection`` with a small configuration (``tiny-grounding-dino``:
  a 4-stage Swin of width 16, a 1-layer BERT of width 32, d_model 32, 16 queries) and seeded random weights: the
  real architecture, offline, boxes of noise. Its processor (Grounding DINO's image processor at 128-192 px and a
  BERT WordPiece tokenizer whose small vocabulary is made in code, with bert-base-uncased's ids for ``[CLS]``,
  ``[SEP]``, ``.`` and ``?``, which the model hard-codes as phrase delimiters) is built once, atomically, into
  ``.cache/tiny-grounding-dino-<recipe hash>`` and loaded with ``AutoProcessor`` like a real one.
- ``full``: any transformers Grounding DINO by hub id or local folder (default
  ``IDEA-Research/grounding-dino-tiny``), loaded with ``AutoModelForZeroShotObjectDetection``; never downloaded
  unless ``local_files_only: false``, never random weights instead.

:func:`ground_boxes` is the video stage's entry point (a query that finds nothing is an :class:`InputError`);
:func:`boxes_to_masks` prompts SAM2's image predictor with the boxes, giving the ``seeds`` of
:func:`castlab.video.track.track_objects`.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from castlab.config import Config
from castlab.errors import ConfigError, InputError
from castlab.models import cache_root
from castlab.models.pretrained import ProcessorModel
from castlab.workspace import folder_in_place

if TYPE_CHECKING:
    from castlab.models.segmenter import Segmenter
    from castlab.settings import GroundingSettings

TINY_ARCH = "tiny-grounding-dino"
TINY_MAX_TEXT = 64  # tokens of a query, [CLS] and [SEP] included (the full model takes 256)
TINY_SIZE = {"shortest_edge": 128, "longest_edge": 192}
# bert-base-uncased's ids: Grounding DINO hard-codes [CLS] 101, [SEP] 102, "." 1012 and "?" 1029 as the
# delimiters of a query's phrases (modeling_grounding_dino.SPECIAL_TOKENS), so the tiny vocabulary keeps them
FIXED_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
TINY_VOCAB_SIZE = 1030
_WORDS = """
a an the and or of in on at to with without from into over under behind near by for as is are it its his her
their this that one two three four five some all other left right top bottom front back middle side small big
little large tall short long round square flat thin thick old young new soft hard bright dark light pale shiny
red orange yellow green blue purple pink brown black white grey gray gold golden silver striped spotted plain
girl boy woman man child kid baby person people character hero villain friend family crowd team
hair head face eye eyes nose mouth ear ears hand hands arm arms leg legs foot feet tail wing wings body fur
hat cap helmet hood scarf shirt dress skirt jacket coat sweater hoodie pants jeans shorts shoes boots gloves
glasses goggles backpack bag apron belt bow ribbon necklace cape mask crown sword shield
dog cat rabbit bunny bird mouse fish bear fox squirrel horse cow pig sheep duck chicken frog owl dragon monster
robot toy doll ball balloon kite book letter map phone camera lamp candle clock mirror picture frame window door
table chair bed sofa couch shelf box basket bucket barrel bottle jar cup mug glass plate bowl spoon fork knife
pot pan kettle teapot teacup tea coffee cake bread apple banana orange pear cherry carrot pizza cookie candy
car truck bus train plane boat ship bike bicycle wheel rocket house castle tower bridge road street fence gate
tree trees flower flowers plant grass leaf leaves rock rocks stone water river lake sea ocean wave cloud sky sun
moon star fire smoke snow rain ice sand hill mountain cave forest garden field park city town village
kitchen room wall floor roof stairs sign flag umbrella tent bench pillow blanket rope ladder bell key coin gem
wooden metal plastic paper glass fabric leather stone
standing sitting walking running jumping flying holding carrying wearing looking smiling
"""
_SUFFIXES = ("s", "es", "ed", "ing", "er", "est", "ly", "y", "ie", "ies", "en", "ish")
TINY_CONFIG: dict[str, Any] = {
    "backbone_config": {"model_type": "swin", "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
                        "window_size": 4, "image_size": 128, "out_indices": [2, 3, 4]},
    "text_config": {"model_type": "bert", "vocab_size": TINY_VOCAB_SIZE, "hidden_size": 32, "num_hidden_layers": 1,
                    "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": TINY_MAX_TEXT},
    # d_model: a multiple of 32 (the input projections' GroupNorm(32, d_model)); decoder_layers >= 2 (with
    # decoder_bbox_embed_share, transformers 5 ties bbox_embed.0 to bbox_embed.1+ and refuses a single layer)
    "d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
    "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_n_points": 2, "decoder_n_points": 2,
    "num_queries": 16, "max_text_len": TINY_MAX_TEXT,
}
NMS_IOU = 0.8  # Grounding DINO has no NMS of its own: boxes overlapping a better one this much are one object


@dataclass(frozen=True)
class Detection:
    """One box for a text query: the phrase its tokens name, its score and its pixel ``(x0, y0, x1, y1)``."""

    label: str
    score: float
    box: tuple[float, float, float, float]


def normalise_query(query: str) -> str:
    """The query as Grounding DINO wants it: lowercase, single spaces, ending with "." ("" when empty)."""
    text = " ".join(str(query).lower().split()).strip(" .")
    return f"{text}." if text else ""


class Grounder(ProcessorModel):
    """A Grounding DINO model with its processor (image processor + BERT tokenizer)."""

    @torch.no_grad()
    def detect(self, image: Image.Image, query: str, box_threshold: float, text_threshold: float, max_boxes: int,
               nms_iou: float | None = NMS_IOU) -> list[Detection]:
        """The boxes of `query` in `image` whose score exceeds `box_threshold`, best first, at most `max_boxes`,
        clipped to the image (boxes thinner than a pixel dropped, those overlapping a better one by more than
        `nms_iou` dropped; None keeps them). A label is the query's tokens scoring above `text_threshold` (the
        whole query when none does)."""
        text = normalise_query(query)
        if not text:
            raise InputError("grounding query", "is empty: give a text query such as 'teapot.'")
        rgb = image.convert("RGB")
        inputs = self.processor(images=rgb, text=text, return_tensors="pt", truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(torch.float32)
        outputs = self.model(**inputs)
        # transformers 5: `threshold` (was `box_threshold`), labels under "text_labels" ("labels" warns)
        result = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=float(box_threshold), text_threshold=float(text_threshold),
            target_sizes=[(rgb.height, rgb.width)])[0]
        scores = result["scores"].float().cpu()
        boxes = result["boxes"].float().cpu()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, rgb.width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, rgb.height)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
        index = torch.nonzero(keep).flatten()
        if nms_iou is not None and len(index):
            from torchvision.ops import nms

            index = index[nms(boxes[index], scores[index], float(nms_iou))]  # best first
        order = sorted(index.tolist(), key=lambda i: (-float(scores[i]), i))[: max(0, int(max_boxes))]
        fallback = text.rstrip(".")
        return [Detection(self._label(result["text_labels"][i]) or fallback, float(scores[i]),
                          tuple(float(v) for v in boxes[i].tolist())) for i in order]

    def _label(self, decoded: str) -> str:
        """A decoded phrase without special tokens and trailing delimiters."""
        tokenizer = self.processor.tokenizer
        for token in tokenizer.all_special_tokens:
            decoded = decoded.replace(token, " ")
        return " ".join(decoded.split()).strip(" .?")


def tiny_vocab() -> list[str]:
    """The tiny WordPiece vocabulary, by id: bert-base-uncased's special and delimiter ids (:data:`FIXED_IDS`),
    punctuation, digits, letters and their ``##`` continuations, common suffixes and :data:`_WORDS`; unused slots
    are ``[unusedN]``."""
    pieces = [*",!'\"-:;()/&+", *string.digits, *string.ascii_lowercase, *(f"##{c}" for c in string.ascii_lowercase),
              *(f"##{d}" for d in string.digits), *(f"##{s}" for s in _SUFFIXES)]
    pieces = list(dict.fromkeys([*pieces, *_WORDS.split()]))  # unique: a repeated token would shrink the vocab
    by_id = {i: t for t, i in FIXED_IDS.items()}
    free = (i for i in range(TINY_VOCAB_SIZE) if i not in by_id)
    for piece in pieces:
        by_id[next(free)] = piece  # StopIteration: TINY_VOCAB_SIZE is too small for the words
    return [by_id.get(i, f"[unused{i}]") for i in range(TINY_VOCAB_SIZE)]


def _recipe(vocab: list[str]) -> dict[str, Any]:
    import transformers

    return {"vocab": vocab, "size": TINY_SIZE, "max_text": TINY_MAX_TEXT, "transformers": transformers.__version__,
            "recipe": 1}


def _build_processor(folder: Path, vocab: list[str]) -> None:
    from transformers import BertTokenizerFast, GroundingDinoImageProcessor, GroundingDinoProcessor

    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True,
                                  model_max_length=TINY_MAX_TEXT)
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size=TINY_SIZE),
                                       tokenizer=tokenizer)
    with folder_in_place(folder, "processor_config.json") as tmp:
        processor.save_pretrained(str(tmp))


def tiny_processor_dir() -> Path:
    """Folder of the tiny grounder's processor (built on first use)."""
    recipe = _recipe(tiny_vocab())
    digest = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    folder = cache_root("the tiny grounder") / f"{TINY_ARCH}-{digest}"
    if not (folder / "processor_config.json").is_file():
        _build_processor(folder, recipe["vocab"])
    return folder


def _tiny(cfg: Config) -> Grounder:
    from transformers import AutoProcessor, GroundingDinoConfig, GroundingDinoForObjectDetection

    arch = str(cfg.model("grounder").arch or "")
    if arch != TINY_ARCH:
        raise ConfigError(f"models.tiny.grounder.arch: unknown tiny grounder {arch!r} (known: {TINY_ARCH})")
    seed = int(cfg.seed)
    processor = AutoProcessor.from_pretrained(str(tiny_processor_dir()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(GroundingDinoConfig(**TINY_CONFIG))
    digest = hashlib.sha1(json.dumps([TINY_CONFIG, tiny_vocab()], sort_keys=True).encode()).hexdigest()[:8]
    return Grounder(model, processor, f"{TINY_ARCH}-{digest}-s{seed}", "cpu")


def _full(cfg: Config) -> Grounder:
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    from castlab.models.pretrained import pretrained, role_device

    pre = pretrained(cfg, "grounder", "a Grounding DINO hub id (e.g. IDEA-Research/grounding-dino-tiny) or folder")
    processor, model = pre.load("Grounding DINO", lambda: (
        AutoProcessor.from_pretrained(pre.source, **pre.kwargs),
        AutoModelForZeroShotObjectDetection.from_pretrained(pre.source, **pre.model_kwargs)))
    if not hasattr(processor, "post_process_grounded_object_detection"):
        raise ConfigError(f"{pre.prefix}.model: {pre.source!r} is not a Grounding DINO model (its processor "
                          f"{type(processor).__name__} has no grounded post-processing)")
    device = role_device(cfg, "grounder")
    return Grounder(model.to(device), processor, pre.version(model.config, "grounding-"), device)


def load_grounder(cfg: Config) -> Grounder:
    """The grounder of the active profile (module docstring)."""
    return _tiny(cfg) if cfg.profile == "tiny" else _full(cfg)


def _pil(image: Image.Image | np.ndarray) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))


def ground_boxes(grounder: Grounder, image: Image.Image | np.ndarray, query: str, settings: GroundingSettings,
                 where: str) -> list[Detection]:
    """:meth:`Grounder.detect` with ``video.grounding``'s thresholds; an empty query or one that finds nothing
    is an :class:`InputError` naming the frame (`where`)."""
    if not normalise_query(query):
        raise InputError(where, "the text query is empty: give one such as 'teapot.' or 'the girl with red hair.'")
    found = grounder.detect(_pil(image), query, settings.box_threshold, settings.text_threshold, settings.max_boxes)
    if not found:
        raise InputError(where, (
            f"the query {query!r} found nothing (no box scored above video.grounding.box_threshold "
            f"{settings.box_threshold:g}): lower video.grounding.box_threshold, or word the query as the objects' "
            "names (e.g. 'teapot.'), or pick a frame where they are visible"))
    return found


def boxes_to_masks(cfg: Config, image: Image.Image | np.ndarray, detections: list[Detection],
                   segmenter: Segmenter | None = None, where: str = "the frame") -> dict[int, np.ndarray]:
    """SAM2 masks for the detections' boxes (each prompts the image predictor as a box, as evidence boxes do):
    object id (1..n, the detections' order) → boolean mask, the ``seeds`` of
    :func:`castlab.video.track.track_objects`. `segmenter`: the profile's SAM2 image predictor when None. A box
    whose mask is empty keeps its id with an empty mask (not tracked); all empty is an :class:`InputError`."""
    if not detections:
        raise InputError(where, "no box to prompt SAM2 with")
    if segmenter is None:
        from castlab.models.segmenter import load_segmenter

        segmenter = load_segmenter(cfg)
    rgb = np.ascontiguousarray(np.asarray(_pil(image).convert("RGB"), np.uint8))
    masks = {k: segmenter.prompt_instance(rgb, box=d.box).mask.astype(bool)
             for k, d in enumerate(detections, start=1)}
    if not any(m.any() for m in masks.values()):
        raise InputError(where, f"SAM2 found no mask inside the {len(detections)} detected box(es)")
    return masks
