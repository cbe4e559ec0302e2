"""Scene and style schemas: the tiny VLM decodes under them (constrained) into valid fields."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from castlab.captions.scene_schema import SCENE_CHOICES, STYLE_CHOICES, SceneFields, StyleFields
from castlab.captions.schema import SchemaError, get_field, parse_fields


def test_closed_fields_are_the_schema_enums():
    for model, choices in ((SceneFields, SCENE_CHOICES), (StyleFields, STYLE_CHOICES)):
        schema = json.dumps(model.model_json_schema())
        for values in choices.values():
            assert all(json.dumps(v) in schema for v in values)
    with pytest.raises(SchemaError, match="setting"):
        parse_fields(json.dumps({"location": "a barn", "setting": "underwater"}), SceneFields)


def test_the_tiny_vlm_fills_scene_and_style_fields():
    from castlab.config import load_config
    from castlab.models.captioner import load_captioner

    cfg = load_config(profile="tiny")
    captioner = load_captioner(cfg)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    for model, choices in ((SceneFields, SCENE_CHOICES), (StyleFields, STYLE_CHOICES)):
        text = captioner.generate([[image]], "Describe the scene.", model, 320)[0]
        fields = parse_fields(text, model)  # constrained decoding: valid JSON of the schema
        assert all(get_field(fields, path) in values for path, values in choices.items())
