"""``castlab generate``: images from a base model with registered LoRAs composed at their weights.

For each prompt (``--prompt`` or a prompt file's lines, :mod:`castlab.generate.prompts`) and each of ``images``
seeds: the LoRAs' triggers put in front where the prompt lacks them, the quality preset's sampler, steps, CFG and
size (a line's own options win), one seeded CPU generator per image (the same image alone or in a batch). With a
character LoRA every image is checked for consistency (:mod:`castlab.generate.consistency`); an off-model image
is made again with the next free seed, up to ``generation.consistency.retries`` times, and stays flagged if it
never passes.

Output contract (``out_dir``)::

    images/<NNNN>_s<seed>.png   every kept image, its generation parameters in the PNG (A1111 ``parameters``)
    rejected/<NNNN>_s<seed>.png the off-model tries that were made again
    generation.json             settings, LoRAs (with file hashes), every image and try, bad prompt lines
    contact_sheet.png           the kept images, flagged ones outlined
    generation.md               the summary a person reads (how many passed first time, what was flagged)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from castlab.config import Config
from castlab.errors import InputError
from castlab.generate.control import Control, condition
from castlab.generate.loras import (
    LoraUse,
    apply_loras,
    check_names,
    other_bases,
    resolve_loras,
    with_triggers,
)
from castlab.generate.pngmeta import parameters_text, save_with_parameters
from castlab.generate.prompts import BadLine, PromptLine
from castlab.generate.samplers import A1111_NAMES, scheduler_for
from castlab.pictures import Grid, thumbnail, tiny_stamp
from castlab.workspace import prepare_output_dir, short_hash, write_json_atomic, write_text_atomic

OUTPUTS = ("images", "rejected", "generation.json", "contact_sheet.png", "generation.md")
SIZE_STEP = 8  # image sides are multiples of this (the VAE's downscale)


@dataclass(frozen=True)
class Job:
    """One image to make (a retry is the same job with the next seed)."""

    index: int
    prompt: str  # with the LoRAs' triggers
    negative_prompt: str
    width: int
    height: int
    steps: int
    sampler: str
    guidance_scale: float
    seed: int
    source: str  # where the prompt came from ("<file>:<line>" or "--prompt")

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs that may share one pipeline call: the same size, steps, sampler and CFG."""
        return self.width, self.height, self.steps, self.sampler, self.guidance_scale


def _side(value: float) -> int:
    return max(SIZE_STEP, int(round(value / SIZE_STEP)) * SIZE_STEP)


def plan_jobs(lines: list[PromptLine], uses: list[LoraUse], cfg: Config, preset: str, images: int, seed: int,
              resolution: int) -> list[Job]:
    """Every image to make, in order: `images` per prompt; seeds count up from the line's ``--d``, else every image
    takes the next of `seed`, `seed` + 1, ..."""
    settings = cfg.generation.presets[preset]
    side = _side(resolution * float(settings.size_scale))
    jobs = []
    for line in lines:
        o = line.options
        for k in range(images):
            jobs.append(Job(
                len(jobs), with_triggers(line.prompt, uses),
                str(o.get("negative_prompt", cfg.generation.negative_prompt)),
                _side(o.get("width", side)), _side(o.get("height", side)), int(o.get("steps", settings.steps)),
                str(o.get("sampler", settings.sampler)), float(o.get("guidance_scale", settings.guidance_scale)),
                int(o["seed"]) + k if "seed" in o else seed + len(jobs), line.source))
    return jobs


def prepare_out_dir(out_dir: Path, force: bool) -> None:
    prepare_output_dir(out_dir, OUTPUTS, force, "generation", "generate into it again")
    (out_dir / "images").mkdir(exist_ok=True)


def base_source(uses: list[LoraUse], base: str | None) -> str | None:
    """The base model to load: `base`, else the one the LoRAs were trained from (when they agree), else None
    (the profile's)."""
    if base:
        return base
    sources = {u.entry.get("base_model_source") for u in uses} - {None}
    return sources.pop() if len(sources) == 1 else None


