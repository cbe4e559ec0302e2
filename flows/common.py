"""Shared plumbing for flows: config resolution and the Label Studio connection."""

from __future__ import annotations

from typing import Any

from castlab.config import Config, load_config


def resolve_config(
    config_files: list[str] | None = None,
    preset: str | None = None,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    return load_config(overrides=list(config_files or []), preset=preset, profile=profile, extra=overrides)


def labelstudio(cfg: Config) -> Any:
    from castlab.labelstudio import client
    from castlab.stack.services import labelstudio_connection

    url, token = labelstudio_connection(cfg)
    return client.connect(url, token)
