"""Decode the smart-tool prompts Label Studio sends with an interactive masks request (its ``context``).

Label Studio 1.23's frontend sends, for a smart KeyPointLabels/RectangleLabels region, the serialized
results of all *connected* smart regions: same region type, same label, same image
(``getConnectedDynamicRegions``). Keypoints carry ``is_positive`` (false when drawn with Alt); values are
percentages of the image size.

Prompt groups (one brush region each):

1. prompts are grouped by (label, image);
2. inside a group every rectangle is one object, together with the keypoints that fall inside it
   (the smallest containing rectangle wins);
3. the keypoints outside every rectangle form one more object when at least one of them is positive.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ml_backend.errors import BackendError

PROMPT_TYPES = ("keypointlabels", "rectanglelabels")


@dataclass
class PromptGroup:
    """One object to segment: points (x, y) in pixels with labels 1/0 and/or a box (x0, y0, x1, y1)."""

    label: str | None
    points: list[tuple[float, float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None

    @property
    def usable(self) -> bool:
        return self.box is not None or any(self.point_labels)

    def key(self) -> str:
        """Stable digest of the prompt (gives the predicted region a reproducible id)."""
        payload = json.dumps([self.label, self.points, self.point_labels, self.box], sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()


def _number(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise BackendError(400, f"context: {what} must be a number, got {value!r:.40}") from exc
    if not math.isfinite(number):
        raise BackendError(400, f"context: {what} must be finite, got {value!r:.40}")
    return number


def _label(kind: str, value: dict[str, Any]) -> str | None:
    names = value.get(kind) or value.get("labels") or []
    return str(names[0]) if isinstance(names, list) and names else None


def _clip(v: float, hi: int) -> float:
    return min(max(v, 0.0), float(hi))


def prompt_results(context: Any) -> list[Any] | None:
    """None for a plain prediction (no context, or one without ``result``); the context's result list for an
    interactive one (``[]`` when the reviewer removed the last smart region)."""
    if context is None or (isinstance(context, dict) and "result" not in context):
        return None
    if not isinstance(context, dict) or not isinstance(context["result"], list):
        raise BackendError(400, 'context: expected {"result": [...]}')
    return context["result"]


def parse_context(
    results: list[Any], width: int, height: int, image_name: str | None = None
) -> list[PromptGroup]:
    """Prompt groups (see module docstring) from a context's ``result`` list, in pixels of a
    `width` x `height` image. Results of other types, or for another image than `image_name`, are
    ignored. Raises :class:`BackendError` (400) when no group has a positive keypoint or a rectangle."""
    by_label: dict[str | None, tuple[list[PromptGroup], PromptGroup]] = {}
    for n, item in enumerate(results):
        if not isinstance(item, dict):
            raise BackendError(400, f"context.result[{n}] must be an object")
        kind = item.get("type")
        if kind not in PROMPT_TYPES:
            continue
        if image_name and item.get("to_name") and item.get("to_name") != image_name:
            continue
        value = item.get("value")
        if not isinstance(value, dict):
            raise BackendError(400, f"context.result[{n}].value must be an object")
        label = _label(str(kind), value)
        boxes, loose = by_label.setdefault(label, ([], PromptGroup(label)))
        x = _clip(_number(value.get("x"), f"result[{n}].value.x") * width / 100.0, width)
        y = _clip(_number(value.get("y"), f"result[{n}].value.y") * height / 100.0, height)
        if kind == "rectanglelabels":
            w = _number(value.get("width"), f"result[{n}].value.width") * width / 100.0
            h = _number(value.get("height"), f"result[{n}].value.height") * height / 100.0
            box = (x, y, _clip(x + w, width), _clip(y + h, height))
            if box[2] <= box[0] or box[3] <= box[1]:
                raise BackendError(400, f"context.result[{n}]: rectangle has no area")
            boxes.append(PromptGroup(label, box=box))
        else:
            loose.points.append((x, y))
            loose.point_labels.append(0 if item.get("is_positive") is False else 1)
    groups: list[PromptGroup] = []
    for boxes, loose in by_label.values():
        rest = PromptGroup(loose.label)
        for point, lbl in zip(loose.points, loose.point_labels, strict=True):
            inside = [
                g
                for g in boxes
                if g.box and g.box[0] <= point[0] <= g.box[2] and g.box[1] <= point[1] <= g.box[3]
            ]
            target = (
                min(inside, key=lambda g: (g.box[2] - g.box[0]) * (g.box[3] - g.box[1])) if inside else rest
            )
            target.points.append(point)
            target.point_labels.append(lbl)
        groups.extend(boxes)
        if rest.usable:
            groups.append(rest)
    if not groups:
        raise BackendError(
            400,
            "context: no prompts (needs a positive smart keypoint or a smart rectangle "
            f"among {len(results)} result(s))",
        )
    return groups
