"""What the VLM is asked of a whole frame, for the datasets that are not about a character: a background's scene
(location, indoor/outdoor, time of day, weather, mood, light, camera), and a frame's rendering style (materials,
shading, light, palette) for the style dataset, and its light (setting, time of day, weather, key/rim/fill) for the
lighting dataset. Closed vocabularies are the Label Studio Choices a reviewer
corrects; free text is short phrases, as in :mod:`castlab.captions.schema`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from castlab.captions.schema import ANGLES, FILL_LIGHTS, KEY_LIGHTS, RIM_LIGHTS, _phrase, _Strict

SETTINGS = ("indoor", "outdoor", "unknown")
TIMES_OF_DAY = ("dawn", "day", "golden hour", "dusk", "night", "unknown")
WEATHER = ("clear", "cloudy", "overcast", "rain", "snow", "fog", "storm", "not visible", "unknown")
SCENE_SHOTS = ("establishing shot", "wide shot", "medium shot", "close-up", "unknown")
SHADING = ("soft global illumination", "toon shading", "painterly", "flat shading", "photoreal", "unknown")

SCENE_CHOICES: dict[str, tuple[str, ...]] = {
    "setting": SETTINGS, "time_of_day": TIMES_OF_DAY, "weather": WEATHER, "light": KEY_LIGHTS,
    "camera.shot_size": SCENE_SHOTS, "camera.angle": ANGLES,
}  # fmt: skip
STYLE_CHOICES: dict[str, tuple[str, ...]] = {"shading": SHADING, "light": KEY_LIGHTS}
LIGHTING_CHOICES: dict[str, tuple[str, ...]] = {
    "setting": SETTINGS, "time_of_day": TIMES_OF_DAY, "weather": WEATHER, "key": KEY_LIGHTS, "rim": RIM_LIGHTS,
    "fill": FILL_LIGHTS,
}  # fmt: skip


class SceneCamera(_Strict):
    shot_size: Literal[SCENE_SHOTS]  # type: ignore[valid-type]
    angle: Literal[ANGLES]  # type: ignore[valid-type]


class SceneFields(_Strict):
    """A background (no character in it): where, when, what it feels like."""

    location: str = _phrase("the place, e.g. 'cluttered workshop', 'forest clearing'")
    setting: Literal[SETTINGS]  # type: ignore[valid-type]
    time_of_day: Literal[TIMES_OF_DAY]  # type: ignore[valid-type]
    weather: Literal[WEATHER]  # type: ignore[valid-type]
    mood: str = _phrase("the mood, e.g. 'cozy', 'eerie', 'cheerful'")
    light: Literal[KEY_LIGHTS]  # type: ignore[valid-type]
    camera: SceneCamera
    final_caption: str = Field(..., min_length=1, max_length=240, description="one sentence describing the scene")


class StyleFields(_Strict):
    """How a frame is rendered, not what it shows."""

    materials: str = _phrase("surface materials, e.g. 'soft subsurface skin, glossy plastic'")
    shading: Literal[SHADING]  # type: ignore[valid-type]
    light: Literal[KEY_LIGHTS]  # type: ignore[valid-type]
    palette: str = _phrase("the colour palette, e.g. 'warm pastel oranges and teals'")
    final_caption: str = Field(..., min_length=1, max_length=240,
                               description="one sentence describing the rendering style")


class LightingFields(_Strict):
    """The light of a frame: where and when, and the key, rim and fill lights."""

    setting: Literal[SETTINGS]  # type: ignore[valid-type]
    time_of_day: Literal[TIMES_OF_DAY]  # type: ignore[valid-type]
    weather: Literal[WEATHER]  # type: ignore[valid-type]
    key: Literal[KEY_LIGHTS]  # type: ignore[valid-type]
    rim: Literal[RIM_LIGHTS]  # type: ignore[valid-type]
    fill: Literal[FILL_LIGHTS]  # type: ignore[valid-type]
    final_caption: str = Field(..., min_length=1, max_length=240, description="one sentence describing the light")
