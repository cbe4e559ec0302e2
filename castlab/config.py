"""Configuration: `configs/defaults.yaml` (3D first) + optional preset + per-title overrides.

Every default lives once, in `configs/`. :func:`load_config` merges the files, remembers which file
set every value, and validates the result against :class:`castlab.settings.Settings` at once: an
unknown key, a wrong type or an out-of-range value fails before any work, naming the key and the
file it came from. Code reads typed attributes: ``cfg.clustering.min_cluster_size``.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from castlab.errors import ConfigError
from castlab.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = Path(os.environ.get("CASTLAB_CONFIGS_DIR", PROJECT_ROOT / "configs"))
PROFILES = ("tiny", "full")
ARGUMENTS = "arguments"  # the source name of values passed in code (flow parameters, --mode, tests)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return `base` with `override` merged in recursively (override wins)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key → value for every leaf (an empty mapping is a leaf)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{dotted}."))
        else:
            out[dotted] = value
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


def display_path(path: str | Path) -> str:
    """`path` relative to the project root when it lies inside it (no machine paths in run files)."""
    try:
        return Path(path).resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(path)


class Config:
    """Resolved, validated settings: ``cfg.<section>.<key>`` (typed), plus where each value came from."""

    def __init__(self, data: dict[str, Any], sources: list[str], origins: dict[str, str] | None = None) -> None:
        self.data = data
        self.sources = sources
        self.origins = origins if origins is not None else dict.fromkeys(_leaves(data), sources[-1])
        self.settings = _validate(data, self.origins)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in {"data", "sources", "origins", "settings"}:
            raise AttributeError(name)
        return getattr(self.settings, name)

    def __reduce__(self) -> tuple[Any, ...]:  # pickles as its data and provenance (Prefect, Dask workers)
        return (Config, (self.data, self.sources, self.origins))

    @property
    def profile(self) -> str:
        return self.settings.profile

    def model(self, role: str) -> Any:
        """Settings of one model role (segmenter, embedder, captioner, faces, base_model) for the active profile."""
        return getattr(getattr(self.settings.models, self.profile), role)

    def value(self, dotted: str) -> Any:
        """The typed value at a dotted key (placeholders name settings so: ``${cfg:dataset.resolution}``)."""
        node: Any = self.settings
        for part in dotted.split("."):
            if isinstance(node, BaseModel) and part in type(node).model_fields:
                node = getattr(node, part)
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise ConfigError(f"setting '{dotted}' does not exist (sources: {', '.join(self.sources)})")
        return node.model_dump() if isinstance(node, BaseModel) else node

    def origin(self, dotted: str) -> str:
        """The file (or ``arguments``) that set `dotted`, or the one that set its closest parent."""
        key = dotted
        while key:
            if key in self.origins:
                return self.origins[key]
            key = key.rpartition(".")[0]
        return self.sources[0]

    def with_overrides(self, extra: dict[str, Any], source: str = ARGUMENTS) -> Config:
        """A new Config with `extra` merged on top (validated again)."""
        origins = dict(self.origins)
        _track(origins, extra, source)
        return Config(deep_merge(self.data, extra), [*self.sources, source], origins)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)

    def to_yaml(self) -> str:
        """The resolved config as YAML, every value commented with the file it came from (loads back as is)."""
        lines = [f"# resolved castlab config; sources in order: {', '.join(display_path(s) for s in self.sources)}"]

        def emit(node: dict[str, Any], prefix: str, indent: str) -> None:
            for key, value in node.items():
                dotted = f"{prefix}{key}"
                if isinstance(value, dict) and value:
                    lines.append(f"{indent}{key}:")
                    emit(value, f"{dotted}.", indent + "  ")
                else:
                    text = json.dumps(value, ensure_ascii=False)
                    lines.append(f"{indent}{key}: {text}  # {display_path(self.origin(dotted))}")

        emit(self.data, "", "")
        return "\n".join(lines) + "\n"


def _track(origins: dict[str, str], override: dict[str, Any], source: str, prefix: str = "") -> None:
    """Record `source` as the origin of every leaf `override` sets (a replaced mapping loses its old leaves)."""
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            origins.pop(dotted, None)
            _track(origins, value, source, f"{dotted}.")
        else:
            for old in [k for k in origins if k.startswith(f"{dotted}.")]:
                del origins[old]
            origins[dotted] = source


def _validate(data: dict[str, Any], origins: dict[str, str]) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, data, origins)) from None


def _explain(exc: ValidationError, data: dict[str, Any], origins: dict[str, str]) -> str:
    """One line per problem: ``<file>: setting '<key>': <what is wrong>``."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-after", "function-before"))]
        dotted = ".".join(loc)
        key = dotted
        while key and key not in origins:
            key = key.rpartition(".")[0]
        source = display_path(origins.get(key, next(iter(origins.values()), "config")))
        if err["type"] == "extra_forbidden":
            hint = _did_you_mean(loc, data)
            lines.append(f"{source}: unknown setting '{dotted}'{hint}")
        elif err["type"] == "missing":
            lines.append(f"{source}: setting '{dotted}' is missing")
        else:
            got = json.dumps(err.get("input"), default=str)
            lines.append(f"{source}: setting '{dotted}': {err['msg']} (got {got})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _did_you_mean(loc: list[str], data: dict[str, Any]) -> str:
    model: Any = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return ""
        model = field.annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def load_config(
    overrides: list[str | Path] | None = None,
    preset: str | None = None,
    profile: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Config:
    """Load defaults, then a preset (``configs/presets/<name>.yaml``), override files and `extra`; validate.

    The profile can also come from the ``CASTLAB_PROFILE`` environment variable, the task runner
    (``orchestration.task_runner``) from ``CASTLAB_TASK_RUNNER`` (set by ``--task-runner``, so the flows see it).
    """
    defaults = CONFIGS_DIR / "defaults.yaml"
    layers: list[tuple[str, dict[str, Any]]] = [(str(defaults), _read_yaml(defaults))]
    if preset:
        preset_path = CONFIGS_DIR / "presets" / f"{preset}.yaml"
        if not preset_path.is_file():
            known = sorted(p.stem for p in (CONFIGS_DIR / "presets").glob("*.yaml"))
            raise ConfigError(f"unknown preset '{preset}' (known: {', '.join(known)})")
        layers.append((str(preset_path), _read_yaml(preset_path)))
    layers += [(str(path), _read_yaml(Path(path))) for path in overrides or []]
    if extra:
        layers.append((ARGUMENTS, extra))
    chosen = profile or os.environ.get("CASTLAB_PROFILE")
    if chosen:
        if chosen not in PROFILES:
            raise ConfigError(f"profile must be one of {PROFILES}, got {chosen!r} (setting 'profile')")
        layers.append(("--profile" if profile else "CASTLAB_PROFILE", {"profile": chosen}))
    runner = os.environ.get("CASTLAB_TASK_RUNNER", "").strip()
    if runner:
        layers.append(("CASTLAB_TASK_RUNNER", {"orchestration": {"task_runner": runner}}))
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for source, layer in layers:
        data = deep_merge(data, layer)
        _track(origins, layer, source)
    return Config(data, [source for source, _ in layers], origins)
