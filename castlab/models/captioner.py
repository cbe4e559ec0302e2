"""Vision-language captioner: a transformers image-text-to-text model decoding under a JSON schema.

Profiles (``models.<profile>.captioner``):

- ``tiny``: a real ``Qwen2VLForConditionalGeneration`` with a small config (2 text layers, 1 vision block)
  and random weights seeded from ``seed``, a byte-level BPE tokenizer trained in code on a built-in
  English/JSON corpus (Qwen2-VL's special tokens and chat template) and a Qwen2-VL processor with small
  images. Built once, atomically, into ``.cache/tiny-qwen2vl-<recipe hash>`` and then loaded with
  ``from_pretrained``; ``model_version`` is ``tiny-qwen2-vl-s<seed>``.
- ``full``: ``model`` (hub id or local folder) with ``revision``, ``local_files_only`` (default true: never
  downloads), ``dtype``/``device`` (``auto``: bfloat16 on CUDA, else float32 on CPU) and ``max_pixels``.
  A model that is not available raises :class:`ConfigError`; there is no fallback to random weights.

Decoding is constrained: the JSON schema of the pydantic model is compiled (outlines-core, the engine of
outlines' JSON generation) into a token index, and a logits processor masks every token the schema does
not allow at each step, for every row of a batch. The mask is applied with plain tensor ops, so no
``torch.compile`` runs (outlines-core's own torch kernel is compiled on first use: a 20-80 s stall on CPU).
A schema's index is compiled once per captioner; its cost grows with schema states (every ``maxLength``
position of a string is a state) times vocabulary: ~0.2 s for the tiny tokenizer, ~15-20 s and ~1.5 GB of
memory for ``CaptionFields`` with a 150k-token vocabulary such as Qwen's.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from castlab.config import Config
from castlab.errors import ConfigError
from castlab.models import cache_root, hub_or_folder
from castlab.workspace import folder_in_place

if TYPE_CHECKING:
    from PIL import Image
    from pydantic import BaseModel

TINY_ARCH = "tiny-qwen2-vl"
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TINY_VOCAB = 2048
TINY_MIN_PIXELS, TINY_MAX_PIXELS = 56 * 56, 112 * 112
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
}
TINY_VISION = {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2}
# Qwen2-VL's chat template: a default system turn, images as <|vision_start|><|image_pad|><|vision_end|>
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SCHEMA_INSTRUCTION = "Answer with one JSON object that follows this JSON schema:\n"

# the tiny tokenizer's training text: English words of captions (so tokens are mostly whole words) and the
# schema's keys and choices, as phrases and as JSON objects
_WORDS = """
a an the and or of in on at to with without from into over under behind near by for as is are was it its
he she they his her their this that one two three small big little large tall short long round thin thick
old young new soft hard warm cool cold bright dark light pale deep glossy matte shiny smooth rough fluffy
fuzzy furry wet dry clean dirty stylised stylized realistic cartoon animated render rendered character
red orange yellow green blue purple pink brown black white grey gray golden silver teal beige navy striped
spotted checked plaid floral plain patterned hoodie shirt t-shirt sweater jacket coat raincoat vest dress
skirt trousers pants jeans shorts overalls uniform suit armor cape scarf hat cap helmet boots shoes sneakers
gloves glasses goggles backpack apron belt collar sleeves pocket buttons zipper hood bow ribbon necklace
wool cotton denim leather silk velvet plastic metal wood wooden rubber glass stone fabric knitted woven
skin fur hair feathers scales subsurface freckled wrinkled curly straight wavy spiky messy braided bald
ponytail bangs clumped strands face eyes eyebrows nose mouth ears cheeks teeth smile grin frown tongue head
neck shoulders arms hands fingers legs feet tail wings body belly chest back side front profile pose
smiling laughing happy sad angry surprised scared worried confused determined calm curious excited bored
tired shy proud thoughtful neutral serious sleepy grumpy cheerful nervous expression emotion
standing sitting walking running jumping waving talking looking pointing holding carrying reaching falling
flying swimming dancing climbing hiding crouching kneeling turning leaning hugging reading eating drinking
sleeping laughing crying shouting listening thinking playing fighting driving riding pushing pulling
kitchen bedroom living room hallway school classroom street city town village forest jungle desert beach
ocean sea river lake mountain hill field garden park farm barn house castle cave workshop garage office
shop market station sky clouds night day sunset sunrise rain snow fog water grass trees flowers rocks
wall floor door window table chair bed lamp shelf stairs bridge road fence car boat train plane toy robot
monster animal dog cat rabbit bunny bird mouse fish bear fox squirrel dragon girl boy woman man child kid
family friend hero villain team crowd background foreground setting scene simple blurred detailed
lighting key rim fill light shadow shadows glow sunlight moonlight lamp candle fire studio ambient
camera shot angle view close-up medium wide full cowboy extreme eye level low high overhead dutch
three-quarter unknown none visible partially mostly slightly very
moves move moving through across toward towards away around up down left right forward backward while then
slowly quickly suddenly gently first finally begins ends stops starts continues during before after
describe description describing image picture frame frames motion outfit materials cloth look caption final
field fields phrase sentence short every each use when you cannot tell answer object follows schema json
properties type string title required enum maxLength minLength additionalProperties items true false null
"""
_SCHEMA_TEXT = (
    "outfit materials skin cloth hair lighting key rim fill camera shot_size angle view expression action "
    "background final_caption motion look description"
)


def _corpus() -> list[str]:
    """Deterministic training text: the words, once each and in phrases, and JSON objects built from them."""
    words, keys = _WORDS.split(), _SCHEMA_TEXT.split()
    lines = [" ".join(words), " ".join(keys)]
    for i in range(600):
        phrase = " ".join(words[(i * k * 7 + k) % len(words)] for k in range(1, 4 + i % 5))
        obj = {
            key: " ".join(words[(i * 13 + j * 31 + n) % len(words)] for n in range(1 + (i + j) % 3))
            for j, key in enumerate(keys[(i % 4) :: 2])
        }
        lines += [phrase.capitalize() + ".", json.dumps(obj, separators=(",", ":") if i % 2 else (", ", ": "))]
    return lines


def _recipe(seed: int) -> dict[str, Any]:
    import transformers

    return {
        "text": TINY_TEXT,
        "vision": TINY_VISION,
        "vocab": TINY_VOCAB,
        "special": SPECIAL_TOKENS,
        "words": [_WORDS, _SCHEMA_TEXT],
        "template": CHAT_TEMPLATE,
        "pixels": [TINY_MIN_PIXELS, TINY_MAX_PIXELS],
        "seed": seed,
        "transformers": transformers.__version__,
        "recipe": 1,
    }


def _train_tokenizer() -> Any:
    """A Qwen2 tokenizer (same pre-tokenizer and byte-level BPE) whose merges are trained on :func:`_corpus`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    probe = Qwen2Tokenizer()  # borrow Qwen2's normaliser, pre-tokenizer and decoder
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = probe.backend_tokenizer.normalizer
    bpe.pre_tokenizer = probe.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=32768,
    )


