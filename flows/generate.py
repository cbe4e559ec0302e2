"""generate: images from a base model with registered LoRAs composed at their weights, each checked for consistency
with its character (castlab/generate); the summary and contact sheet published as Prefect artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from castlab.workspace import Run
from flows.common import resolve_config


@flow(name="generate")
def generate(
    loras: list[str] | None = None,
    prompt: str | None = None,
    prompt_file: str | None = None,
    out_dir: str | None = None,
    base: str | None = None,
    quality: str | None = None,
    images: int = 1,
    seed: int | None = None,
    check: bool = True,
    control: str | None = None,
    control_scale: float | None = None,
    device: str = "cpu",
    force: bool = False,
    config_files: list[str] | None = None,
    preset: str | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """Generate `images` per prompt (`prompt`, or every line of `prompt_file` in sd-scripts' syntax) with `loras`
    (``NAME`` or ``NAME:WEIGHT``) into `out_dir` (default: a new generate run folder); `quality` is a
    ``generation.presets`` name (draft, standard, high), `preset` the config preset (2d) as for every flow;
    `control` a ControlNet condition ``KIND=IMAGE`` (pose, depth, canny) at `control_scale`."""
    from castlab.errors import InputError
    from castlab.generate.control import parse_control
    from castlab.generate.loras import parse_lora_args
    from castlab.generate.prompts import parse_line, read_prompt_file
    from castlab.generate.stage import generate as run_generation

    cfg = resolve_config(config_files, preset, profile)
    if bool(prompt) == bool(prompt_file):
        raise InputError("prompts", "give one of prompt or prompt_file")
    if prompt_file:
        lines, bad = read_prompt_file(Path(prompt_file))
    else:
        lines, bad = [parse_line(str(prompt))], []
    logger = get_run_logger()
    for line in bad:
        logger.warning("bad prompt line %s: %s (skipped)", line.source, line.problem)
    scale = float(cfg.generation.control_scale if control_scale is None else control_scale)
    condition = parse_control(control, scale) if control else None
    target = Path(out_dir) if out_dir else Run.create("generate", cfg).path
    report = run_generation(lines, parse_lora_args(list(loras or [])), target, cfg, bad_lines=bad, base=base,
                            preset=quality, images=images, seed=seed, device=device, check=check, force=force,
                            control=condition)
    markdown = (target / "generation.md").read_text(encoding="utf-8")
    create_markdown_artifact(key="generation", markdown=markdown, description=target.name)
    counts = report["counts"]
    logger.info("generate %s: %d images (%d passed first time, %d flagged) from %d prompts, %d bad lines",
                target, counts["images"], counts["passed_first_time"], counts["flagged"], counts["prompts"],
                len(bad))
    return {k: report[k] for k in ("out_dir", "counts", "loras", "notes", "bad_lines", "consistency", "control")}
