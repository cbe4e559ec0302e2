"""Caption quality control: recorded flags (``reason`` or ``reason:detail``) that order the review.

Reasons: ``uncertain:<field>`` (from :func:`neutralise` and :func:`neutralise_unsure`), ``character_mismatch``,
``invariant_disagrees:<field>``, ``low_clip_score``, ``hallucination_term:<term>``, ``too_short``,
``too_long``. :func:`review_priority` turns a record's flags into a sort key (higher = review first).
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from castlab.captions.schema import CHOICE_FIELDS, TEXT_FIELDS, get_field, set_field
from castlab.captions.text import AssembledCaption, has_term, is_uncertain, norm_value, term_pattern, uncertain_terms
from castlab.config import Config
from castlab.identity.review import normalise

CAPTION_PATHS = (*CHOICE_FIELDS, *TEXT_FIELDS)
# review tiers by reason (anything unlisted counts as tier 1)
_TIERS = {"character_mismatch": 3, "invariant_disagrees": 2, "hallucination_term": 2, "low_clip_score": 2,
          "uncertain": 1, "too_short": 1, "too_long": 1}  # fmt: skip


def _neutral_terms(cfg: Config) -> dict[str, str]:
    return {str(k): str(v or "") for k, v in (cfg.captions.neutral_terms or {}).items()}


def _value(record: dict[str, Any], path: str) -> Any:
    """A field from a nested record, or from a flat one keyed by the dotted path."""
    value = get_field(record, path)
    return record.get(path) if value is None else value


def neutralise(fields: dict[str, Any], cfg: Config) -> tuple[dict[str, Any], list[str]]:
    """Replace uncertainty markers (``captions.uncertain_terms``, whole value or whole word/phrase) with the
    field's neutral term (``captions.neutral_terms``; missing = ""). Returns a new dict and its
    ``uncertain:<field>`` flags. ``final_caption`` (a sentence) is only replaced when it is a marker as a whole.
    """
    out = copy.deepcopy(fields)
    terms, neutral = uncertain_terms(cfg), _neutral_terms(cfg)
    flags = []
    for path in CAPTION_PATHS:
        value = get_field(out, path)
        if is_uncertain(value, terms, whole_only=path == "final_caption"):
            set_field(out, path, neutral.get(path, ""))
            flags.append(f"uncertain:{path}")
    return out, flags


_LEAF = re.compile(r'"(\w+)"\s*:\s*"((?:[^"\\]|\\.)*)"')
_LEAF_PATHS = {path.rsplit(".", 1)[-1]: path for path in CAPTION_PATHS}


def field_confidence(generation: Any) -> dict[str, float]:
    """Field path → how sure the model was of its value: the lowest probability of a token of a closed-
    vocabulary value (the token where it chose), the geometric mean over a free-text value's tokens.
    `generation` is a :class:`castlab.models.captioner.Generation` (text + token probabilities)."""
    out: dict[str, float] = {}
    for match in _LEAF.finditer(generation.text):
        path = _LEAF_PATHS.get(match.group(1))
        probs = [max(p, 1e-12) for p in generation.span_probs(match.start(2), match.end(2))]
        if path is None or not probs:
            continue
        if path in CHOICE_FIELDS:
            out[path] = round(min(probs), 4)
        else:
            out[path] = round(math.exp(sum(math.log(p) for p in probs) / len(probs)), 4)
    return out


def _threshold(cfg: Config, key: str) -> float | None:
    """``captions.<key>``, or the profile captioner's own ``<key>`` when it has one (None = off)."""
    captioner = cfg.model("captioner")
    value = getattr(captioner, key) if key in captioner.model_fields_set else getattr(cfg.captions, key)
    return None if value is None else float(value)


def confidence_thresholds(cfg: Config) -> tuple[float | None, float | None]:
    """(closed-vocabulary, free-text) minimum confidences (None = off)."""
    return _threshold(cfg, "min_choice_confidence"), _threshold(cfg, "min_text_confidence")


def neutralise_unsure(fields: dict[str, Any], confidence: dict[str, float], cfg: Config
                      ) -> tuple[dict[str, Any], list[str]]:
    """Replace the fields the model was unsure of (confidence below :func:`confidence_thresholds`) with their
    neutral terms, as :func:`neutralise` does for "unknown"-like answers; returns a new dict and the
    ``uncertain:<field>`` flags. ``final_caption`` is never replaced (it is not part of the caption)."""
    out = copy.deepcopy(fields)
    choice_min, text_min = confidence_thresholds(cfg)
    neutral = _neutral_terms(cfg)
    flags = []
    for path, value in sorted(confidence.items()):
        limit = choice_min if path in CHOICE_FIELDS else text_min
        if path == "final_caption" or limit is None or value >= limit:
            continue
        set_field(out, path, neutral.get(path, ""))
        flags.append(f"uncertain:{path}")
    return out, flags


