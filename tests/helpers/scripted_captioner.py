"""A scripted stand-in for the VLM captioner (unit tests only): its answer depends on the crop's colour."""

from __future__ import annotations

import json

import numpy as np


def fields(**over) -> dict:
    base = {
        "outfit": "red knitted scarf", "materials": {"skin": "soft grey fur", "cloth": "knitted wool",
                                                     "hair": "none"},
        "lighting": {"key": "warm key light", "rim": "cool rim light", "fill": "soft fill light"},
        "camera": {"shot_size": "medium shot", "angle": "eye level"}, "view": "three-quarter view",
        "expression": "smiling", "action": "waving at the camera", "background": "a sunny meadow",
        "final_caption": "A grey rabbit in a red scarf waves in a meadow.",
    }  # fmt: skip
    for key, value in over.items():
        base[key] = value
    return base


class ScriptedCaptioner:
    """Answers by the crop's dominant colour: red = a good caption, blue = unsure view + a logo,
    green = output cut off mid-JSON. Records the batches it was given."""

    model_version = "scripted-vlm"
    profile = "tiny"

    def __init__(self, unsure: dict[str, float] | None = None) -> None:
        self.batches: list[int] = []
        self.images_per_item: list[int] = []
        self.unsure = unsure or {}  # a value's text -> the probability the "model" gave its tokens

    def generate_scored(self, items, prompt, schema, max_new_tokens, batch_size=4, progress=False):
        """Each text as pieces: certain (1.0) except the values listed in ``unsure``."""
        from castlab.models.captioner import Generation

        out = []
        for text in self.generate(items, prompt, schema, max_new_tokens, batch_size, progress):
            pieces, rest = [], text
            for value, prob in sorted(self.unsure.items(), key=lambda kv: text.find(f'"{kv[0]}"')):
                head, found, tail = rest.partition(f'"{value}"')
                if found:
                    pieces += [(head + '"', 1.0), (value, prob)]
                    rest = '"' + tail
            out.append(Generation(text, [*pieces, (rest, 1.0)]))
        return out

    def generate(self, items, prompt, schema, max_new_tokens, batch_size=4, progress=False):
        for start in range(0, len(items), batch_size):
            self.batches.append(len(items[start : start + batch_size]))
        self.images_per_item += [len(images) for images in items]
        out = []
        for images in items:
            if schema.__name__ == "ClusterDescription":
                out.append(json.dumps({"outfit": "a red scarf", "look": "grey fur", "lighting": "warm",
                                       "description": "a grey rabbit"}))
                continue
            if schema.__name__ == "SequenceSummary":
                out.append(json.dumps({"motion": "hops from left to right"}))
                continue
            r, g, b = np.asarray(images[0].convert("RGB")).reshape(-1, 3).mean(axis=0)
            if g > max(r, b):
                out.append('{"outfit": "red sca')
            elif b > r:
                out.append(json.dumps(fields(view="unknown", background="a wall with a logo")))
            else:
                out.append(json.dumps(fields()))
        return out


class FixedScores:
    def clip_t(self, images, texts):
        return [0.3] * len(images)
