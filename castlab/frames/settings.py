"""``frames.*`` and ``quality.*`` settings of frame extraction, checked once."""

from __future__ import annotations

import os
from dataclasses import dataclass

from castlab.config import Config
from castlab.errors import ConfigError
from castlab.frames.quality import QualityGates
from castlab.frames.scene_cuts import scene_detector_threshold

MODES = ("scene", "interval", "hybrid")


@dataclass(frozen=True)
class FrameSettings:
    """What extraction reads from the config, validated (a clear ConfigError names the bad key)."""

    mode: str
    per_shot: int
    interval: float
    ext: str
    jpeg_quality: int
    gates: QualityGates
    min_scene_len: int
    threshold: float
    hybrid_window: int
    workers: int
    segment_min_frames: int

    @classmethod
    def from_config(cls, cfg: Config, mode: str | None, workers: int | None) -> FrameSettings:
        mode = mode or str(cfg.frames.mode)
        if mode not in MODES:
            raise ConfigError(f"frames.mode must be one of {MODES}, got {mode!r}")
        per_shot = int(cfg.frames.frames_per_shot)
        interval = float(cfg.frames.interval_seconds)
        if mode in ("scene", "hybrid") and per_shot < 1:
            raise ConfigError(f"frames.frames_per_shot must be >= 1, got {per_shot}")
        if mode in ("interval", "hybrid") and interval <= 0:
            raise ConfigError(f"frames.interval_seconds must be > 0, got {interval}")
        min_scene_len = int(cfg.frames.min_scene_length)
        if min_scene_len < 0:
            raise ConfigError(f"frames.min_scene_length must be >= 0, got {min_scene_len}")
        window = cfg.frames.hybrid_window
        window = max(1, min_scene_len // 2) if window is None else int(window)
        if window < 0:
            raise ConfigError(f"frames.hybrid_window must be >= 0 frames, got {window}")
        wanted = workers if workers is not None else cfg.frames.workers
        if wanted == "auto":
            wanted = min(cpu_cores(), 8)
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
            raise ConfigError(f"frames.workers must be 'auto' or an integer >= 1, got {wanted!r}")
        segment_min = int(cfg.frames.segment_min_frames)
        if segment_min < 1:
            raise ConfigError(f"frames.segment_min_frames must be >= 1, got {segment_min}")
        return cls(
            mode=mode, per_shot=per_shot, interval=interval,
            ext=str(cfg.frames.image_format).lower().lstrip("."),
            jpeg_quality=int(cfg.frames.jpeg_quality), gates=QualityGates.from_config(cfg),
            min_scene_len=min_scene_len, threshold=scene_detector_threshold(cfg), hybrid_window=window,
            workers=wanted, segment_min_frames=segment_min,
        )

    @property
    def scene(self) -> bool:
        return self.mode in ("scene", "hybrid")

    @property
    def by_interval(self) -> bool:
        return self.mode in ("interval", "hybrid")


def cpu_cores() -> int:
    """CPU cores this process may use."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1
