"""Optimizer and learning-rate scheduler from kohya training keys, with sd-scripts' meaning.

Follows sd-scripts ``library/train_util.py`` ``get_optimizer`` (``optimizer_type``, ``optimizer_args`` as
``key=value`` strings whose values are Python literals, Adafactor's ``relative_step`` / ``warmup_init`` handling)
and ``get_scheduler_fix`` (``lr_scheduler``, ``lr_warmup_steps`` / ``lr_decay_steps`` as a step count or a
ratio of the training steps, ``lr_scheduler_num_cycles``, ``lr_scheduler_power``, ``lr_scheduler_args``), whose
schedules come from ``transformers.optimization`` as in sd-scripts. ``max_grad_norm`` is the training loop's.
"""

from __future__ import annotations

import ast
import importlib
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers.optimization import (
    Adafactor,
    AdafactorSchedule,
    get_constant_schedule,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_cosine_with_hard_restarts_schedule_with_warmup,
    get_linear_schedule_with_warmup,
    get_polynomial_decay_schedule_with_warmup,
    get_wsd_schedule,
)

log = logging.getLogger(__name__)

OPTIMIZERS = ("AdamW", "AdamW8bit", "Prodigy", "Adafactor")
SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "polynomial", "linear",
              "warmup_stable_decay", "adafactor")
# optimizer_type → (module to import, pip package) for the optional ones
_PACKAGES = {"AdamW8bit": ("bitsandbytes", "bitsandbytes"), "Prodigy": ("prodigyopt", "prodigyopt")}


def optimizer_type(flat: Mapping[str, Any]) -> str:
    """The canonical name of ``optimizer_type`` (case-insensitive, default AdamW; legacy ``use_8bit_adam``)."""
    raw = flat.get("optimizer_type")
    if raw is not None and not isinstance(raw, str):
        raise ValueError(f"optimizer_type must be a string, got {raw!r}")
    if flat.get("use_lion_optimizer"):
        raise ValueError(f"use_lion_optimizer: Lion is not supported; optimizer_type must be one of {OPTIMIZERS}")
    if flat.get("use_8bit_adam"):
        if raw:
            raise ValueError("both use_8bit_adam and optimizer_type are set; keep only optimizer_type = \"AdamW8bit\"")
        raw = "AdamW8bit"
    name = raw or "AdamW"
    for known in OPTIMIZERS:
        if known.lower() == name.lower():
            return known
    raise ValueError(f"optimizer_type {name!r} is not supported; known: {', '.join(OPTIMIZERS)}")


def parse_key_values(values: Any, key: str) -> dict[str, Any]:
    """sd-scripts' ``optimizer_args`` / ``lr_scheduler_args``: ``["k=v", ...]`` (or one whitespace-separated
    string, as on its command line) → ``{k: ast.literal_eval(v)}``."""
    if values is None:
        return {}
    items = values.split() if isinstance(values, str) else values
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{key} must be a list of \"name=value\" strings, got {values!r}")
    parsed: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{key} entry {item!r} is not \"name=value\"")
        try:
            parsed[name.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"{key} entry {item!r}: the value is not a Python literal "
                             f"(numbers, True/False, tuples like 0.9,0.999, quoted strings)") from exc
    return parsed


def adafactor_relative_step(flat: Mapping[str, Any]) -> bool:
    """Whether Adafactor runs its own relative-step schedule (sd-scripts' default; ``warmup_init`` forces it)."""
    return optimizer_type(flat) == "Adafactor" and bool(optimizer_kwargs(flat)["relative_step"])


