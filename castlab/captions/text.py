"""Structured caption fields → the training caption text, fitted to CLIP's token window.

A caption leads with ``<trigger> <class_word>`` and ``dataset.caption_prefix``, then only what varies
between images of one character (view, expression, action, a changed outfit, lighting, camera,
background, cloth material). Invariant traits (``captions.invariant_fields``, and an outfit equal to the
identity's usual one) are left to the trigger. Which parts are captioned, and their importance, come from
``captions.field_order``; the text follows a fixed reading order (:data:`CAPTION_ORDER`).

Length is counted in real CLIP tokens (BOS/EOS included, so 77 is CLIP's window): over
``dataset.caption_max_tokens`` the least important parts are dropped whole, and if the lead, prefix and
most important part alone are too long that part is cut at a word boundary. Under
``dataset.caption_min_tokens`` nothing can be invented: the caption is kept and marked ``short``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from castlab.captions.schema import CHOICE_FIELDS, TEXT_FIELDS, get_field, set_field
from castlab.config import Config
from castlab.errors import ConfigError
from castlab.models.tokenizers import count_clip_tokens

STYLES = ("natural", "tags")
# field paths that can be caption parts (final_caption is the model's sentence, never a part)
PART_FIELDS = tuple(p for p in (*CHOICE_FIELDS, *TEXT_FIELDS) if p != "final_caption")
# reading order of the parts in the caption text (importance is captions.field_order)
CAPTION_ORDER = ("view", "expression", "action", "outfit", "lighting.key", "lighting.rim", "lighting.fill",
                 "camera.shot_size", "camera.angle", "background", "materials.cloth", "materials.skin",
                 "materials.hair")  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
FILLER = frozenset({"very", "really", "quite", "slightly", "somewhat", "just", "is", "are", "being"})
_PREPOSITIONS = ("in", "on", "at", "against", "inside", "outside", "under", "near", "by", "behind", "over")
_CLOTH_WORDS = ("cloth", "clothes", "clothing", "fabric", "outfit", "garment")


@dataclass(frozen=True)
class AssembledCaption:
    text: str
    tokens: int  # CLIP tokens incl. BOS/EOS
    parts: list[str]  # field paths used, in caption order
    dropped: list[str]  # field paths dropped to fit max tokens, in drop order
    short: bool  # tokens < dataset.caption_min_tokens
    long: bool  # still > dataset.caption_max_tokens (only when the lead and prefix alone are too long)



def norm_value(value: Any) -> str:
    """The form field values are compared in: lower-case, spaces collapsed, no trailing punctuation or
    leading article ("A red scarf." == "red scarf")."""
    if not isinstance(value, str):
        return ""
    words = " ".join(value.split()).casefold().strip(" .,;:!").split(" ")
    if len(words) > 1 and words[0] in ARTICLES:
        words = words[1:]
    return " ".join(words)


def term_pattern(term: str) -> re.Pattern[str]:
    """Whole word/phrase, case-insensitive, any run of spaces between words."""
    body = r"\s+".join(re.escape(w) for w in term.split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def has_term(text: str, term: str) -> bool:
    return bool(term.strip()) and term_pattern(term).search(text) is not None


def is_uncertain(value: Any, terms: list[str] | tuple[str, ...], whole_only: bool = False) -> bool:
    """`value` is an uncertainty marker: one of `terms` as the whole value or (unless `whole_only`) as a
    whole word/phrase in it."""
    if not isinstance(value, str):
        return False
    norm = norm_value(value)
    if any(norm == norm_value(t) for t in terms):
        return True
    return not whole_only and any(has_term(value, t) for t in terms)


def uncertain_terms(cfg: Config) -> list[str]:
    return [str(t) for t in cfg.captions.uncertain_terms or []]


def field_order(cfg: Config) -> list[str]:
    """``captions.field_order``, checked: each entry is a part field path (ConfigError names the bad one)."""
    order = [str(p) for p in cfg.captions.field_order or []]
    for path in order:
        if path not in PART_FIELDS:
            known = ", ".join(PART_FIELDS)
            raise ConfigError(f"captions.field_order: '{path}' is not a caption field (one of {known})")
    return order


def resolve_style(cfg: Config, style: str | None = None) -> str:
    """`style`, else ``captions.style``; ``auto`` follows the base model (SD1.x → tags, otherwise natural)."""
    chosen = style if style is not None else str(cfg.captions.style)
    if chosen == "auto":
        arch = cfg.model("base_model").arch.lower()
        chosen = "tags" if arch.startswith(("sd15", "sd1", "sd-1")) else "natural"
    if chosen not in STYLES:
        raise ConfigError(f"captions.style must be auto or one of {STYLES}, got {chosen!r}")
    return chosen


def _clean(value: str) -> str:
    return " ".join(value.split()).strip(" .,;:")


def _tag(value: str) -> str:
    words = [w for w in _clean(value).casefold().split() if w not in ARTICLES and w not in FILLER]
    return " ".join(words)


def phrase(path: str, value: str, style: str) -> str:
    """One part's text: natural phrases get small connecting words, tags are bare lower-case words."""
    text = _clean(value)
    low = text.casefold()
    first = low.split(" ", 1)[0] if low else ""
    if style == "tags":
        if path == "background" and first in _PREPOSITIONS:
            text = text.split(" ", 1)[1] if " " in text else ""
        if path == "outfit" and first == "wearing":
            text = text.split(" ", 1)[1] if " " in text else ""
        return _tag(text)
    if path == "outfit" and first not in ("wearing", "dressed", "in"):
        return f"wearing {text}"
    if path == "background" and first not in _PREPOSITIONS and "background" not in low:
        return f"in {text}"
    if path == "camera.angle" and not low.endswith(("angle", "shot", "view")):
        return f"{text} shot"
    if path == "materials.cloth" and not any(has_term(low, w) for w in _CLOTH_WORDS):
        return f"{text} clothing"
    return text