class Generator:
    """A loaded base model with its LoRAs (and a ControlNet), making images for jobs (schedulers made once per
    sampler)."""

    def __init__(self, pipe: Any, base_version: str, uses: list[LoraUse], cfg: Config, device: str,
                 control: Control | None = None) -> None:
        self.pipe, self.base_version, self.uses, self.cfg, self.device = pipe, base_version, uses, cfg, device
        self._schedulers: dict[str, Any] = {}
        self.clip_skip = int(cfg.training.clip_skip)
        self.base_hash = next((u.entry.get("base_model_hash") for u in uses if u.entry.get("base_model_hash")), None)
        self.lora_hashes = {u.name: u.entry.get("file_hash") or short_hash(Path(u.entry["file"])) for u in uses}
        self.control, self.control_pipe, self.control_version = control, None, None
        self._control_models: dict[str, Any] = {}
        if control is not None:
            self.control_pipe, self.control_version = control_pipeline(pipe, control.kind, cfg)

    @torch.no_grad()
    def make(self, jobs: list[Job]) -> list[Image.Image]:
        """The images of `jobs` (one batch key), each from its own seeded CPU generator."""
        from castlab.models.diffusion import prompt_conditioning

        first = jobs[0]
        if first.sampler not in self._schedulers:
            self._schedulers[first.sampler] = scheduler_for(self.pipe, first.sampler)
        self.pipe.scheduler = self._schedulers[first.sampler]
        conditioning = prompt_conditioning(self.pipe, [j.prompt for j in jobs], [j.negative_prompt for j in jobs],
                                           self.clip_skip)
        pipe, extra = self.pipe, {}
        if self.control is not None:
            image = condition(self.control, (first.width, first.height), self.cfg, self._control_models)
            pipe, extra = self.control_pipe, {"image": [image] * len(jobs),
                                              "controlnet_conditioning_scale": self.control.scale}
            pipe.scheduler = self.pipe.scheduler
        return pipe(**conditioning, **extra, width=first.width, height=first.height, num_inference_steps=first.steps,
                    guidance_scale=first.guidance_scale,
                    generator=[torch.Generator(device="cpu").manual_seed(j.seed) for j in jobs]).images

    def parameters(self, job: Job) -> str:
        """The A1111 parameters text of a job's image."""
        return parameters_text(with_lora_tags(job.prompt, self.uses), job.negative_prompt, {
            "Steps": job.steps, "Sampler": A1111_NAMES.get(job.sampler, job.sampler),
            "CFG scale": job.guidance_scale, "Seed": job.seed, "Size": f"{job.width}x{job.height}",
            "Model hash": self.base_hash, "Model": self.base_version,
            "Clip skip": self.clip_skip if self.clip_skip > 1 else None,
            "Lora hashes": ", ".join(f"{n}: {h}" for n, h in self.lora_hashes.items()) or None,
            "ControlNet": (f"{self.control.kind} {self.control.reference.name} scale {self.control.scale:g} "
                           f"model {self.control_version}") if self.control is not None else None,
            "Version": f"castlab{tiny_stamp(self.cfg.profile).replace(' ', '-')}",
        })


def control_pipeline(pipe: Any, kind: str, cfg: Config) -> tuple[Any, str]:
    """The ControlNet pipeline sharing `pipe`'s components (its LoRA adapters too) with the `kind` ControlNet."""
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

    from castlab.models.controlnet import load_controlnet
    from castlab.models.diffusion import is_sdxl

    model, version = load_controlnet(cfg, kind, pipe)
    cls = StableDiffusionXLControlNetPipeline if is_sdxl(pipe) else StableDiffusionControlNetPipeline
    control = cls.from_pipe(pipe, controlnet=model)
    control.set_progress_bar_config(disable=True)
    return control, version


