"""The workspace's LoRA registry, ``<workspace>/loras.yaml``: the chosen checkpoint of every trained LoRA.

One entry per LoRA name; registering a name again replaces its entry whole (nothing stale survives). The entry
is the recommendation (``chosen_by: castlab``) until reviewers pick (``chosen_by: reviewers``). The generation
tools read it. Layout::

    loras:
    - name: bunny                 # unique
      character: Bunny
      trigger: cstlb
      class_word: character
      base_model: <the base model's version>
      arch: sd15 | sdxl
      file: /abs/path/bunny-000400.safetensors
      metrics: {identity: 0.41, prompt_following: 0.27, ...}   # the chosen checkpoint's aggregate means
      chosen_by: castlab | reviewers
      evaluation: <the evaluation folder>
      profile: tiny | full        # the profile it was made under (tiny LoRAs are for tests and demos)
      updated: 2025-01-01T12:00:00+00:00
      type: character             # or background, style, lighting, pose, expression
      dataset: /abs/path/datasets/.../Bunny   # its castlab dataset: the references of the consistency check
      file_hash: 0a1b2c3d4e5f     # the file's SHA-256, first 12 hex digits (AUTOMATIC1111's short hash)
      base_model_source: <the base model it was trained from: folder, hub id or checkpoint file>
      base_model_hash: 1a2b3c4d5e6f   # a single-file checkpoint's short hash (null for a folder or hub id)
      # optional: checkpoint, step, weight, agreement (and type, dataset, file_hash, base_model_source: entries
      # written before they existed lack them)

Writes are atomic and serialised by a lock file beside the registry (read, replace the entry, write).
"""

from __future__ import annotations

import fcntl
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from castlab.config import Config
from castlab.errors import InputError
from castlab.workspace import workspace_root, write_text_atomic

REGISTRY_NAME = "loras.yaml"
ARCHES = ("sd15", "sdxl")
CHOSEN_BY = ("castlab", "reviewers")
REQUIRED = ("name", "character", "trigger", "class_word", "base_model", "arch", "file", "metrics", "chosen_by",
            "evaluation")
OPTIONAL = ("checkpoint", "step", "weight", "agreement", "profile", "updated", "type", "dataset", "file_hash",
            "base_model_source", "base_model_hash")
_HEADER = "# castlab LoRA registry: one entry per name, written by castlab (evaluate, review-sync)\n"


def registry_path() -> Path:
    """``<workspace>/loras.yaml``."""
    return workspace_root() / REGISTRY_NAME


def metric_means(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """``{metric: mean}`` from aggregates (``{metric: {"mean", "low", "high"} | None}``) or plain means."""
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            value = value.get("mean")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"metric {key!r} is {value!r}, not a number")
        out[str(key)] = None if value is None or not math.isfinite(float(value)) else float(value)
    return out


def _text(entry: Mapping[str, Any], key: str, name: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"LoRA registry entry {name!r}: {key} must be a non-empty string, got {value!r}")
    return value.strip()


def check_entry(entry: Mapping[str, Any], check_file: bool = True) -> dict[str, Any]:
    """The entry with its fields checked and normalised (ValueError naming the entry and field; InputError for a
    LoRA file that is missing when `check_file`)."""
    name = str(entry.get("name") or "?")
    missing = [k for k in REQUIRED if entry.get(k) is None]
    unknown = sorted(set(entry) - set(REQUIRED) - set(OPTIONAL))
    if missing or unknown:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown fields {', '.join(unknown)}"] if unknown else [])
        raise ValueError(f"LoRA registry entry {name!r}: {'; '.join(problems)}")
    out = dict(entry)
    for key in ("name", "character", "trigger", "class_word", "base_model"):
        out[key] = _text(entry, key, name)
    if entry["arch"] not in ARCHES:
        raise ValueError(f"LoRA registry entry {name!r}: arch must be one of {ARCHES}, got {entry['arch']!r}")
    if entry["chosen_by"] not in CHOSEN_BY:
        raise ValueError(f"LoRA registry entry {name!r}: chosen_by must be one of {CHOSEN_BY}, "
                         f"got {entry['chosen_by']!r}")
    file = Path(_text(entry, "file", name))
    if not file.is_absolute():
        raise ValueError(f"LoRA registry entry {name!r}: file must be an absolute path, got {str(file)!r}")
    if check_file and not file.is_file():
        raise InputError(file, f"LoRA file of registry entry {name!r} does not exist")
    out["file"] = str(file)
    out["evaluation"] = _text(entry, "evaluation", name)
    if not isinstance(entry["metrics"], Mapping):
        raise ValueError(f"LoRA registry entry {name!r}: metrics must be a mapping, got {entry['metrics']!r}")
    try:
        out["metrics"] = metric_means(entry["metrics"])
    except ValueError as exc:
        raise ValueError(f"LoRA registry entry {name!r}: {exc}") from exc
    return out