def _counted(value: Any, path: str, neutral: dict[str, str], terms: list[str]) -> str:
    """The normalised value, or "" when it is empty, neutral or uncertain (not counted, not compared)."""
    norm = norm_value(value)
    if not norm or norm == norm_value(neutral.get(path, "")) or is_uncertain(value, terms):
        return ""
    return norm


def identity_majorities(
    records: Iterable[dict[str, Any]],
    paths: Sequence[str],
    min_count: int = 3,
    cfg: Config | None = None,
) -> dict[str, dict[str, str]]:
    """Identity → {field path: majority value} over caption records (fields + ``character``).

    Records are grouped by normalised name (:func:`castlab.identity.review.normalise`) and keyed by the
    first spelling seen (so ``majorities.get(identity)`` works); values are normalised
    (:func:`castlab.captions.text.norm_value`). A value counts only when it is not empty, neutral or
    uncertain (neutral/uncertain terms from `cfg`, else just ``unknown``); the majority is the most common
    value (ties: alphabetical first) and is kept only when at least `min_count` captions carry it.
    """
    neutral = _neutral_terms(cfg) if cfg is not None else {}
    terms = uncertain_terms(cfg) if cfg is not None else ["unknown"]
    counts: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    spelling: dict[str, str] = {}
    for record in records:
        character = str(record.get("character") or "")
        name = normalise(character)
        if not name:
            continue
        spelling.setdefault(name, character)
        for path in paths:
            value = _counted(_value(record, path), path, neutral, terms)
            if value:
                counts[name][path][value] += 1
    out: dict[str, dict[str, str]] = {}
    for name, by_path in sorted(counts.items()):
        best = {}
        for path, counter in by_path.items():
            value, n = min(counter.items(), key=lambda kv: (-kv[1], kv[0]))
            if n >= min_count:
                best[path] = value
        if best:
            out[spelling[name]] = best
    return out


def min_clip_score(cfg: Config) -> float | None:
    """The low_clip_score threshold: the captioner model's ``min_clip_score`` when it has the key (the tiny
    profile sets None), else ``captions.min_clip_score``; None = off."""
    return _threshold(cfg, "min_clip_score")


def _names_other_identity(texts: list[str], identity: str, known_identities: Sequence[str]) -> bool:
    own = normalise(identity)
    others = {normalise(n) for n in known_identities if normalise(n) and normalise(n) != own}
    for text in texts:
        if own:  # "Bo Peep" must not match another identity "Bo"
            text = term_pattern(own).sub(" ", text)
        if any(has_term(text, name) for name in others):
            return True
    return False


def qc_flags(
    record: dict[str, Any],
    *,
    identity: str | None,
    known_identities: Sequence[str],
    usual: dict[str, str] | None,
    clip_score: float | None,
    caption: AssembledCaption,
    cfg: Config,
) -> list[str]:
    """Sorted, de-duplicated QC flags of one caption record (fields + ``character``).

    `identity`: the instance's current reviewed identity; `known_identities`: all identity names (default
    names like ``character_3`` included); `usual`: the identity's majorities (:func:`identity_majorities`);
    `clip_score`: open_clip image–text cosine (None = not scored). ``uncertain:<field>`` flags are not
    computed here: they come from :func:`neutralise`, run before, and the caller adds them.
    """
    flags: list[str] = []
    character = str(record.get("character") or "")
    texts = [v for v in (_value(record, p) for p in TEXT_FIELDS) if isinstance(v, str)]
    if identity is not None and character.strip() and normalise(character) != normalise(identity):
        flags.append("character_mismatch")
    if _names_other_identity(texts, identity if identity is not None else character, known_identities):
        flags.append("character_mismatch")
    neutral, terms = _neutral_terms(cfg), uncertain_terms(cfg)
    for path in cfg.captions.invariant_fields or []:
        value = _counted(_value(record, path), path, neutral, terms)
        expected = norm_value((usual or {}).get(path))
        if value and expected and value != expected:
            flags.append(f"invariant_disagrees:{path}")
    threshold = min_clip_score(cfg)
    if threshold is not None and clip_score is not None and clip_score < threshold:
        flags.append("low_clip_score")
    for term in cfg.captions.hallucination_terms or []:
        if any(has_term(text, str(term)) for text in (caption.text, *texts)):
            flags.append(f"hallucination_term:{str(term).strip()}")
    if caption.short:
        flags.append("too_short")
    if caption.long:
        flags.append("too_long")
    return sorted(set(flags))


def flag_reason(flag: str) -> str:
    """``"hallucination_term:logo"`` → ``"hallucination_term"``."""
    return flag.split(":", 1)[0]


def review_priority(flags: Sequence[str]) -> int:
    """Sort key, higher = review first: the worst reason's tier (character_mismatch 3; invariant_disagrees,
    hallucination_term, low_clip_score 2; uncertain, too_short, too_long and others 1) × 100 plus the
    number of flags (capped at 99); 0 for no flags."""
    if not flags:
        return 0
    tier = max(_TIERS.get(flag_reason(f), 1) for f in flags)
    return tier * 100 + min(len(set(flags)), 99)
