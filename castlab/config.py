"""Configuration: `configs/defaults.yaml` (3D first) + optional preset + per-title overrides.

Every default lives once, in `configs/`; code reads it from the resolved :class:`Config`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from castlab.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = Path(os.environ.get("CASTLAB_CONFIGS_DIR", PROJECT_ROOT / "configs"))
PROFILES = ("tiny", "full")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return `base` with `override` merged in recursively (override wins)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


class Config:
    """Resolved settings, addressed with dotted keys: ``cfg.get("quality.blur_threshold")``."""

    def __init__(self, data: dict[str, Any], sources: list[str]) -> None:
        self.data = data
        self.sources = sources

    @property
    def profile(self) -> str:
        return str(self.data["profile"])

    def get(self, dotted: str, default: Any = ...) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is ...:
                    raise ConfigError(f"setting '{dotted}' is missing (sources: {', '.join(self.sources)})")
                return default
            node = node[part]
        return node

    def section(self, name: str) -> dict[str, Any]:
        value = self.get(name)
        if not isinstance(value, dict):
            raise ConfigError(f"setting '{name}' must be a mapping")
        return value

    def model(self, role: str) -> dict[str, Any]:
        """Settings of one model role (segmenter, embedder, base_model) for the active profile."""
        return dict(self.get(f"models.{self.profile}.{role}"))

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)


def load_config(
    overrides: list[str | Path] | None = None,
    preset: str | None = None,
    profile: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Config:
    """Load defaults, then a preset (``configs/presets/<name>.yaml``), override files and `extra`.

    The profile can also come from the ``CASTLAB_PROFILE`` environment variable.
    """
    sources = [str(CONFIGS_DIR / "defaults.yaml")]
    data = _read_yaml(CONFIGS_DIR / "defaults.yaml")
    if preset:
        preset_path = CONFIGS_DIR / "presets" / f"{preset}.yaml"
        if not preset_path.is_file():
            known = sorted(p.stem for p in (CONFIGS_DIR / "presets").glob("*.yaml"))
            raise ConfigError(f"unknown preset '{preset}' (known: {', '.join(known)})")
        data = deep_merge(data, _read_yaml(preset_path))
        sources.append(str(preset_path))
    for path in overrides or []:
        data = deep_merge(data, _read_yaml(Path(path)))
        sources.append(str(path))
    if extra:
        data = deep_merge(data, extra)
        sources.append("arguments")
    chosen = profile or os.environ.get("CASTLAB_PROFILE")
    if chosen:
        data["profile"] = chosen
    if data.get("profile") not in PROFILES:
        raise ConfigError(f"profile must be one of {PROFILES}, got {data.get('profile')!r} (setting 'profile')")
    return Config(data, sources)