def _load(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(path, f"is not a readable LoRA registry ({type(exc).__name__}: {exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("loras"), list):
        raise InputError(path, "is not a LoRA registry: expected a mapping with a 'loras' list")
    entries: dict[str, dict[str, Any]] = {}
    for n, entry in enumerate(data["loras"]):
        if not isinstance(entry, dict):
            raise InputError(path, f"loras[{n}] is not a mapping")
        try:
            checked = check_entry(entry, check_file=False)
        except ValueError as exc:
            raise InputError(path, f"loras[{n}]: {exc}") from exc
        if checked["name"] in entries:
            raise InputError(path, f"loras[{n}]: name {checked['name']!r} appears twice")
        entries[checked["name"]] = checked
    return entries


def read_registry(cfg: Config | None = None) -> dict[str, dict[str, Any]]:
    """Every registered LoRA by name ({} without a registry); InputError naming the file when it is corrupt."""
    return _load(registry_path())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


EDITABLE = ("character", "trigger", "class_word", "weight", "type")  # what `castlab loras set` may change


def _write(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    body = yaml.safe_dump({"loras": [entries[k] for k in sorted(entries)]}, sort_keys=False, allow_unicode=True)
    write_text_atomic(path, _HEADER + body)


def edit_lora(name: str, changes: Mapping[str, Any] | None = None, remove: bool = False) -> dict[str, Any] | None:
    """Change fields of entry `name` (:data:`EDITABLE` only, checked again) or remove it; the new entry (None when
    removed). InputError naming the registry for an unknown name or field."""
    path = registry_path()
    with _locked(path):
        entries = _load(path)
        if name not in entries:
            raise InputError(path, f"has no LoRA named {name!r}; known: {', '.join(sorted(entries)) or 'none'}")
        if remove:
            del entries[name]
            _write(path, entries)
            return None
        wrong = sorted(set(changes or {}) - set(EDITABLE))
        if wrong:
            raise InputError(path, f"{', '.join(wrong)} cannot be edited (editable: {', '.join(EDITABLE)})")
        try:
            entries[name] = check_entry({**entries[name], **(changes or {}),
                                         "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                                        check_file=False)
        except ValueError as exc:
            raise InputError(path, str(exc)) from exc
        _write(path, entries)
        return entries[name]


def registry_problems(entries: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Per entry, what makes it unusable or doubtful: a missing LoRA file, a file whose hash is not the one
    registered (replaced since), a base model folder or file that is gone."""
    from castlab.workspace import short_hash

    problems: dict[str, list[str]] = {}
    for name, entry in entries.items():
        found = []
        file = Path(str(entry["file"]))
        if not file.is_file():
            found.append(f"LoRA file {file} is missing")
        elif entry.get("file_hash") and (now := short_hash(file)) != entry["file_hash"]:
            found.append(f"LoRA file {file} changed since it was registered (hash {now}, registered "
                         f"{entry['file_hash']})")
        source = str(entry.get("base_model_source") or "")
        if source.startswith(("/", "~", ".")) and not Path(source).expanduser().exists():
            found.append(f"base model {source} is missing")
        if found:
            problems[name] = found
    return problems


def register_lora(entry: Mapping[str, Any], cfg: Config) -> Path:
    """Add or replace the entry named ``entry["name"]`` (checked by :func:`check_entry`; stamped with
    ``cfg.profile`` and the time); returns the registry's path."""
    checked = check_entry({**entry, "profile": entry.get("profile") or cfg.profile,
                           "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    path = registry_path()
    with _locked(path):
        entries = _load(path)
        entries[checked["name"]] = checked
        _write(path, entries)
    return path