def _build_tiny(folder: Path, seed: int) -> None:
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _train_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    pixels = {"min_pixels": TINY_MIN_PIXELS, "max_pixels": TINY_MAX_PIXELS}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=CHAT_TEMPLATE,
    )
    special = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config = Qwen2VLConfig(
        text_config={**TINY_TEXT, "vocab_size": len(tokenizer), **special},
        vision_config=TINY_VISION,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        **{**special, "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]]}, do_sample=False
    )
    with folder_in_place(folder, "config.json") as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)


def tiny_model_dir(seed: int) -> Path:
    """Folder of the tiny captioner for `seed` (built on first use)."""
    digest = hashlib.sha1(json.dumps(_recipe(seed), sort_keys=True).encode()).hexdigest()[:10]
    folder = cache_root("the tiny captioner") / f"tiny-qwen2vl-{digest}"
    if not (folder / "config.json").is_file():
        _build_tiny(folder, seed)
    return folder


# --- constrained decoding -------------------------------------------------------------------------------


def token_bytes(tokenizer: Any) -> dict[bytes, list[int]]:
    """Every ordinary token (not added, not special) → the exact bytes it stands for: byte-level BPE
    (GPT-2/Qwen) or SentencePiece (``▁`` for spaces, ``<0xHH>`` byte fallback) vocabularies."""
    from castlab.models.tokenizers import _bytes_to_unicode

    byte_level = "ByteLevel" in str(getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None))
    table = {char: byte for byte, char in _bytes_to_unicode().items()}
    skip = set(tokenizer.added_tokens_decoder) | set(tokenizer.all_special_ids)
    out: dict[bytes, list[int]] = {}
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in skip:
            continue
        if byte_level:
            if any(ch not in table for ch in token):
                continue
            raw = bytes(table[ch] for ch in token)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            raw = bytes([int(token[3:5], 16)])
        else:
            raw = token.replace("\u2581", " ").encode("utf-8")
        if raw:
            out.setdefault(raw, []).append(token_id)
    return out


