"""Checkpoint evaluation: render a prompt suite for the base model and every checkpoint, score identity, prompt
following, diversity, memorisation and leakage, gate and rank without hand-set weights, recommend one.

Output contract (``out_dir``)::

    base/<prompt>_s<seed>.png                   the base model (the reference row; same seeds and settings)
    <checkpoint>/w<weight>/<prompt>_s<seed>.png  each checkpoint at each evaluation.lora_weights
    quality_evaluation.json                     every image's metrics, every aggregate with its interval, gates,
                                                ranking, recommendation and why
    grid_<family>.png                           rows = base + checkpoints, columns = the family's prompts x seeds
    metrics_by_step.png                         each metric (mean, 95 % interval) against the checkpoint's step
    comparison.json, comparison.png             per checkpoint: status, rank, metrics, reasons; the
                                                identity x prompt-following plane with the Pareto front

References come from the character's castlab dataset (``--dataset``, else the ``castlab_dataset`` the
checkpoints were trained from): its images are the reviewed crops of the character, its sibling datasets (the
other characters of the same film) are the rivals of the identity margin, its train split is what
memorisation compares with, and its captions are echoed as prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from castlab.config import Config
from castlab.errors import InputError
from castlab.evaluate.pictures import comparison_plot, family_grid, metric_curves
from castlab.evaluate.ranking import aggregate, rank, weight_key
from castlab.evaluate.render import RenderSettings, render_suite
from castlab.evaluate.suite import PromptSpec, suite_path, suite_prompts
from castlab.pictures import save_png
from castlab.workspace import write_json_atomic

REPORT_NAME = "quality_evaluation.json"
COMPARISON_NAME = "comparison.json"
COMPARISON_PNG = "comparison.png"
CURVES_PNG = "metrics_by_step.png"
BASE_ROW = "base"
DATASET_FORMAT = "castlab-dataset/"


# -- inputs ---------------------------------------------------------------------------------------------------
def read_checkpoints(checkpoints: list[Path], cfg: Config) -> list[dict[str, str]]:
    """Each checkpoint's kohya metadata; clear errors for a missing or foreign file, a duplicate name or another
    profile."""
    from castlab.models.kohya import read_kohya_metadata

    if not checkpoints:
        raise InputError("-", "no checkpoints to evaluate")
    stems = [Path(c).stem for c in checkpoints]
    if len(set(stems)) != len(stems) or BASE_ROW in stems:
        raise InputError(Path(checkpoints[0]).parent, f"checkpoint names must be unique and not {BASE_ROW!r}: "
                                                      f"{stems}")
    metas = []
    for path in checkpoints:
        meta = read_kohya_metadata(Path(path))
        stamped = meta.get("castlab_profile")
        if stamped and stamped != cfg.profile:
            raise InputError(path, f"was trained under the {stamped} profile; evaluate it under that profile")
        metas.append(meta)
    return metas


def check_architecture(checkpoints: list[Path], metas: list[dict[str, str]], sdxl: bool) -> None:
    """A LoRA made for the other family (SD1.x vs SDXL) than the loaded base model is an error naming its file."""
    for path, meta in zip(checkpoints, metas, strict=True):
        arch = str(meta.get("modelspec.architecture") or meta.get("ss_base_model_version") or "")
        if arch and ("xl" in arch.lower()) != sdxl:
            raise InputError(path, f"is a LoRA for {arch!r}, but the base model is "
                                   f"{'SDXL' if sdxl else 'SD1.x'} (models.*.base_model)")


def _dataset_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if str(meta.get("format", "")).startswith(DATASET_FORMAT) else None


def resolve_dataset(dataset: Path | None, metas: list[dict[str, str]]) -> Path:
    """The character dataset the references come from: `dataset`, else the one every checkpoint names."""
    if dataset is None:
        named = {m.get("castlab_dataset") or "" for m in metas}
        if len(named) != 1 or not (only := named.pop()):
            raise InputError("-", "no reference set: the checkpoints do not name one castlab dataset "
                                  "(castlab_dataset); pass --dataset <the character's dataset folder>")
        dataset = Path(only)
    dataset = Path(dataset).expanduser().resolve()
    if _dataset_meta(dataset) is None:
        raise InputError(dataset / "metadata.json", "is not a castlab dataset (the reference set of the "
                                                    "character): build it with `castlab dataset`")
    return dataset


def _open(folder: Path, entry: dict[str, Any]) -> Image.Image:
    from castlab.layers import open_rgba

    return open_rgba(folder / str(entry["image"]), "dataset image")


def load_reference_set(dataset: Path, cfg: Config) -> dict[str, Any]:
    """The character's reference crops (view-balanced), the other characters' (sibling datasets), the train
    split images (memorisation) and captions (caption prompts)."""
    from castlab.identity.embed import view_balanced_sample

    meta = _dataset_meta(dataset) or {}
    count, seed = int(cfg.evaluation.identity.references), int(cfg.seed)
    images = list(meta.get("images") or [])
    if not images:
        raise InputError(dataset / "metadata.json", "lists no images: the character has no reference crops")
    crops = {str(meta["character"]): [_open(dataset, e) for e in view_balanced_sample(images, count, seed)]}
    for sibling in sorted(p for p in dataset.parent.iterdir() if p.is_dir() and p != dataset):
        other = _dataset_meta(sibling)
        if other and other.get("images") and other.get("character") not in crops:
            crops[str(other["character"])] = [_open(sibling, e) for e in
                                             view_balanced_sample(other["images"], count, seed)]
    train = [e for e in images if e.get("split") == "train"] or images
    return {"character": str(meta["character"]), "trigger": str(meta.get("trigger") or ""),
            "class_word": str(meta.get("class_word") or ""), "crops": crops,
            "train_images": [_open(dataset, e) for e in train],
            "captions": [str(e.get("caption") or "") for e in train]}


# -- the run ----------------------------------------------------------------------------------------------------
def render_settings(cfg: Config, clip_skip: int) -> RenderSettings:
    from castlab.models.diffusion import training_resolution

    size = training_resolution(cfg)
    return RenderSettings(tuple(int(s) for s in cfg.evaluation.seeds), int(cfg.evaluation.steps),
                          float(cfg.evaluation.guidance_scale), size, size, int(cfg.evaluation.batch_size),
                          clip_skip)


def _file_stamp(path: Path | None) -> list[Any] | None:
    """Size and modification time of a checkpoint file: a retrained file at the same path is rendered again."""
    if path is None:
        return None
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime_ns]


def _step(meta: dict[str, str]) -> int | None:
    """The checkpoint's training step (sd-scripts' ``ss_steps``), None when not recorded."""
    return int(meta["ss_steps"]) if str(meta.get("ss_steps", "")).isdigit() else None


def _states(checkpoints: list[Path], metas: list[dict[str, str]], cfg: Config) -> list[dict[str, Any]]:
    """The model states rendered: the base model, then each checkpoint at each LoRA weight."""
    weights = [float(w) for w in cfg.evaluation.lora_weights]
    states = [{"row": BASE_ROW, "checkpoint": BASE_ROW, "path": None, "weight": None, "step": None,
               "folder": BASE_ROW}]
    for path, meta in zip(checkpoints, metas, strict=True):
        step = _step(meta)
        for weight in weights:
            states.append({"row": f"{path.stem}@{weight_key(weight)}", "checkpoint": path.stem, "path": path,
                           "weight": weight, "step": step, "folder": f"{path.stem}/w{weight_key(weight)}"})
    return states


def evaluate_checkpoints(checkpoints: list[Path], out_dir: Path, cfg: Config, device: str = "cpu",
                         force: bool = False, dataset: Path | None = None) -> dict[str, Any]:
    """Render, score, gate and rank `checkpoints` against the base model (module docstring); the report."""
    from castlab.evaluate.metrics import base_embeddings, build_references, embed_training_images, score_images
    from castlab.models.diffusion import is_sdxl, load_base_pipeline
    from castlab.models.embedder import load_embedder
    from castlab.models.faces import load_face_analyzer
    from castlab.models.image_encoder import load_image_encoder
    from castlab.models.kohya import load_lora_into_pipeline

    out_dir = Path(out_dir).resolve()
    checkpoints = [Path(c).resolve() for c in checkpoints]
    metas = read_checkpoints(checkpoints, cfg)
    if (out_dir / REPORT_NAME).exists() and not force:
        raise InputError(out_dir, f"already holds {REPORT_NAME} (pass --force to evaluate again)")
    dataset = resolve_dataset(dataset, metas)
    refs_in = load_reference_set(dataset, cfg)
    character, trigger, class_word = refs_in["character"], refs_in["trigger"], refs_in["class_word"]
    specs = suite_prompts(cfg, trigger, class_word, refs_in["captions"])

    pipe, base_version = load_base_pipeline(cfg, device)
    sdxl = is_sdxl(pipe)
    check_architecture(checkpoints, metas, sdxl)
    encoder = load_image_encoder(cfg, device)
    analyzer = load_face_analyzer(cfg, device) if cfg.evaluation.identity.region == "face" else None
    embedder = load_embedder(cfg, device)
    refs = build_references(refs_in["crops"], encoder, analyzer, cfg, source=str(dataset))
    train_embeddings = embed_training_images(refs_in["train_images"], encoder, cfg)

    states = _states(checkpoints, metas, cfg)
    clip_skip = int(next((m["ss_clip_skip"] for m in metas if str(m.get("ss_clip_skip", "")).isdigit()), None)
                    or cfg.training.clip_skip)  # sd-scripts writes "None" when clip_skip was not set
    settings = render_settings(cfg, clip_skip)
    total = len(states) * len(specs) * len(settings.seeds)
    rows: list[dict[str, Any]] = []
    embeddings = []
    base_lookup: dict[tuple[str, int], Any] = {}
    with tqdm(total=total, desc="evaluate: render", unit="img") as bar:
        for state in states:
            if state["path"] is not None:
                adapter = load_lora_into_pipeline(pipe, state["path"], adapter_name="castlab_eval")
                pipe.set_adapters([adapter], adapter_weights=[state["weight"]])
            try:
                key = {"base_model": base_version, "checkpoint": str(state["path"] or ""),
                       "checkpoint_file": _file_stamp(state["path"]), "weight": state["weight"],
                       "suite": [s.to_dict() for s in specs]}
                records = render_suite(pipe, specs, settings, out_dir / state["folder"], key, bar)
            finally:
                if state["path"] is not None:
                    pipe.unload_lora_weights()
            renders = [{**{k: v for k, v in r.items() if k != "path"}, "row": state["row"],
                        "checkpoint": state["checkpoint"], "weight": state["weight"], "step": state["step"],
                        "file": Path(r["path"]).relative_to(out_dir).as_posix()} for r in records]
            images = []
            for r in records:
                with Image.open(r["path"]) as im:
                    images.append(im.convert("RGB"))
            scored, vectors = score_images(renders, images, refs, character, encoder, analyzer, embedder,
                                           train_embeddings, base_lookup, cfg)
            if state["path"] is None:
                base_lookup = base_embeddings(scored, vectors)
            rows += scored
            embeddings += list(vectors)

    aggregates = aggregate(rows, cfg, embeddings)
    ranking = rank(aggregates, cfg, base=BASE_ROW)
    by_name = {c.stem: c for c in checkpoints}
    recommended = ranking.get("recommended")
    tiny = cfg.profile == "tiny"
    note = ("tiny profile: random-weight models (base, DINOv2, CLIP, faces): the numbers exercise the method, "
            "they say nothing about a LoRA") if tiny else None
    report = {
        "profile": cfg.profile, "note": note,
        "model_versions": {"base_model": base_version, "image_encoder": encoder.model_version,
                           "embedder": embedder.model_version,
                           "faces": getattr(analyzer, "model_version", None)},
        "character": character, "trigger": trigger, "class_word": class_word,
        "dataset": str(dataset), "references": refs.meta,
        "suite": {"file": str(suite_path(cfg)), "prompts": [s.to_dict() for s in specs]},
        "settings": {"seeds": list(settings.seeds), "steps": settings.steps,
                     "guidance_scale": settings.guidance_scale, "width": settings.width, "height": settings.height,
                     "clip_skip": settings.clip_skip, "lora_weights": [float(w) for w in cfg.evaluation.lora_weights],
                     "identity": dict(cfg.evaluation.identity)},
        "checkpoints": [{"name": c.stem, "file": str(c), "step": _step(m),
                         "output_name": m.get("ss_output_name") or c.stem,
                         "base_model_version": m.get("castlab_base_model_version")}
                        for c, m in zip(checkpoints, metas, strict=True)],
        "aggregates": aggregates, "ranking": ranking,
        "recommended": recommended, "recommended_file": str(by_name[recommended]) if recommended else None,
        "reason": ranking.get("reason"),
        "renders": rows,
    }
    files = write_outputs(out_dir, report, states, specs, tiny)
    report["files"] = files
    write_json_atomic(out_dir / REPORT_NAME, report)
    return {**report, "out_dir": str(out_dir), "report": str(out_dir / REPORT_NAME)}


def registry_entry(report: dict[str, Any], name: str, chosen_by: str, agreement: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The LoRA registry entry (castlab/evaluate/registry.py) of checkpoint `name` of an evaluation report."""
    checkpoint = next(c for c in report["checkpoints"] if c["name"] == name)
    row = report["ranking"]["checkpoints"][name]
    version = str(report["model_versions"]["base_model"])
    entry = {"name": str(checkpoint["output_name"]), "character": report["character"], "trigger": report["trigger"],
             "class_word": report["class_word"], "base_model": version,
             "arch": "sdxl" if "sdxl" in version else "sd15", "file": checkpoint["file"],
             "metrics": row.get("metrics") or {}, "chosen_by": chosen_by, "evaluation": report["out_dir"],
             "checkpoint": name, "step": checkpoint["step"], "weight": report["ranking"].get("weight")}
    if agreement is not None:
        entry["agreement"] = agreement
    return entry


