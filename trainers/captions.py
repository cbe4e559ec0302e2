"""Per-step caption processing with kohya sd-scripts' subset options.

Follows sd-scripts ``library/train_util.py`` ``BaseDataset.process_caption`` (prefix/suffix, caption dropout,
wildcards, keep_tokens / keep_tokens_separator, token warmup, shuffle, tag dropout, secondary separator) and the
subset defaults of ``add_dataset_arguments`` / ``library/config_util.py``. Randomness comes from the caller's
``random.Random`` and is drawn in sd-scripts' order.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

_WILDCARD = re.compile(r"\{([^}]+)\}")


def _lookup(layers: tuple[Mapping, ...], key: str, default: object) -> object:
    for layer in layers:
        value = layer.get(key)
        if value is not None:
            return value
    return default


@dataclass(frozen=True)
class CaptionSettings:
    """A subset's caption options (kohya key names; sd-scripts' defaults)."""

    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: str | None = None
    enable_wildcard: bool = False
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    token_warmup_min: int = 1
    token_warmup_step: float = 0

    def __post_init__(self) -> None:
        for key in ("shuffle_caption", "enable_wildcard"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false; got {getattr(self, key)!r}")
        for key in ("caption_separator", "keep_tokens_separator"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"{key} must be a string; got {getattr(self, key)!r}")
        if not self.caption_separator:
            raise ValueError("caption_separator must not be empty")
        for key in ("secondary_separator", "caption_prefix", "caption_suffix"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise ValueError(f"{key} must be a string; got {getattr(self, key)!r}")
        for key in ("keep_tokens", "caption_dropout_every_n_epochs", "token_warmup_min"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be a non-negative integer; got {value!r}")
        for key in ("caption_dropout_rate", "caption_tag_dropout_rate"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{key} must be a number in [0, 1]; got {value!r}")
        step = self.token_warmup_step
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step < 0:
            raise ValueError(f"token_warmup_step must be a non-negative number; got {step!r}")

    @classmethod
    def from_subset(cls, subset: Mapping, *fallbacks: Mapping) -> CaptionSettings:
        """Each option from ``subset``, else the first of ``fallbacks`` that sets it (sd-scripts' order: the
        dataset, ``[general]``, the flattened training config), else sd-scripts' default."""
        layers = (subset, *fallbacks)
        defaults = cls()
        values = {name: _lookup(layers, name, getattr(defaults, name)) for name in cls.__dataclass_fields__}
        return cls(**values)


def caption_variants_are_static(settings: CaptionSettings) -> bool:
    """True when ``process_caption`` is deterministic and epoch/step independent, so text-encoder outputs of the
    processed caption can be cached once (stricter than sd-scripts' ``is_text_encoder_output_cacheable``, which
    ignores wildcards and ``caption_dropout_every_n_epochs``)."""
    s = settings
    return not (s.shuffle_caption or s.enable_wildcard or s.caption_dropout_rate > 0
                or s.caption_dropout_every_n_epochs > 0 or s.caption_tag_dropout_rate > 0 or s.token_warmup_step > 0)


def _expand_wildcards(caption: str, rng: random.Random) -> str:
    """One random line of a multi-line caption, then each ``{a|b|c}`` → one choice; ``{{``/``}}`` are literal."""
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    open_mark, close_mark = "⦅", "⦆"
    while open_mark in caption or close_mark in caption:
        open_mark += "⦅"
        close_mark += "⦆"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)
    caption = _WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def _split_tokens(text: str, separator: str) -> list[str]:
    return [t.strip() for t in text.split(separator) if t.strip()]


def process_caption(
    caption: str,
    settings: CaptionSettings,
    rng: random.Random,
    epoch: int,
    *,
    step: int = 0,
    max_train_steps: int = 0,
) -> str:
    """The caption sd-scripts would train on at ``epoch`` (1-based, like sd-scripts' ``current_epoch``) and
    global ``step`` (only read by token warmup; ``max_train_steps`` is needed when token_warmup_step < 1).

    Shuffled / dropped-out captions are re-joined with ``", "`` whatever the separator, as sd-scripts does.
    """
    s = settings
    if s.caption_prefix:
        caption = s.caption_prefix + " " + caption
    if s.caption_suffix:
        caption = caption + " " + s.caption_suffix

    dropped = s.caption_dropout_rate > 0 and rng.random() < s.caption_dropout_rate
    if dropped or (s.caption_dropout_every_n_epochs > 0 and epoch % s.caption_dropout_every_n_epochs == 0):
        return ""

    caption = _expand_wildcards(caption, rng) if s.enable_wildcard else caption.split("\n")[0]

    if s.shuffle_caption or s.token_warmup_step > 0 or s.caption_tag_dropout_rate > 0:
        sep, keep_sep = s.caption_separator, s.keep_tokens_separator
        fixed: list[str] = []
        fixed_suffix: list[str] = []
        if keep_sep and keep_sep in caption:
            head, flex_text = caption.split(keep_sep, 1)
            if keep_sep in flex_text:
                flex_text, tail = flex_text.split(keep_sep, 1)
                fixed_suffix = _split_tokens(tail, sep)
            fixed, flex = _split_tokens(head, sep), _split_tokens(flex_text, sep)
        else:  # empty tokens are kept here, as in sd-scripts
            flex = [t.strip() for t in caption.strip().split(sep)]
            if s.keep_tokens > 0:
                fixed, flex = flex[: s.keep_tokens], flex[s.keep_tokens:]

        warmup = s.token_warmup_step
        if 0 < warmup < 1:
            if max_train_steps <= 0:
                raise ValueError("token_warmup_step < 1 is a fraction of max_train_steps; pass max_train_steps")
            warmup = math.floor(warmup * max_train_steps)
        if warmup and step < warmup:
            flex = flex[: math.floor(step * ((len(flex) - s.token_warmup_min) / warmup)) + s.token_warmup_min]

        if s.shuffle_caption:
            rng.shuffle(flex)
        if s.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= s.caption_tag_dropout_rate]
        caption = ", ".join(fixed + flex + fixed_suffix)

    if s.secondary_separator:
        caption = caption.replace(s.secondary_separator, s.caption_separator)
    return caption