def _candidates(fields: dict[str, Any], cfg: Config, style: str, usual: dict[str, str] | None) -> list[tuple[str, str]]:
    order = field_order(cfg)
    invariant = {str(p) for p in cfg.captions.invariant_fields or []}
    terms = uncertain_terms(cfg)
    usual_outfit = norm_value((usual or {}).get("outfit"))
    out = []
    for path in sorted(dict.fromkeys(order), key=CAPTION_ORDER.index):
        value = get_field(fields, path)
        if path in invariant or not isinstance(value, str) or not _clean(value) or is_uncertain(value, terms):
            continue
        if path == "outfit" and usual_outfit and norm_value(value) == usual_outfit:
            continue
        text = phrase(path, value, style)
        if text:
            out.append((path, text))
    return out


def _cut(head: list[str], text: str, max_tokens: int) -> str:
    """The longest word prefix of `text` that fits after `head` ("" when none does)."""
    words = text.split()
    lo, hi = 0, len(words)  # invariant: words[:lo] fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_clip_tokens(", ".join([*head, " ".join(words[:mid])])) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo]).rstrip(" ,;:")


def assemble_caption(
    fields: dict[str, Any], cfg: Config, style: str | None = None, usual: dict[str, str] | None = None
) -> AssembledCaption:
    """The caption text for `fields` (the CaptionFields dict; ``character`` is left to the trigger).

    `usual`: the identity's majority values (field path → value); an outfit equal to its usual one is left out.
    """
    chosen = resolve_style(cfg, style)
    lead = f"{cfg.dataset.trigger_token} {cfg.dataset.class_word}".strip()
    head = [t for t in (lead, _clean(str(cfg.dataset.caption_prefix or ""))) if t]
    min_tokens, max_tokens = int(cfg.dataset.caption_min_tokens), int(cfg.dataset.caption_max_tokens)
    parts = _candidates(fields, cfg, chosen, usual)
    importance = field_order(cfg)
    dropped: list[str] = []

    def join() -> str:
        return ", ".join([*head, *(text for _, text in parts)])

    while len(parts) > 1 and count_clip_tokens(join()) > max_tokens:
        least = max(parts, key=lambda p: importance.index(p[0]))
        parts.remove(least)
        dropped.append(least[0])
    if parts and count_clip_tokens(join()) > max_tokens:
        path, text = parts[0]
        cut = _cut(head, text, max_tokens)
        if cut:
            parts[0] = (path, cut)
        else:
            parts.clear()
            dropped.append(path)
    text = join()
    tokens = count_clip_tokens(text)
    return AssembledCaption(text=text, tokens=tokens, parts=[p for p, _ in parts], dropped=dropped,
                            short=tokens < min_tokens, long=tokens > max_tokens)  # fmt: skip


def caption_from_choices(
    base: dict[str, Any],
    choices: dict[str, str],
    cfg: Config,
    style: str | None = None,
    usual: dict[str, str] | None = None,
) -> AssembledCaption:
    """Rebuild the caption after the reviewer corrected some fields (field path → value) in Label Studio.

    ValueError for a path that is not a caption field or a closed-vocabulary value outside its vocabulary.
    """
    fields = copy.deepcopy(base)
    for path, value in choices.items():
        if path not in (*CHOICE_FIELDS, *TEXT_FIELDS, "character"):
            raise ValueError(f"'{path}' is not a caption field")
        if path in CHOICE_FIELDS and value not in (*CHOICE_FIELDS[path], ""):
            raise ValueError(f"{path}: {value!r} is not one of {CHOICE_FIELDS[path]}")
        set_field(fields, path, value)
    return assemble_caption(fields, cfg, style=style, usual=usual)
