"""Generation parameters inside the PNG, as AUTOMATIC1111's web UI writes them (a ``parameters`` text chunk), so
common tools (A1111's PNG Info, ComfyUI's loaders, image browsers) show how an image was made::

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 30, Sampler: Euler a, CFG scale: 6.5, Seed: 42, Size: 768x512, Model hash: 1a2b3c4d5e, Model: sdxl,
    Lora hashes: "castlab_bo: 0a1b2c3d4e5f, castlab_style: 5f4e3d2c1b0a", Version: castlab

(on one line: the settings are the last line of the text).

:func:`read_parameters` parses the same text back (values as strings; quoted values unquoted).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from castlab.workspace import atomic_path

CHUNK = "parameters"
_PAIR = re.compile(r'\s*([\w ]+?):\s*("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)')


def _quote(value: Any) -> str:
    text = str(value)
    return '"' + text.replace('"', '\\"') + '"' if ("," in text or ":" in text or '"' in text) else text


def parameters_text(prompt: str, negative: str, settings: dict[str, Any]) -> str:
    """The A1111 ``parameters`` text: prompt, negative prompt, then ``Key: value`` pairs in `settings`' order."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in settings.items() if value not in (None, "")))
    return "\n".join(lines)


def save_with_parameters(image: Image.Image, path: Path, text: str) -> Path:
    """Write `image` as a PNG at `path` (atomically) with `text` in its ``parameters`` chunk."""
    info = PngInfo()
    info.add_text(CHUNK, text)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def parse_parameters(text: str) -> dict[str, str]:
    """``{"prompt", "negative_prompt", <Key>: value, ...}`` from an A1111 ``parameters`` text."""
    lines = text.strip("\n").split("\n")
    settings_line = lines[-1] if len(lines) > 1 and _PAIR.match(lines[-1]) and "Steps:" in lines[-1] else ""
    body = lines[:-1] if settings_line else lines
    negative = [i for i, line in enumerate(body) if line.startswith("Negative prompt:")]
    cut = negative[0] if negative else len(body)
    out = {"prompt": "\n".join(body[:cut]).strip(),
           "negative_prompt": "\n".join(body[cut:]).removeprefix("Negative prompt:").strip()}
    for key, value in _PAIR.findall(settings_line):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"')
        out[key.strip()] = value
    return out


def read_parameters(path: Path) -> dict[str, str]:
    """The parsed ``parameters`` chunk of a PNG; {} when it has none."""
    with Image.open(path) as image:
        text = image.info.get(CHUNK)
    return parse_parameters(text) if text else {}
