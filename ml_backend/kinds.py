"""Which project a Label Studio labeling config belongs to: one XML parse → the kind and the facts its predictor needs.

- ``masks`` (``label_configs/masks.xml``): a BrushLabels control on an Image (its smart KeyPointLabels /
  RectangleLabels tools send the prompts);
- ``identity`` (``label_configs/identity_instances.xml``): a Choices named ``identity``;
- ``captions`` (``label_configs/captions.xml``): a TextArea named ``caption`` on an Image.

Anything else, the cluster-level identity review included (it gets no suggestions), is a 400
:class:`BackendError` that names what is missing and which controls the config has.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import ClassVar, Literal

from ml_backend.errors import BackendError

Kind = Literal["masks", "identity", "captions"]
IDENTITY_CHOICES = "identity"  # the identity project's Choices
CAPTION_TEXTAREA = "caption"  # the captions project's TextArea


@dataclass(frozen=True)
class MasksConfig:
    """Where predicted masks go: a BrushLabels control, its Image and the task data key of that image."""

    kind: ClassVar[Kind] = "masks"
    brush_name: str
    image_name: str
    data_key: str
    labels: tuple[str, ...]

    def brush_label(self, prompt_label: str | None) -> str:
        """The brush label for a prompt's label: the same name when the brush has it, else its first label."""
        return prompt_label if prompt_label in self.labels else self.labels[0]


@dataclass(frozen=True)
class IdentityConfig:
    """Where an identity suggestion goes: the ``identity`` Choices and the Image it labels."""

    kind: ClassVar[Kind] = "identity"
    choices_name: str
    image_name: str


@dataclass(frozen=True)
class CaptionsConfig:
    """Where a caption goes: the ``caption`` TextArea, its Image and the task data key of that image."""

    kind: ClassVar[Kind] = "captions"
    textarea_name: str
    image_name: str
    data_key: str


ProjectConfig = MasksConfig | IdentityConfig | CaptionsConfig


def _data_key(image: ET.Element, source: str) -> str:
    value = image.get("value") or ""
    if not value.startswith("$") or len(value) < 2:
        raise BackendError(400, f"{source}: Image '{image.get('name')}' value must be $<data key>")
    return value[1:]


def _named(root: ET.Element, tag: str, name: str) -> ET.Element | None:
    return next((el for el in root.iter(tag) if el.get("name") == name), None)


def parse_label_config(xml: object, source: str = "label_config") -> ProjectConfig:
    """The project kind of a labeling config and its facts (see module docstring); BackendError 400 otherwise."""
    if not isinstance(xml, str):
        raise BackendError(400, f"{source}: expected the labeling config's XML text, got {type(xml).__name__}")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise BackendError(400, f"{source}: not valid XML ({exc})") from exc
    images = {el.get("name"): el for el in root.iter("Image") if el.get("name")}

    textarea = _named(root, "TextArea", CAPTION_TEXTAREA)
    if textarea is not None:
        image = images.get(textarea.get("toName") or "")
        if image is None:
            raise BackendError(400, f"{source}: TextArea '{CAPTION_TEXTAREA}' is not attached to an Image")
        return CaptionsConfig(CAPTION_TEXTAREA, str(image.get("name")), _data_key(image, source))

    choices = _named(root, "Choices", IDENTITY_CHOICES)
    if choices is not None:
        if not choices.get("toName"):
            raise BackendError(400, f"{source}: Choices '{IDENTITY_CHOICES}' has no toName")
        return IdentityConfig(IDENTITY_CHOICES, str(choices.get("toName")))

    for brush in root.iter("BrushLabels"):
        image = images.get(brush.get("toName") or "")
        if image is None or not brush.get("name"):
            continue
        key = _data_key(image, source)
        labels = tuple(str(lbl.get("value")) for lbl in brush.iter("Label") if lbl.get("value"))
        if not labels:
            raise BackendError(400, f"{source}: BrushLabels '{brush.get('name')}' has no Label")
        return MasksConfig(str(brush.get("name")), str(image.get("name")), key, labels)

    controls = ", ".join(f"{el.tag} '{el.get('name')}'" for el in root.iter() if el.get("toName")) or "none"
    raise BackendError(
        400,
        f"{source}: not a project the backend predicts for: no BrushLabels control on an Image (masks), "
        f"no Choices named '{IDENTITY_CHOICES}' (identity), no TextArea named '{CAPTION_TEXTAREA}' (captions); "
        f"its controls: {controls}",
    )


def project_kind(label_config: object) -> Kind:
    """``"masks"``, ``"identity"`` or ``"captions"`` (BackendError 400 for any other config)."""
    return parse_label_config(label_config).kind


def _project_file(kind: Kind) -> Path:
    if kind == "masks":
        from castlab.labelstudio.projects.masks import LABEL_CONFIG

        return LABEL_CONFIG
    if kind == "identity":
        from castlab.labelstudio.projects.identity import INSTANCES_CONFIG

        return INSTANCES_CONFIG
    from castlab.labelstudio.projects.captions import LABEL_CONFIG as CAPTIONS_CONFIG

    return CAPTIONS_CONFIG


@cache
def project_config(kind: Kind) -> ProjectConfig:
    """The parsed config of castlab's own project of that kind (a request without a config means masks)."""
    path = _project_file(kind)
    return parse_label_config(path.read_text(encoding="utf-8"), path.name)
