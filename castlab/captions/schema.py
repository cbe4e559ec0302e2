"""The structured caption a vision-language model fills in, and how its JSON is checked.

The captioner decodes under this schema (constrained decoding: the model cannot emit anything else), but
its output is still validated here: a generation cut off by ``max_new_tokens`` or a model that ignores
the constraint yields :class:`SchemaError`, recorded as the instance's caption outcome.

``character`` is never asked of the model: it is the reviewed identity, set by castlab
(:func:`caption_record`). Closed vocabularies (view, shot size, angle, lights) are the Label Studio
Choices the reviewer corrects; free-text fields are short phrases.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

VIEWS = ("front view", "three-quarter view", "side view", "back view", "unknown")
SHOT_SIZES = ("extreme close-up", "close-up", "medium close-up", "medium shot", "cowboy shot", "full shot",
              "wide shot", "unknown")
ANGLES = ("eye level", "low angle", "high angle", "overhead", "dutch angle", "unknown")
KEY_LIGHTS = ("soft key light", "hard key light", "warm key light", "cool key light", "unknown")
RIM_LIGHTS = ("warm rim light", "cool rim light", "bright rim light", "no rim light", "unknown")
FILL_LIGHTS = ("soft fill light", "warm fill light", "cool fill light", "low fill light", "unknown")

# field path → its closed vocabulary (the Label Studio Choices of the captions project use these names)
CHOICE_FIELDS: dict[str, tuple[str, ...]] = {
    "view": VIEWS, "camera.shot_size": SHOT_SIZES, "camera.angle": ANGLES,
    "lighting.key": KEY_LIGHTS, "lighting.rim": RIM_LIGHTS, "lighting.fill": FILL_LIGHTS,
}  # fmt: skip
TEXT_FIELDS = ("outfit", "materials.skin", "materials.cloth", "materials.hair", "expression", "action",
               "background", "final_caption")
_PHRASE = 60  # characters in a short free-text phrase
_SENTENCE = 240  # characters in final_caption


def _phrase(description: str, max_length: int = _PHRASE) -> Any:
    return Field(..., min_length=1, max_length=max_length, description=description)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Materials(_Strict):
    skin: str = _phrase("skin or fur material, e.g. 'soft subsurface skin', 'fluffy grey fur'")
    cloth: str = _phrase("clothing material, e.g. 'knitted wool', 'glossy plastic'")
    hair: str = _phrase("hair material, e.g. 'stylised clumped hair', 'none'")


class Lighting(_Strict):
    key: Literal[KEY_LIGHTS]  # type: ignore[valid-type]
    rim: Literal[RIM_LIGHTS]  # type: ignore[valid-type]
    fill: Literal[FILL_LIGHTS]  # type: ignore[valid-type]


class Camera(_Strict):
    shot_size: Literal[SHOT_SIZES]  # type: ignore[valid-type]
    angle: Literal[ANGLES]  # type: ignore[valid-type]


class CaptionFields(_Strict):
    """What the VLM is asked for (everything but ``character``)."""

    outfit: str = _phrase("what the character wears")
    materials: Materials
    lighting: Lighting
    camera: Camera
    view: Literal[VIEWS]  # type: ignore[valid-type]
    expression: str = _phrase("facial expression, e.g. 'smiling', 'surprised'")
    action: str = _phrase("what the character does, e.g. 'waving', 'running'")
    background: str = _phrase("the setting behind the character")
    final_caption: str = _phrase("one sentence describing the image", _SENTENCE)


class SequenceSummary(_Strict):
    """One shot's frames → one motion description."""

    motion: str = _phrase("how the character moves through the shot", _SENTENCE)


class ClusterDescription(_Strict):
    """3-5 instances of one identity → what reviewers see next to the identity."""

    outfit: str = _phrase("what the character usually wears")
    look: str = _phrase("body, face, skin or fur, hair: the character's look")
    lighting: str = _phrase("the typical lighting")
    description: str = _phrase("one short sentence describing the character", 160)


class SchemaError(ValueError):
    """Model output that is not valid JSON for the schema (the message says where)."""


def parse_fields(text: str, model: type[BaseModel] = CaptionFields) -> dict[str, Any]:
    """Validate generated JSON; :class:`SchemaError` names the first problem."""
    try:
        return model.model_validate_json(text).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "output"
        raise SchemaError(f"{where}: {first.get('msg')} ({exc.error_count()} problem(s))") from exc


def get_field(fields: dict[str, Any], path: str) -> Any:
    """``fields["lighting"]["key"]`` for ``"lighting.key"`` (None when missing)."""
    value: Any = fields
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def set_field(fields: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    target = fields
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


def caption_record(fields: dict[str, Any], character: str) -> dict[str, Any]:
    """The full structured caption: the model's fields plus ``character`` (the reviewed identity)."""
    return {"character": character, **json.loads(json.dumps(fields))}
