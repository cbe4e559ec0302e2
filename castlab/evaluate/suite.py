"""Evaluation prompt suites: ``configs/evaluation/<suite>.yaml`` → the prompts every checkpoint is rendered with.

One suite per dataset type (``evaluation.suite: auto`` picks the dataset's). A suite maps families (identity,
editability, leakage; for a type, identity means "the learnt scene, style or light is there") to named prompt
templates with ``{trigger}``,
``{class_word}`` and ``{medium}`` (``dataset.caption_prefix``: "3d animated character", under the 2d preset "2d
animated character"); the caption family echoes training captions at run time. Each prompt carries a scoring prompt
(the trigger replaced by the class word: CLIP cannot read a made-up trigger token) for CLIP-T.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from castlab.config import CONFIGS_DIR, Config
from castlab.errors import ConfigError, InputError

FAMILIES = ("identity", "editability", "leakage")
CAPTION_FAMILY = "caption"
TRIGGERED = ("identity", "editability", CAPTION_FAMILY)  # families whose prompts carry the trigger


@dataclass(frozen=True)
class PromptSpec:
    family: str
    prompt_id: str  # "<family>/<name>"
    prompt: str  # as rendered (with the trigger)
    scoring_prompt: str  # the trigger replaced by the class word

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def suite_path(cfg: Config, dataset_type: str = "character") -> Path:
    """The YAML of ``evaluation.suite``: a name under configs/evaluation/ or a path; ``auto``: the suite of the
    dataset's type (``character``, ``background``, ``style``, ``lighting``, ``pose``, ``expression``)."""
    name = str(cfg.evaluation.suite)
    if name == "auto":
        name = dataset_type
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml"):
        return path
    return CONFIGS_DIR / "evaluation" / f"{name}.yaml"


def load_suite(cfg: Config, dataset_type: str = "character") -> dict[str, dict[str, str]]:
    """{family: {name: template}} of ``evaluation.suite``, validated (known families, non-empty, strings)."""
    path = suite_path(cfg, dataset_type)
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIGS_DIR / "evaluation").glob("*.yaml"))
        raise ConfigError(f"evaluation.suite: no suite file {path} (known suites: {', '.join(known) or 'none'})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"is not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(path, "must map families (identity, editability, leakage) to named prompts")
    unknown = sorted(set(data) - set(FAMILIES))
    if unknown:
        raise InputError(path, f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {unknown}; known: {FAMILIES}")
    suite: dict[str, dict[str, str]] = {}
    for family in FAMILIES:
        prompts = data.get(family) or {}
        if not isinstance(prompts, dict) or not all(isinstance(v, str) and v.strip() for v in prompts.values()):
            raise InputError(path, f"{family}: must map prompt names to non-empty prompt strings")
        suite[family] = {str(k): str(v) for k, v in prompts.items()}
    if not suite["identity"]:
        raise InputError(path, "has no identity prompts: the suite cannot tell whether the character is there")
    if not any(suite.values()):
        raise InputError(path, "is an empty prompt suite")
    return suite


def _fill(template: str, trigger: str, class_word: str, medium: str, where: str) -> str:
    try:
        return template.format(trigger=trigger, class_word=class_word, medium=medium)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"{where}: {template!r} uses an unknown placeholder ({exc}); known: {{trigger}}, "
                          "{class_word}, {medium}") from exc


def scoring_text(prompt: str, trigger: str, class_word: str) -> str:
    """`prompt` with the trigger replaced by the class word ("zkx rabbit" → "rabbit", not "rabbit rabbit")."""
    if not trigger:
        return prompt
    text = re.sub(rf"\b{re.escape(trigger)}\s+{re.escape(class_word)}\b", class_word, prompt) if class_word else prompt
    text = re.sub(rf"\b{re.escape(trigger)}\b", class_word, text)
    return re.sub(r"\s{2,}", " ", text).strip(" ,")


def suite_prompts(cfg: Config, trigger: str, class_word: str, captions: list[str] | None = None,
                  dataset_type: str = "character", medium: str | None = None) -> list[PromptSpec]:
    """Every prompt of the suite (then ``evaluation.caption_prompts`` training captions, drawn with the run's seed);
    `medium` fills ``{medium}`` (default ``dataset.caption_prefix``; a type's dataset gives ``types.<type>.medium``)."""
    suite = load_suite(cfg, dataset_type)
    where = f"evaluation.suite {suite_path(cfg, dataset_type).name}"
    specs = []
    for family in FAMILIES:
        for name, template in suite[family].items():
            prompt = _fill(template, trigger, class_word, medium or str(cfg.dataset.caption_prefix), where)
            if family in TRIGGERED and trigger not in prompt:
                raise ConfigError(f"{where}: {family}/{name} has no {{trigger}}: {template!r}")
            if family == "leakage" and trigger in prompt:
                raise ConfigError(f"{where}: leakage/{name} must not use {{trigger}}: {template!r}")
            specs.append(PromptSpec(family, f"{family}/{name}", prompt, scoring_text(prompt, trigger, class_word)))
    pool = sorted({c.strip() for c in captions or [] if c and trigger in c})
    count = min(int(cfg.evaluation.caption_prompts), len(pool))
    for k, caption in enumerate(random.Random(int(cfg.seed)).sample(pool, count)):
        specs.append(PromptSpec(CAPTION_FAMILY, f"{CAPTION_FAMILY}/{k}", caption,
                                scoring_text(caption, trigger, class_word)))
    return specs