def with_lora_tags(prompt: str, uses: list[LoraUse]) -> str:
    """`prompt` with A1111's ``<lora:name:weight>`` tags appended (how A1111 and its readers name LoRAs)."""
    return " ".join([prompt, *(f"<lora:{u.name}:{u.weight:g}>" for u in uses)])


def _batches(jobs: list[Job], size: int) -> list[list[Job]]:
    groups: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.batch_key(), []).append(job)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def run_jobs(generator: Generator, jobs: list[Job], out_dir: Path, check: Any, retries: int
             ) -> list[dict[str, Any]]:
    """Make, check, retry and save every job; one record per image kept (with its tries). A retry takes the job's
    seed plus the number of jobs: the next seed no other image of this run uses."""
    records: dict[int, dict[str, Any]] = {}
    batch_size = int(generator.cfg.generation.batch_size)
    with tqdm(total=len(jobs), desc="generate", unit="img") as bar:
        for batch in _batches(jobs, batch_size):
            pending = list(batch)
            for attempt in range(retries + 1):
                images = generator.make(pending)
                scores = check.scores(images) if check is not None else [{} for _ in images]
                again = []
                for job, image, score in zip(pending, images, scores, strict=True):
                    ok = check is None or check.passes(score)
                    record = records.setdefault(job.index, {"index": job.index, "source": job.source, "tries": []})
                    record["tries"].append({"seed": job.seed, "scores": score, "passed": ok})
                    last = ok or attempt == retries
                    folder = "images" if last else "rejected"
                    path = out_dir / folder / f"{job.index:04d}_s{job.seed}.png"
                    save_with_parameters(image, path, generator.parameters(job))
                    if last:
                        record.update(job=asdict(job), file=f"{folder}/{path.name}", passed=ok,
                                      passed_first_time=ok and attempt == 0, scores=score)
                        bar.update(1)
                    else:
                        again.append(replace(job, seed=job.seed + len(jobs)))
                pending = again
                if not pending:
                    break
    return [records[i] for i in sorted(records)]


def contact_sheet(records: list[dict[str, Any]], out_dir: Path, tile: int = 160) -> Image.Image:
    """The kept images, captioned with seed and score; flagged (off-model) ones outlined in red."""
    columns = min(6, max(1, len(records)))
    grid = Grid(columns, max(1, math.ceil(len(records) / columns)), (tile, tile), pad=6, caption_h=14)
    sheet, draw = grid.sheet()
    for n, record in enumerate(records):
        column, row = n % columns, n // columns
        score = min(record["scores"].values()) if record["scores"] else None
        caption = f"#{record['index']} s{record['job']['seed']}" + (f" id {score:.2f}" if score is not None else "")
        grid.put(sheet, draw, column, row, thumbnail(out_dir / record["file"], (tile, tile)), caption)
        if not record["passed"]:
            x, y = grid.origin(column, row)
            ImageDraw.Draw(sheet).rectangle((x - 3, y - 3, x + tile + 2, y + tile + 2), outline=(220, 30, 30),
                                            width=3)
    return sheet


def summary_markdown(report: dict[str, Any]) -> str:
    counts = report["counts"]
    lines = [f"# Generation{tiny_stamp(report['profile'])}", "",
             f"{counts['images']} images from {counts['prompts']} prompts on `{report['base_model']}` with "
             + (", ".join(f"`{u['name']}` at {u['weight']:g}" for u in report["loras"]) or "no LoRA") + ".", ""]
    if report["consistency"]:
        lines += [f"Consistency (threshold {report['consistency']['threshold']}): "
                  f"{counts['passed_first_time']} passed first time, {counts['passed']} passed in the end, "
                  f"{counts['flagged']} flagged off-model after {report['consistency']['retries']} retries.", ""]
    else:
        lines += ["No consistency check (no character LoRA in use, or --no-check).", ""]
    if report.get("control"):
        control = report["control"]
        lines += [f"ControlNet {control['kind']} from `{control['reference']}` at scale {control['scale']:g} "
                  f"({control['how']}; {control['model']}).", ""]
    for note in report["notes"]:
        lines.append(f"- note: {note}")
    for bad in report["bad_lines"]:
        lines.append(f"- bad prompt line {bad['source']}: {bad['problem']}")
    lines += ["", "![contact sheet](contact_sheet.png)"]
    return "\n".join(lines) + "\n"


