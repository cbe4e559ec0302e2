"""The dataset types beyond characters, and what sets each apart: which rows it starts from, what the VLM is
asked (its schema), which fields a reviewer corrects as Label Studio Choices and which make up its captions.

The type's settings (trigger, class word, size targets, balance label, review project) are ``types.<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from castlab.captions.scene_schema import (
    LIGHTING_CHOICES,
    SCENE_CHOICES,
    STYLE_CHOICES,
    LightingFields,
    SceneFields,
    StyleFields,
)
from castlab.config import PROJECT_ROOT, Config
from castlab.errors import ConfigError
from castlab.pose.geometry import CATEGORIES
from castlab.pose.geometry import VIEWS as POSE_VIEWS
from castlab.settings import TypeDatasetSettings

EXPRESSIONS = ("happy", "sad", "surprised", "angry", "neutral", "other")  # the review Choices (expression.labels)
MEASURED_CHOICES: dict[str, tuple[str, ...]] = {
    "luma_key": ("low-key", "mid-key", "high-key"), "warmth": ("warm", "neutral", "cool", "unknown"),
    "direction": ("left", "right", "top", "bottom", "frontal"),  # castlab.lighting.features
    "category": CATEGORIES, "view": POSE_VIEWS,  # castlab.pose.geometry
    "expression": EXPRESSIONS,  # castlab.expression.labels
}


@dataclass(frozen=True)
class DatasetType:
    name: str
    schema: type[BaseModel] | None  # what the VLM fills for each image (None: the VLM is not asked)
    choices: dict[str, tuple[str, ...]]  # schema field path → closed vocabulary (reviewed as Choices)
    caption_fields: tuple[str, ...]  # field or label paths, in caption order after "<trigger> <class>, <medium>"
    measured: tuple[str, ...] = ()  # labels measured from the pixels (not asked of the VLM), reviewed as Choices
    rows: str = "frame"  # frame: one candidate per kept frame | instance: per reviewed character instance
    keypoints: bool = False  # reviewed as keypoints on the image too (pose)

    @property
    def reviewed(self) -> dict[str, tuple[str, ...]]:
        """Every label a reviewer corrects (a Choices control each): the closed fields, then the measured."""
        return {**self.choices, **{m: MEASURED_CHOICES[m] for m in self.measured}}

    @property
    def label_config(self) -> str:
        return (PROJECT_ROOT / "label_configs" / f"{self.name}.xml").read_text(encoding="utf-8")

    def settings(self, cfg: Config) -> TypeDatasetSettings:
        return getattr(cfg.types, self.name)


TYPES: dict[str, DatasetType] = {
    "background": DatasetType(
        "background", SceneFields, SCENE_CHOICES,
        ("location", "setting", "time_of_day", "weather", "mood", "light", "camera.shot_size", "camera.angle")),
    "style": DatasetType("style", StyleFields, STYLE_CHOICES, ("materials", "shading", "light", "palette")),
    "lighting": DatasetType(
        "lighting", LightingFields, LIGHTING_CHOICES,
        ("time_of_day", "weather", "setting", "luma_key", "warmth", "direction", "key", "rim", "fill"),
        measured=("luma_key", "warmth", "direction")),
    "pose": DatasetType("pose", None, {}, ("category", "view"), measured=("category", "view"), rows="instance",
                        keypoints=True),
    "expression": DatasetType("expression", None, {}, ("expression",), measured=("expression",), rows="instance"),
}


def dataset_type(name: str) -> DatasetType:
    """The type called `name`; ConfigError listing the known ones."""
    if name not in TYPES:
        raise ConfigError(f"unknown dataset type {name!r}; known: {', '.join(['character', *TYPES])}")
    return TYPES[name]


def control_name(path: str) -> str:
    """The Label Studio control of a field path (names cannot hold dots)."""
    return path.replace(".", "_")