def optimizer_kwargs(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments the optimizer gets besides ``lr`` (parsed ``optimizer_args``, Adafactor adjusted)."""
    kwargs = parse_key_values(flat.get("optimizer_args"), "optimizer_args")
    if optimizer_type(flat) == "Adafactor":
        kwargs.setdefault("relative_step", True)
        if not kwargs["relative_step"] and kwargs.get("warmup_init", False):
            log.info("Adafactor: warmup_init=True needs relative_step, so relative_step is set to True (as sd-scripts)")
            kwargs["relative_step"] = True
    return kwargs


def _learning_rate(flat: Mapping[str, Any]) -> float:
    lr = flat.get("learning_rate")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"learning_rate must be a non-negative number, got {lr!r}")
    return float(lr)


def _import_optional(name: str) -> Any:
    module, package = _PACKAGES[name]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"optimizer_type = \"{name}\" needs the {package} package, which is not installed "
                         f"(pip install {package})") from exc


def build_optimizer(param_groups: list[dict], flat: dict) -> torch.optim.Optimizer:
    """The optimizer sd-scripts' ``get_optimizer`` builds for these ``param_groups`` (dicts with ``params`` and
    optionally ``lr``) from ``optimizer_type``, ``optimizer_args`` and ``learning_rate``."""
    if not isinstance(param_groups, list) or not param_groups or not all(
            isinstance(g, dict) and "params" in g for g in param_groups):
        raise ValueError("param_groups must be a non-empty list of dicts with a 'params' entry")
    name = optimizer_type(flat)
    kwargs = optimizer_kwargs(flat)
    lr: float | None = _learning_rate(flat)
    groups = [dict(g) for g in param_groups]  # never mutate the caller's groups (Adafactor drops their lr)

    if name == "AdamW":
        return torch.optim.AdamW(groups, lr=lr, **kwargs)
    if name == "AdamW8bit":
        bnb = _import_optional(name)
        return bnb.optim.AdamW8bit(groups, lr=lr, **kwargs)
    if name == "Prodigy":
        prodigyopt = _import_optional(name)
        group_lrs = {g.get("lr", lr) for g in groups}
        first = groups[0].get("lr", lr)
        if first is not None and first <= 0.1:
            log.warning("Prodigy: learning_rate %s is low; it scales the adapted step, ~1.0 is usual", first)
        if len(group_lrs) > 1:
            log.warning("Prodigy: several learning rates given (%s); only the first group's takes effect", group_lrs)
        return prodigyopt.Prodigy(groups, lr=lr, **kwargs)
    # Adafactor
    if kwargs["relative_step"]:
        # relative_step: Adafactor computes its own lr; learning_rate only seeds the "adafactor" scheduler
        dropped = [g.pop("lr", None) for g in groups]  # every group, not short-circuited
        if any(v is not None for v in dropped):
            log.warning("Adafactor with relative_step: unet_lr / text_encoder_lr are ignored (as in sd-scripts)")
        lr = None
    else:
        if flat.get("max_grad_norm", 1.0):
            log.warning("Adafactor without relative_step and max_grad_norm != 0: gradients are clipped; sd-scripts "
                        "suggests max_grad_norm = 0")
        if flat.get("lr_scheduler", "constant") != "constant_with_warmup":
            log.warning("Adafactor without relative_step: sd-scripts suggests lr_scheduler = constant_with_warmup")
    return Adafactor(groups, lr=lr, **kwargs)


def optimizer_label(optimizer: torch.optim.Optimizer, flat: Mapping[str, Any]) -> str:
    """sd-scripts' ``ss_optimizer`` value: ``module.Class`` plus ``(k=v,...)`` of the optimizer kwargs if any."""
    cls = type(optimizer)
    args = ",".join(f"{k}={v}" for k, v in optimizer_kwargs(flat).items())
    return f"{cls.__module__}.{cls.__name__}" + (f"({args})" if args else "")


def schedule_steps(value: Any, key: str, total_steps: int) -> int:
    """``lr_warmup_steps`` / ``lr_decay_steps``: an int step count, or a float below 1 (or ``"N%"``) meaning that
    share of ``total_steps``, truncated as sd-scripts does (``int(ratio * total)``)."""
    if value is None:
        return 0
    if isinstance(value, str):  # sd-scripts' command-line form (int_or_float)
        text = value.strip()
        try:
            value = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"{key} = {value!r} is not a step count, a ratio below 1, or a percentage") from None
        if value >= 1:
            if not value.is_integer():
                raise ValueError(f"{key} = {text!r}: a step count must be a whole number")
            value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{key} must be a non-negative step count or a ratio below 1, got {value!r}")
    if isinstance(value, float):
        if value >= 1:
            raise ValueError(f"{key} = {value!r}: write a step count as an integer, or a ratio of the "
                             "training steps as a float below 1")
        return int(value * total_steps)
    return value


