"""The ``full`` profile's transformers models by hub id or local folder, loaded one way for every role: the
setting is required (a :class:`ConfigError` naming it, never random weights instead), ``local_files_only`` (the
default) never downloads, and the model version names the model and its revision."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from castlab.config import Config
from castlab.errors import ConfigError
from castlab.models import hub_or_folder

T = TypeVar("T")


@dataclass(frozen=True)
class Pretrained:
    """Where the role ``models.<profile>.<role>`` loads from (``model``, ``revision``, ``local_files_only``)."""

    prefix: str  # the settings path, e.g. models.full.safety
    source: str  # what from_pretrained takes
    name: str  # how versions and messages name it
    revision: str | None
    local_only: bool

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"revision": self.revision, "local_files_only": self.local_only}

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """:attr:`kwargs` for a model's ``from_pretrained``: with peft installed, transformers also looks for an
        adapter on the hub unless ``adapter_kwargs`` says local files only (offline: ~20 s of retries per load)."""
        return {**self.kwargs, "adapter_kwargs": {"local_files_only": self.local_only}}

    def load(self, what: str, loader: Callable[[], T]) -> T:
        """`loader()`; a model that is not there is a ConfigError saying what to set (`what`: e.g. "DINOv2")."""
        try:
            return loader()
        except OSError as exc:
            where = "in the local Hugging Face cache" if self.local_only else "on the hub"
            raise ConfigError(
                f"{self.prefix}.model: {self.source!r} is not {where} ({str(exc).splitlines()[0]}). Set "
                f"{self.prefix}.model to a local {what} folder, or set {self.prefix}.local_files_only: false to "
                "allow downloading it (castlab never downloads unless local_files_only is false); castlab never "
                "falls back to random weights"
            ) from exc

    def version(self, config: Any, lead: str = "") -> str:
        """``<lead><name>@<revision or the cached commit>``."""
        ref = self.revision or (getattr(config, "_commit_hash", None) or "")[:10]
        return lead + self.name.replace("/", "--") + (f"@{ref}" if ref else "")


class ProcessorModel:
    """A transformers model (in eval mode) with its processor, model version and device."""

    def __init__(self, model: Any, processor: Any, model_version: str, device: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.model_version = model_version
        self.device = device


def pretrained(cfg: Config, role: str, hint: str) -> Pretrained:
    """The role's source; ConfigError naming the setting when ``model`` is not set (`hint`: what to set it to)."""
    prefix = f"models.{cfg.profile}.{role}"
    settings = cfg.model(role)
    source = str(settings.model or "")
    if not source:
        raise ConfigError(f"{prefix}.model is not set: {hint}")
    source, name = hub_or_folder(source, f"{prefix}.model")
    return Pretrained(prefix, source, name, settings.revision or None, bool(settings.local_files_only))


def role_device(cfg: Config, role: str) -> str:
    """Where the role runs: cpu under ``tiny``; else ``models.<profile>.<role>.device`` (auto: cuda when there)."""
    import torch

    if cfg.profile == "tiny":
        return "cpu"
    device = str(cfg.model(role).device or "auto")
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