class JsonConstraint:
    """A transformers logits processor: each row may only continue with tokens its schema allows.

    One outlines-core ``Guide`` per row walks the compiled schema index; the rows' allowed-token bitmasks
    are written on the CPU, moved to the logits' device once per step and applied with plain tensor ops.
    """

    def __init__(self, index: Any, batch_size: int) -> None:
        from outlines_core import Guide

        self.guides = [Guide(index) for _ in range(batch_size)]
        self.started = False
        self.bits: torch.Tensor | None = None
        self.shifts: torch.Tensor | None = None
        self.choice_probs: list[torch.Tensor] = []  # per step: (rows,) probability of the chosen token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, vocab = scores.shape
        if self.bits is None:
            self.bits = torch.zeros((rows, (vocab + 31) // 32), dtype=torch.int32)
            self.shifts = torch.arange(32, dtype=torch.int32, device=scores.device)
        if self.started:
            for guide, last in zip(self.guides, input_ids[:, -1].tolist(), strict=True):
                # a finished guide only takes what it still accepts (its EOS, then the padding that follows)
                if not guide.is_finished() or guide.accepts_tokens([last]):
                    guide.advance(token_id=last, return_tokens=False)
        self.started = True
        for i, guide in enumerate(self.guides):
            row = self.bits[i : i + 1]
            guide.write_mask_into(row.data_ptr(), row.numel(), row.element_size())
        words = self.bits.to(scores.device)
        allowed = ((words.unsqueeze(-1) >> self.shifts) & 1).bool().view(rows, -1)[:, :vocab]
        masked = scores.masked_fill(~allowed, float("-inf"))
        # greedy decoding takes the arg-max: record its probability among the tokens the schema allows
        self.choice_probs.append(torch.softmax(masked.float(), dim=-1).amax(dim=-1).cpu())
        return masked


# --- the captioner ------------------------------------------------------------------------------------------


@dataclass
class Generation:
    """One generated text; ``pieces`` are its decoded tokens with their probabilities, ``lead`` the number of
    whitespace characters stripped from the front of ``text``."""

    text: str
    pieces: list[tuple[str, float]] = field(default_factory=list)
    lead: int = 0

    def span_probs(self, start: int, end: int) -> list[float]:
        """Probabilities of the tokens overlapping ``text[start:end]``."""
        out, pos = [], -self.lead
        for piece, prob in self.pieces:
            if pos < end and pos + len(piece) > start:
                out.append(prob)
            pos += len(piece)
        return out


class Captioner:
    """A vision-language model and its processor; :meth:`generate` returns schema-constrained JSON text."""

    def __init__(self, model: Any, processor: Any, model_version: str, profile: str, device: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.model_version = model_version
        self.profile = profile
        self.device = device
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self._vocabulary: Any = None
        self._indexes: dict[str, Any] = {}
        eos = self.model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_token_id = self.tokenizer.eos_token_id
        self.stop_ids = sorted({self.eos_token_id, *eos_ids})
        pad = self.model.generation_config.pad_token_id
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else pad

    def schema_index(self, schema: type[BaseModel]) -> Any:
        """The outlines-core index of `schema`'s JSON for this tokenizer (compiled once per schema)."""
        from outlines_core import Index, Vocabulary
        from outlines_core.json_schema import build_regex_from_schema

        text = json.dumps(schema.model_json_schema())  # key order = field order
        if text not in self._indexes:
            if self._vocabulary is None:
                self._vocabulary = Vocabulary(self.eos_token_id, token_bytes(self.tokenizer))
            self._indexes[text] = Index(build_regex_from_schema(text), self._vocabulary)
        return self._indexes[text]

    def prompt_text(self, n_images: int, prompt: str, schema: type[BaseModel]) -> str:
        """The chat-templated prompt for one item: its images, then the instruction and the JSON schema."""
        instruction = f"{prompt.strip()}\n{SCHEMA_INSTRUCTION}{json.dumps(schema.model_json_schema())}"
        content: list[dict[str, str]] = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": instruction})
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(
        self,
        items: Sequence[Sequence[Image.Image]],
        prompt: str,
        schema: type[BaseModel],
        max_new_tokens: int,
        batch_size: int = 4,
        progress: bool = False,
    ) -> list[str]:
        """For each item (one or more images) the JSON text generated under `schema`, in order.

        Greedy decoding, `batch_size` items per ``model.generate`` call (left padding). A generation cut off
        by `max_new_tokens` is returned as it is (the caller's schema validation reports it).
        """
        return [g.text for g in self.generate_scored(items, prompt, schema, max_new_tokens, batch_size, progress)]

    @torch.inference_mode()
    def generate_scored(
        self,
        items: Sequence[Sequence[Image.Image]],
        prompt: str,
        schema: type[BaseModel],
        max_new_tokens: int,
        batch_size: int = 4,
        progress: bool = False,
    ) -> list[Generation]:
        """:meth:`generate`, with every generated piece of text and the probability the model gave it among
        the tokens the schema allowed (1.0 where the schema left one choice)."""
        from tqdm.auto import tqdm
        from transformers import LogitsProcessorList

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not items:
            return []
        index = self.schema_index(schema)
        out: list[Generation] = []
        bar = tqdm(total=len(items), desc="captions", unit="item", disable=not progress)
        for start in range(0, len(items), batch_size):
            chunk = [[im.convert("RGB") for im in item] for item in items[start : start + batch_size]]
            texts = [self.prompt_text(len(images), prompt, schema) for images in chunk]
            flat = [im for images in chunk for im in images]
            inputs = self.processor(text=texts, images=flat or None, padding=True, return_tensors="pt")
            inputs = inputs.to(self.model.device)
            constraint = JsonConstraint(index, len(chunk))
            generated = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=LogitsProcessorList([constraint]),
                eos_token_id=self.stop_ids,
                pad_token_id=self.pad_token_id,
            )
            new = generated[:, inputs["input_ids"].shape[1] :].tolist()
            probs = torch.stack(constraint.choice_probs, dim=1).tolist() if constraint.choice_probs else []
            out += [self._pieces(ids, row_probs) for ids, row_probs in zip(new, probs or [[]] * len(new), strict=True)]
            bar.update(len(chunk))
        bar.close()
        return out

    def _pieces(self, ids: list[int], probs: list[float]) -> Generation:
        """Decode one row token by token (up to its stop token) into (piece, probability) pairs."""
        stop = set(self.stop_ids)
        pieces: list[tuple[str, float]] = []
        decoded = ""
        for k, token in enumerate(ids):
            if token in stop:
                break
            text = self.tokenizer.decode(ids[: k + 1], skip_special_tokens=True)
            prob = float(probs[k]) if k < len(probs) else 1.0
            while pieces and not text.startswith(decoded):  # a multi-byte character completed: merge its pieces
                piece, earlier = pieces.pop()
                decoded, prob = decoded[: len(decoded) - len(piece)], min(prob, earlier)
            pieces.append((text[len(decoded) :], prob))
            decoded = text
        lead = len(decoded) - len(decoded.lstrip())
        return Generation(decoded.strip(), pieces, lead)


def _torch_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"models.full.captioner.dtype: unknown dtype {name!r} (auto, bfloat16, float16, float32)")
    return dtype


def _load_full(settings: dict[str, Any]) -> Captioner:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    prefix = "models.full.captioner"
    source = str(settings.model or "")
    if not source:
        raise ConfigError(f"{prefix}.model is not set: a transformers image-text-to-text model (hub id or folder)")
    revision = settings.revision or None
    local_only = bool(settings.local_files_only)
    source, name = hub_or_folder(source, f"{prefix}.model")
    device = str(settings.device or "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = _torch_dtype(str(settings.dtype or "auto"), device)
    kwargs: dict[str, Any] = {"revision": revision, "local_files_only": local_only}
    try:
        processor = AutoProcessor.from_pretrained(source, **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, device_map=device, **kwargs)
    except OSError as exc:
        where = "in the local Hugging Face cache" if local_only else "on the hub"
        raise ConfigError(
            f"{prefix}.model: {source!r} is not {where} ({str(exc).splitlines()[0]}). Set {prefix}.model to a "
            f"local model folder, or set {prefix}.local_files_only: false to allow downloading it; "
            "castlab never falls back to random weights"
        ) from exc
    if settings.max_pixels:  # the largest image (pixels) the vision encoder sees; crops are resized to fit
        for part in (getattr(processor, "image_processor", None), getattr(processor, "video_processor", None)):
            if part is not None and "longest_edge" in part.size:
                part.size["longest_edge"] = int(settings.max_pixels)
    version = f"{name}@{revision}" if revision else name
    return Captioner(model, processor, version, "full", device)


def load_captioner(cfg: Config) -> Captioner:
    """The captioner of the active profile (see module docstring)."""
    settings = cfg.model("captioner")
    if cfg.profile != "tiny":
        return _load_full(settings)
    arch = str(settings.arch or "")
    if arch != TINY_ARCH:
        raise ConfigError(f"models.tiny.captioner.arch: unknown tiny captioner {arch!r} (known: {TINY_ARCH})")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    seed = int(cfg.seed)
    folder = tiny_model_dir(seed)
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    return Captioner(model, processor, f"{TINY_ARCH}-s{seed}", "tiny", "cpu")
