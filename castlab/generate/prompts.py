"""Batch prompts: one line of a prompt file = a prompt and its options, in kohya sd-scripts' sample-prompt syntax
(``a knight --n blurry --w 768 --h 512 --d 42 --s 30 --l 6.5 --ss euler_a``): ``--n`` negative prompt, ``--w`` /
``--h`` size, ``--d`` seed, ``--s`` steps, ``--l`` guidance (CFG) scale, ``--ss`` sampler. Empty lines and lines
starting with ``#`` are skipped. A bad line is reported with its file and line number; the other lines go on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_OPTIONS = {  # option → (field, type)
    "n": ("negative_prompt", str), "w": ("width", int), "h": ("height", int), "d": ("seed", int),
    "s": ("steps", int), "l": ("guidance_scale", float), "ss": ("sampler", str),
}
_OPTION = re.compile(r"^(ss|[nwhdsl])(?:\s+(.*))?$", re.DOTALL)


@dataclass(frozen=True)
class PromptLine:
    """One prompt and the options it sets (the rest comes from the quality preset)."""

    prompt: str
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "<file>:<line>" (or "--prompt")


@dataclass(frozen=True)
class BadLine:
    source: str
    problem: str


def parse_line(line: str, source: str = "--prompt") -> PromptLine:
    """One line in sd-scripts' syntax; ValueError naming the problem for an unknown option or a bad value."""
    parts = line.strip().split(" --")
    prompt = parts[0].strip()
    if not prompt:
        raise ValueError("the prompt is empty")
    options: dict[str, Any] = {}
    for part in parts[1:]:
        match = _OPTION.match(part.strip())
        if match is None:
            raise ValueError(f"unknown option --{part.strip().split(' ')[0]} (known: "
                             f"{', '.join('--' + k for k in _OPTIONS)})")
        key, value = match.group(1), (match.group(2) or "").strip()
        name, kind = _OPTIONS[key]
        try:
            options[name] = kind(value)
        except ValueError:
            raise ValueError(f"--{key} needs a {kind.__name__}, got {value!r}") from None
        if name in ("width", "height", "steps") and options[name] < 1:
            raise ValueError(f"--{key} must be at least 1, got {value}")
    return PromptLine(prompt, options, source)


def read_prompt_file(path: Path) -> tuple[list[PromptLine], list[BadLine]]:
    """The prompts of a prompt file and its bad lines (each with ``<file>:<line>`` and the problem)."""
    lines, bad = [], []
    for number, text in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        source = f"{path}:{number}"
        try:
            lines.append(parse_line(text, source))
        except ValueError as exc:
            bad.append(BadLine(source, str(exc)))
    return lines, bad
