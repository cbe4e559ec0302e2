"""Sampler names (``generation.presets.*.sampler``, sd-scripts' ``--ss``) → diffusers schedulers, and the name
AUTOMATIC1111 shows for each (written into the PNG's parameters)."""

from __future__ import annotations

from typing import Any

from castlab.errors import ConfigError
from castlab.settings import SAMPLERS

A1111_NAMES = {"euler": "Euler", "euler_a": "Euler a", "ddim": "DDIM", "dpmpp_2m": "DPM++ 2M",
               "dpmpp_2m_karras": "DPM++ 2M Karras", "pndm": "PNDM"}


def scheduler_for(pipe: Any, name: str) -> Any:
    """A scheduler `name` made from the pipeline's own scheduler config (its betas and prediction type kept)."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    kinds: dict[str, tuple[Any, dict[str, Any]]] = {
        "euler": (EulerDiscreteScheduler, {}), "euler_a": (EulerAncestralDiscreteScheduler, {}),
        "ddim": (DDIMScheduler, {}), "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
        "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}), "pndm": (PNDMScheduler, {}),
    }
    if name not in kinds:
        raise ConfigError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    cls, extra = kinds[name]
    return cls.from_config(pipe.scheduler.config, **extra)