# -- outputs ----------------------------------------------------------------------------------------------------
def _row_label(state: dict[str, Any], ranking: dict[str, Any]) -> str:
    if state["path"] is None:
        return "base model\n(no LoRA)"
    row = (ranking.get("checkpoints") or {}).get(state["checkpoint"]) or {}
    metrics = row.get("metrics") or {}
    ident, follow = metrics.get("identity"), metrics.get("prompt_following")
    rank_text = f"#{row['rank']} " if row.get("rank") else ""
    return "\n".join([f"{rank_text}{state['checkpoint']}", f"step {state['step']}  weight {state['weight']}",
                      f"{row.get('status', '')}",
                      f"id {ident:.3f}  clip {follow:.3f}" if ident is not None and follow is not None else ""])


def write_outputs(out_dir: Path, report: dict[str, Any], states: list[dict[str, Any]], specs: list[PromptSpec],
                  tiny: bool) -> dict[str, str]:
    """Grids per family, metric curves and the comparison JSON/PNG; their file names."""
    ranking, aggregates = report["ranking"], report["aggregates"]
    ranked_weight = weight_key(float(report["settings"]["lora_weights"][0]))
    shown = [s for s in states if s["path"] is None or weight_key(s["weight"]) == ranked_weight]
    labels = [(s["row"], _row_label(s, ranking)) for s in shown]
    files = {}
    for family in dict.fromkeys(s.family for s in specs):
        name = f"grid_{family}.png"
        save_png(family_grid(out_dir, family, labels, report["renders"], tiny), out_dir / name)
        files[f"grid_{family}"] = name
    points = sorted(({"step": s["step"], "metrics": aggregates[s["checkpoint"]]["weights"][ranked_weight]}
                     for s in shown if s["path"] is not None), key=lambda p: (p["step"] is None, p["step"] or 0))
    base = aggregates.get(BASE_ROW, {}).get("weights", {}).get("none", {})
    save_png(metric_curves(points, base, tiny), out_dir / CURVES_PNG)
    save_png(comparison_plot(ranking, tiny), out_dir / COMPARISON_PNG)
    comparison = {
        "profile": report["profile"], "note": report["note"], "character": report["character"],
        "recommended": report["recommended"], "recommended_file": report["recommended_file"],
        "reason": report["reason"], "front": ranking.get("front"), "ranking": ranking.get("ranking"),
        "base": ranking.get("base"),
        "checkpoints": {name: {k: row.get(k) for k in ("step", "status", "rank", "score", "metrics", "normalised",
                                                       "gates", "reasons")}
                        for name, row in (ranking.get("checkpoints") or {}).items()},
        "intervals": {name: agg["weights"].get(ranked_weight) for name, agg in aggregates.items()
                      if name != BASE_ROW},
    }
    write_json_atomic(out_dir / COMPARISON_NAME, comparison)
    files.update(curves=CURVES_PNG, comparison=COMPARISON_NAME, comparison_png=COMPARISON_PNG)
    return files