def generate(lines: list[PromptLine], loras: list[tuple[str, float]], out_dir: Path, cfg: Config, *,
             bad_lines: list[BadLine] | None = None, base: str | None = None, preset: str | None = None,
             images: int = 1, seed: int | None = None, device: str = "cpu", check: bool = True,
             force: bool = False, control: Control | None = None) -> dict[str, Any]:
    """Generate (module docstring); the report (also ``generation.json``)."""
    from castlab.evaluate.registry import read_registry
    from castlab.generate.consistency import ConsistencyCheck
    from castlab.models.diffusion import load_base_pipeline, pipeline_family, training_resolution

    out_dir = Path(out_dir).resolve()
    preset = preset or str(cfg.generation.preset)
    if preset not in cfg.generation.presets:
        raise InputError(preset, f"is not a generation preset; known: {', '.join(cfg.generation.presets)}")
    if not lines:
        raise InputError("prompts", "no prompt to generate (every line was empty or bad)")
    registry = read_registry()
    check_names(list(loras), registry)  # before anything is loaded or written
    source = base_source([LoraUse(n, w, registry[n]) for n, w in loras if n in registry], base)
    prepare_out_dir(out_dir, force)
    pipe, version = load_base_pipeline(cfg, device, source)
    uses = resolve_loras(list(loras), registry, pipeline_family(pipe))
    apply_loras(pipe, uses)
    if cfg.generation.cpu_offload and str(device).startswith("cuda"):
        pipe.enable_sequential_cpu_offload()
    checker = ConsistencyCheck.for_loras(uses, cfg, device) if check else None
    retries = int(cfg.generation.consistency.retries) if checker is not None else 0
    first_seed = int(cfg.seed if seed is None else seed)
    jobs = plan_jobs(lines, uses, cfg, preset, int(images), first_seed, training_resolution(cfg))
    generator = Generator(pipe, version, uses, cfg, device, control)
    records = run_jobs(generator, jobs, out_dir, checker, retries)
    contact_sheet(records, out_dir).save(out_dir / "contact_sheet.png")
    report = {
        "profile": cfg.profile, "base_model": version, "base_source": source, "preset": preset,
        "loras": [{"name": u.name, "weight": u.weight, "type": u.entry.get("type", "character"),
                   "trigger": u.entry["trigger"], "file": u.entry["file"],
                   "file_hash": generator.lora_hashes[u.name]} for u in uses],
        "notes": other_bases(uses, version),
        "control": None if control is None else {"kind": control.kind, "reference": str(control.reference),
                                                 "scale": control.scale, "model": generator.control_version,
                                                 "how": control.how},
        "consistency": None if checker is None else {"threshold": checker.threshold, "retries": retries},
        "counts": {"prompts": len(lines), "images": len(records),
                   "passed_first_time": sum(r.get("passed_first_time", False) for r in records),
                   "passed": sum(r["passed"] for r in records), "flagged": sum(not r["passed"] for r in records),
                   "tries": sum(len(r["tries"]) for r in records)},
        "bad_lines": [asdict(b) for b in bad_lines or []], "images": records, "out_dir": str(out_dir),
    }
    write_json_atomic(out_dir / "generation.json", report)
    write_text_atomic(out_dir / "generation.md", summary_markdown(report))
    del generator, pipe, checker  # the last references to the models: release() can give their memory back
    release(device)
    return report


def release(device: str) -> None:
    """Give the memory of the models just used back (one base model per run: the next run may load another)."""
    import gc

    gc.collect()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