def _adafactor_initial_lr(name: str, optimizer: torch.optim.Optimizer) -> float:
    if not isinstance(optimizer, Adafactor):
        raise ValueError(f"lr_scheduler = {name!r} works only with optimizer_type = \"Adafactor\"")
    _, sep, text = name.partition(":")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"lr_scheduler = {name!r}: write \"adafactor:<initial lr>\" (or let Adafactor's "
                         "relative_step choose it)") from None


def build_scheduler(optimizer: torch.optim.Optimizer, flat: dict, total_steps: int,
                    accumulation: int = 1) -> LRScheduler:
    """sd-scripts' ``get_scheduler_fix`` for ``optimizer``: call ``step()`` once per optimizer step.

    ``total_steps`` is the number of optimizer steps (``max_train_steps``). sd-scripts does not stretch the
    schedule by gradient accumulation (its ``* gradient_accumulation_steps`` is commented out; accelerate steps
    the scheduler only when the optimizer steps), so ``accumulation`` is only checked, not applied.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    if isinstance(accumulation, bool) or not isinstance(accumulation, int) or accumulation < 1:
        raise ValueError(f"gradient_accumulation_steps must be a positive integer, got {accumulation!r}")
    if flat.get("lr_scheduler_type"):
        raise ValueError(f"lr_scheduler_type = {flat['lr_scheduler_type']!r}: custom scheduler classes are not "
                         f"supported; use lr_scheduler = one of {', '.join(SCHEDULERS)}")
    name = flat.get("lr_scheduler") or "constant"
    if not isinstance(name, str):
        raise ValueError(f"lr_scheduler must be a string, got {name!r}")
    warmup = schedule_steps(flat.get("lr_warmup_steps", 0), "lr_warmup_steps", total_steps)
    decay = schedule_steps(flat.get("lr_decay_steps", 0), "lr_decay_steps", total_steps)
    if warmup > total_steps:
        raise ValueError(f"lr_warmup_steps ({warmup}) exceeds the {total_steps} training steps")
    extra = parse_key_values(flat.get("lr_scheduler_args"), "lr_scheduler_args")

    def no_warmup(kind: str) -> None:
        if warmup:
            raise ValueError(f"lr_scheduler {kind} takes no warmup; set lr_warmup_steps = 0 (got {warmup} steps)")

    if isinstance(optimizer, Adafactor) and optimizer.defaults.get("relative_step"):
        # sd-scripts rewrites lr_scheduler to "adafactor:<learning_rate>" whenever relative_step is on
        if name != "adafactor" and not name.startswith("adafactor:"):
            log.info("Adafactor with relative_step: lr_scheduler %r replaced by its own schedule", name)
        name = f"adafactor:{_learning_rate(flat)}"
    if name == "adafactor" or name.startswith("adafactor:"):
        initial_lr = _adafactor_initial_lr(name, optimizer)
        no_warmup("adafactor")
        return AdafactorSchedule(optimizer, initial_lr)
    if name == "constant":
        no_warmup("constant")
        return get_constant_schedule(optimizer, **extra)
    if name == "constant_with_warmup":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup, **extra)
    if name in ("linear", "cosine"):
        fn = get_linear_schedule_with_warmup if name == "linear" else get_cosine_schedule_with_warmup
        return fn(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps, **extra)
    if name == "cosine_with_restarts":
        return get_cosine_with_hard_restarts_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
            num_cycles=flat.get("lr_scheduler_num_cycles", 1), **extra)
    if name == "polynomial":
        return get_polynomial_decay_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
            power=flat.get("lr_scheduler_power", 1.0), **extra)
    if name == "warmup_stable_decay":
        stable = total_steps - warmup - decay
        if stable < 0:
            raise ValueError(f"lr_warmup_steps ({warmup}) + lr_decay_steps ({decay}) exceed the {total_steps} "
                             "training steps")
        min_ratio = flat.get("lr_scheduler_min_lr_ratio")
        return get_wsd_schedule(optimizer, num_warmup_steps=warmup, num_stable_steps=stable, num_decay_steps=decay,
                                num_cycles=flat.get("lr_scheduler_num_cycles", 1) / 2,
                                min_lr_ratio=0.0 if min_ratio is None else min_ratio, **extra)
    raise ValueError(f"lr_scheduler {name!r} is not supported; known: {', '.join(SCHEDULERS)}")
