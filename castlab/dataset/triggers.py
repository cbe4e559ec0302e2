"""One trigger per character: the token a LoRA learns the character under.

``dataset.triggers`` (name → token) wins; otherwise a stable token is derived from the name: a made-up
consonant-vowel word picked by a hash of the name, kept only when the real CLIP tokenizer splits it into one or
two tokens and it is not a word of CLIP's vocabulary (so not a common word the base model already knows).
The class word is ``dataset.class_words[name]``, else ``dataset.class_word``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from castlab.config import Config
from castlab.identity.review import normalise
from castlab.models.tokenizers import clip_vocab_and_merges, count_clip_tokens

_CONSONANTS = "bdfgkmnprstvz"
_VOWELS = "aeiou"
_ATTEMPTS = 512


@dataclass(frozen=True)
class Trigger:
    token: str
    class_word: str
    source: str  # "config" (dataset.triggers) | "derived"

    @property
    def class_tokens(self) -> str:
        return f"{self.token} {self.class_word}".strip()


@lru_cache(maxsize=1)
def _vocabulary_words() -> frozenset[str]:
    vocab, _ = clip_vocab_and_merges()
    return frozenset(t[: -len("</w>")] for t in vocab if t.endswith("</w>"))


def _candidate(name: str, attempt: int) -> str:
    digest = hashlib.sha256(f"{normalise(name)}#{attempt}".encode()).digest()
    syllables = 2 + digest[0] % 2
    letters = []
    for i in range(syllables):
        letters.append(_CONSONANTS[digest[1 + 2 * i] % len(_CONSONANTS)])
        letters.append(_VOWELS[digest[2 + 2 * i] % len(_VOWELS)])
    return "".join(letters) + _CONSONANTS[digest[9] % len(_CONSONANTS)]


def is_rare_token(token: str) -> bool:
    """One or two CLIP tokens (BOS/EOS aside) and not a whole word of CLIP's vocabulary."""
    return 1 <= count_clip_tokens(token) - 2 <= 2 and token.lower() not in _vocabulary_words()


def derive_trigger(name: str) -> str:
    """The stable made-up trigger of `name` (same name → same token, on every machine)."""
    for attempt in range(_ATTEMPTS):
        token = _candidate(name, attempt)
        if is_rare_token(token):
            return token
    raise RuntimeError(f"no rare trigger token found for {name!r} in {_ATTEMPTS} attempts")


def _lookup(mapping: dict[str, str], name: str) -> str | None:
    wanted = normalise(name)
    return next((str(v) for k, v in mapping.items() if normalise(k) == wanted), None)


def character_trigger(name: str, cfg: Config) -> Trigger:
    """The trigger and class word of the character `name` (names compared as identity review compares them)."""
    class_word = _lookup(dict(cfg.dataset.class_words), name) or str(cfg.dataset.class_word)
    token = _lookup(dict(cfg.dataset.triggers), name)
    if token:
        return Trigger(token.strip(), class_word, "config")
    return Trigger(derive_trigger(name), class_word, "derived")
