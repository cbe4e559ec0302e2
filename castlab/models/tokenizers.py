"""The real CLIP BPE tokenizer (ids identical to ``openai/clip-vit-large-patch14``), rebuilt offline.

open_clip ships OpenAI's BPE merges (``bpe_simple_vocab_16e6.txt.gz``); the vocabulary is derived from
them exactly as OpenAI's ``SimpleTokenizer`` does. The built ``vocab.json``/``merges.txt`` are cached
under ``<project root>/.cache/clip-tokenizer`` (or a temporary folder when that is not writable).
transformers v5's ``CLIPTokenizer(vocab_file=...)`` silently ignores those arguments, so the tokenizer is
built with ``vocab=``/``merges=`` and read back with ``from_pretrained(folder)``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from castlab.models import cache_root
from castlab.workspace import folder_in_place

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

MODEL_MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_N_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte → printable unicode map."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def bpe_path() -> Path:
    """OpenAI's CLIP BPE merges bundled in the open_clip wheel (located without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open-clip-torch is not installed; it ships the CLIP BPE merges")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def clip_vocab_and_merges(path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (49408 entries) and merges, derived as OpenAI's tokenizer derives them."""
    lines = gzip.open(path or bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    units = list(_bytes_to_unicode().values())
    vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab)}, merges  # type: ignore[return-value]



def _build_files(folder: Path) -> None:
    vocab, merges = clip_vocab_and_merges()
    from transformers import CLIPTokenizer

    with folder_in_place(folder, "tokenizer.json") as tmp:
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (tmp / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
        )
        tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)
        tok.save_pretrained(str(tmp))


def tokenizer_dir() -> Path:
    """Folder holding the built tokenizer files (built on first use)."""
    digest = hashlib.sha1(bpe_path().read_bytes()).hexdigest()[:10]
    folder = cache_root("the CLIP tokenizer") / f"clip-tokenizer-{digest}"
    if not (folder / "tokenizer.json").is_file():
        _build_files(folder)
    return folder


@lru_cache(maxsize=1)
def _load() -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(tokenizer_dir()), model_max_length=MODEL_MAX_LENGTH)


def clip_tokenizer() -> CLIPTokenizer:
    """The CLIP tokenizer (a fresh copy; ids match ``openai/clip-vit-large-patch14``)."""
    import copy

    return copy.deepcopy(_load())


@lru_cache(maxsize=1)
def _shared() -> CLIPTokenizer:
    return _load()


def count_clip_tokens(text: str) -> int:
    """CLIP tokens of `text`, BOS and EOS included (the real CLIP BPE tokenizer)."""
    return len(_shared()(text, verbose=False).input_ids)
