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

The steps, which a flow runs as tasks (:func:`evaluate_checkpoints` runs them in this process):
:func:`plan_evaluation` (inputs, no model), :func:`reference_embeddings` (once), :func:`render_group` for each of
:func:`state_groups` (the base model, then each checkpoint at every weight: one task each, in any order and on
any worker) and :func:`finish_evaluation` (drift, aggregates, ranking, outputs). The reference and render
embeddings pass through ``scoring/`` and are removed once the report is written.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from castlab.config import Config
from castlab.errors import InputError
from castlab.evaluate.pictures import comparison_plot, family_grid, metric_curves
from castlab.evaluate.ranking import aggregate, rank, weight_key
from castlab.evaluate.render import RenderSettings, render_suite
from castlab.evaluate.suite import PromptSpec, suite_path, suite_prompts
from castlab.pictures import save_png
from castlab.workspace import short_hash, write_json_atomic

if TYPE_CHECKING:
    from castlab.evaluate.metrics import References

REPORT_NAME = "quality_evaluation.json"
COMPARISON_NAME = "comparison.json"
COMPARISON_PNG = "comparison.png"
CURVES_PNG = "metrics_by_step.png"
BASE_ROW = "base"
DATASET_FORMAT = "castlab-dataset/"
SCORING_DIR = "scoring"  # the references' and each render group's embeddings, until the report is written
REFERENCES_NAME = "references.npz"


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


def dataset_info(dataset: Path) -> dict[str, Any]:
    """What evaluation reads of the character's dataset without opening an image: character, trigger, class
    word and the train split's captions (caption prompts); :class:`InputError` when it lists no images."""
    meta = _dataset_meta(dataset) or {}
    images = list(meta.get("images") or [])
    if not images:
        raise InputError(dataset / "metadata.json", "lists no images: the character has no reference crops")
    train = _train_split(images)
    return {"character": str(meta["character"]), "trigger": str(meta.get("trigger") or ""),
            "class_word": str(meta.get("class_word") or ""), "captions": [str(e.get("caption") or "") for e in train],
            "type": str(meta.get("type") or "character"), "medium": meta.get("medium")}


def for_dataset_type(cfg: Config, dataset_type: str) -> Config:
    """`cfg` as an evaluation of a `dataset_type` dataset reads it: beyond characters the identity is the whole
    image (``evaluation.identity.region: image``; there is no face to find in a background, style or light)."""
    if dataset_type == "character" or cfg.evaluation.identity.region == "image":
        return cfg
    return cfg.with_overrides({"evaluation": {"identity": {"region": "image"}}})


def _train_split(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in images if e.get("split") == "train"] or images


def load_reference_set(dataset: Path, cfg: Config) -> dict[str, Any]:
    """The character's reference crops (view-balanced), the other characters' (sibling datasets), the train
    split images (memorisation) and captions (caption prompts)."""
    from castlab.identity.embed import view_balanced_sample

    info = dataset_info(dataset)
    images = list((_dataset_meta(dataset) or {})["images"])
    count, seed = int(cfg.evaluation.identity.references), int(cfg.seed)
    crops = {info["character"]: [_open(dataset, e) for e in view_balanced_sample(images, count, seed)]}
    for sibling in sorted(p for p in dataset.parent.iterdir() if p.is_dir() and p != dataset):
        other = _dataset_meta(sibling)  # rivals are datasets of the same type (a background is no character's rival)
        if other and other.get("images") and other.get("character") not in crops \
                and str(other.get("type") or "character") == info["type"]:
            crops[str(other["character"])] = [_open(sibling, e) for e in
                                             view_balanced_sample(other["images"], count, seed)]
    return {**info, "crops": crops, "train_images": [_open(dataset, e) for e in _train_split(images)]}


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
    """The model states rendered: the base model, then each checkpoint at each LoRA weight (plain data)."""
    weights = [float(w) for w in cfg.evaluation.lora_weights]
    states = [{"row": BASE_ROW, "checkpoint": BASE_ROW, "path": None, "weight": None, "step": None,
               "folder": BASE_ROW}]
    for path, meta in zip(checkpoints, metas, strict=True):
        step = _step(meta)
        for weight in weights:
            states.append({"row": f"{path.stem}@{weight_key(weight)}", "checkpoint": path.stem, "path": str(path),
                           "weight": weight, "step": step, "folder": f"{path.stem}/w{weight_key(weight)}"})
    return states


def evaluate_checkpoints(checkpoints: list[Path], out_dir: Path, cfg: Config, device: str = "cpu",
                         force: bool = False, dataset: Path | None = None) -> dict[str, Any]:
    """Render, score, gate and rank `checkpoints` against the base model (module docstring); the report.

    Four steps, which a flow runs as tasks (the renders fanned out, one task per :func:`state_groups` group):
    :func:`plan_evaluation`, :func:`reference_embeddings`, :func:`render_group` of each group,
    :func:`finish_evaluation`."""
    plan = plan_evaluation(checkpoints, out_dir, cfg, force=force, dataset=dataset)
    cfg = for_dataset_type(cfg, plan["dataset_type"])
    models = load_models(cfg, device)
    references = reference_embeddings(plan, cfg, models)
    groups = state_groups(plan)
    total = sum(len(g) for g in groups) * len(plan["specs"]) * len(cfg.evaluation.seeds)
    with tqdm(total=total, desc="evaluate: render", unit="img") as bar:
        parts = [render_group(plan, group, references["file"], cfg, models, bar) for group in groups]
    return finish_evaluation(plan, references, parts, cfg)


def plan_evaluation(checkpoints: list[Path], out_dir: Path, cfg: Config, force: bool = False,
                    dataset: Path | None = None) -> dict[str, Any]:
    """Everything an evaluation needs before a model is loaded, as plain data: the checkpoints and their
    metadata, the reference dataset and its character, the prompt suite, the model states and ``clip_skip``.
    Bad inputs fail here (a missing or foreign checkpoint, an earlier report without `force`, no dataset)."""
    out_dir = Path(out_dir).resolve()
    checkpoints = [Path(c).resolve() for c in checkpoints]
    metas = read_checkpoints(checkpoints, cfg)
    if (out_dir / REPORT_NAME).exists() and not force:
        raise InputError(out_dir, f"already holds {REPORT_NAME} (pass --force to evaluate again)")
    dataset = resolve_dataset(dataset, metas)
    info = dataset_info(dataset)
    specs = suite_prompts(cfg, info["trigger"], info["class_word"], info["captions"], info["type"], info["medium"])
    clip_skip = int(next((m["ss_clip_skip"] for m in metas if str(m.get("ss_clip_skip", "")).isdigit()), None)
                    or cfg.training.clip_skip)  # sd-scripts writes "None" when clip_skip was not set
    return {"out_dir": str(out_dir), "checkpoints": [str(c) for c in checkpoints], "metas": metas,
            "dataset": str(dataset), "dataset_type": info["type"], "character": info["character"],
            "trigger": info["trigger"],
            "class_word": info["class_word"], "specs": [s.to_dict() for s in specs],
            "states": _states(checkpoints, metas, cfg), "clip_skip": clip_skip}


def state_groups(plan: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The plan's states by checkpoint, in order: the base model, then each checkpoint at all its weights (the
    unit of one render task)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for state in plan["states"]:
        groups.setdefault(state["checkpoint"], []).append(state)
    return list(groups.values())


@dataclass
class EvaluationModels:
    """What rendering and scoring need: the base pipeline (and its version), DINOv2, the face analyzer (None
    under ``evaluation.identity.region: image``) and open_clip."""

    pipe: Any
    base_version: str
    encoder: Any
    analyzer: Any
    embedder: Any


def load_models(cfg: Config, device: str = "cpu") -> EvaluationModels:
    """The models of an evaluation for the active profile, on `device`."""
    from castlab.models.diffusion import load_base_pipeline
    from castlab.models.embedder import load_embedder
    from castlab.models.faces import load_face_analyzer
    from castlab.models.image_encoder import load_image_encoder

    pipe, base_version = load_base_pipeline(cfg, device)
    analyzer = load_face_analyzer(cfg, device) if cfg.evaluation.identity.region == "face" else None
    return EvaluationModels(pipe, base_version, load_image_encoder(cfg, device), analyzer,
                            load_embedder(cfg, device))


def reference_embeddings(plan: dict[str, Any], cfg: Config, models: EvaluationModels) -> dict[str, Any]:
    """Check the checkpoints' architecture against the base model, embed the reference crops and the training
    images once, into ``scoring/references.npz`` (what every :func:`render_group` scores against); returns
    ``{"file", "meta", "model_versions"}``."""
    from castlab.evaluate.metrics import build_references, embed_training_images
    from castlab.models.diffusion import is_sdxl

    check_architecture([Path(c) for c in plan["checkpoints"]], plan["metas"], is_sdxl(models.pipe))
    dataset = Path(plan["dataset"])
    refs_in = load_reference_set(dataset, cfg)
    refs = build_references(refs_in["crops"], models.encoder, models.analyzer, cfg, source=str(dataset))
    train = embed_training_images(refs_in["train_images"], models.encoder, cfg)
    path = Path(plan["out_dir"]) / SCORING_DIR / REFERENCES_NAME
    names = list(refs.dino)
    arrays = {"names": np.array(names, dtype=str), "train": train}
    for i, name in enumerate(names):
        arrays[f"dino_{i}"], arrays[f"arcface_{i}"] = refs.dino[name], refs.arcface[name]
    _save_npz(path, arrays)
    versions = {"base_model": models.base_version, "image_encoder": models.encoder.model_version,
                "embedder": models.embedder.model_version, "faces": getattr(models.analyzer, "model_version", None)}
    return {"file": str(path), "meta": refs.meta, "model_versions": versions}


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from castlab.workspace import atomic_path

    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, **arrays)


def load_references(path: Path, source: str) -> tuple[References, np.ndarray]:
    """The references and training-image embeddings :func:`reference_embeddings` wrote."""
    from castlab.evaluate.metrics import References

    with np.load(path, allow_pickle=False) as data:
        names = data["names"].tolist()
        dino = {name: data[f"dino_{i}"] for i, name in enumerate(names)}
        arcface = {name: data[f"arcface_{i}"] for i, name in enumerate(names)}
        return References(dino, arcface, source), data["train"]


def render_group(plan: dict[str, Any], group: list[dict[str, Any]], references: str, cfg: Config,
                 models: EvaluationModels, progress: tqdm | None = None) -> dict[str, Any]:
    """Render the suite for each state of `group` (:func:`state_groups`: the base model, or one checkpoint at
    each weight) and score every image (``drift`` is left to :func:`finish_evaluation`, which has the base
    model's images). Returns ``{"rows", "embeddings"}``: the scored renders and the file of their whole-image
    DINOv2 embeddings (``scoring/<checkpoint>.npz``) — small enough to come back from another worker."""
    from castlab.evaluate.metrics import score_images
    from castlab.models.kohya import load_lora_into_pipeline

    out_dir = Path(plan["out_dir"])
    specs = [PromptSpec(**s) for s in plan["specs"]]
    settings = render_settings(cfg, int(plan["clip_skip"]))
    refs, train = load_references(Path(references), plan["dataset"])
    pipe = models.pipe
    own_bar = progress is None
    bar = tqdm(total=len(group) * len(specs) * len(settings.seeds), desc=f"evaluate: {group[0]['checkpoint']}",
               unit="img") if own_bar else progress
    rows: list[dict[str, Any]] = []
    vectors = []
    try:
        for state in group:
            path = Path(state["path"]) if state["path"] else None
            if path is not None:
                adapter = load_lora_into_pipeline(pipe, path, adapter_name="castlab_eval")
                pipe.set_adapters([adapter], adapter_weights=[state["weight"]])
            try:
                key = {"base_model": models.base_version, "checkpoint": str(path or ""),
                       "checkpoint_file": _file_stamp(path), "weight": state["weight"], "suite": plan["specs"]}
                records = render_suite(pipe, specs, settings, out_dir / state["folder"], key, bar)
            finally:
                if path is not None:
                    pipe.unload_lora_weights()
            renders = [{**{k: v for k, v in r.items() if k != "path"}, "row": state["row"],
                        "checkpoint": state["checkpoint"], "weight": state["weight"], "step": state["step"],
                        "file": Path(r["path"]).relative_to(out_dir).as_posix()} for r in records]
            images = []
            for r in records:
                with Image.open(r["path"]) as im:
                    images.append(im.convert("RGB"))
            scored, whole = score_images(renders, images, refs, plan["character"], models.encoder, models.analyzer,
                                         models.embedder, train, None, cfg, drift=False)
            rows += scored
            vectors.append(whole)
    finally:
        if own_bar:
            bar.close()
    file = out_dir / SCORING_DIR / f"{group[0]['checkpoint']}.npz"
    _save_npz(file, {"embeddings": np.concatenate(vectors).astype(np.float32)})
    return {"rows": rows, "embeddings": str(file)}


def _load_part(part: dict[str, Any]) -> np.ndarray:
    path = Path(part["embeddings"])
    try:
        with np.load(path, allow_pickle=False) as data:
            vectors = data["embeddings"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(path, f"render embeddings are not readable ({exc})") from exc
    if len(vectors) != len(part["rows"]):
        raise InputError(path, f"holds {len(vectors)} embeddings for {len(part['rows'])} renders")
    return vectors


def finish_evaluation(plan: dict[str, Any], references: dict[str, Any], parts: list[dict[str, Any]],
                      cfg: Config) -> dict[str, Any]:
    """The rendered groups (:func:`render_group`, in :func:`state_groups` order) → drift against the base
    model's images, aggregates, gates, ranking, recommendation, pictures and ``quality_evaluation.json``
    (no model needed); the report."""
    from castlab.evaluate.metrics import add_drift

    out_dir = Path(plan["out_dir"])
    vectors = [_load_part(p) for p in parts]
    embeddings = list(np.concatenate(vectors)) if vectors else []
    rows = add_drift([r for p in parts for r in p["rows"]], embeddings)
    aggregates = aggregate(rows, cfg, embeddings)
    ranking = rank(aggregates, cfg, base=BASE_ROW)
    recommended = ranking.get("recommended")
    by_name = {Path(c).stem: c for c in plan["checkpoints"]}
    tiny = cfg.profile == "tiny"
    note = ("tiny profile: random-weight models (base, DINOv2, CLIP, faces): the numbers exercise the method, "
            "they say nothing about a LoRA") if tiny else None
    settings = render_settings(cfg, int(plan["clip_skip"]))
    specs = [PromptSpec(**s) for s in plan["specs"]]
    report = {
        "profile": cfg.profile, "note": note, "model_versions": references["model_versions"],
        "character": plan["character"], "trigger": plan["trigger"], "class_word": plan["class_word"],
        "dataset": plan["dataset"], "dataset_type": plan.get("dataset_type", "character"),
        "references": references["meta"],
        "suite": {"file": str(suite_path(cfg, plan.get("dataset_type", "character"))), "prompts": plan["specs"]},
        "settings": {"seeds": list(settings.seeds), "steps": settings.steps,
                     "guidance_scale": settings.guidance_scale, "width": settings.width, "height": settings.height,
                     "clip_skip": settings.clip_skip, "lora_weights": [float(w) for w in cfg.evaluation.lora_weights],
                     "identity": dict(cfg.evaluation.identity)},
        "checkpoints": [{"name": Path(c).stem, "file": c, "step": _step(m),
                         "output_name": m.get("ss_output_name") or Path(c).stem,
                         "base_model_version": m.get("castlab_base_model_version"),
                         "base_model": m.get("castlab_base_model")}
                        for c, m in zip(plan["checkpoints"], plan["metas"], strict=True)],
        "aggregates": aggregates, "ranking": ranking,
        "recommended": recommended, "recommended_file": by_name[recommended] if recommended else None,
        "reason": ranking.get("reason"),
        "renders": rows,
    }
    files = write_outputs(out_dir, report, plan["states"], specs, tiny)
    report["files"] = files
    write_json_atomic(out_dir / REPORT_NAME, report)
    _remove_scoring(out_dir, [references["file"], *(p["embeddings"] for p in parts)])
    return {**report, "out_dir": str(out_dir), "report": str(out_dir / REPORT_NAME)}


def _remove_scoring(out_dir: Path, files: list[str]) -> None:
    """The intermediate embedding files are not part of the output contract: gone once the report is written."""
    for file in files:
        Path(file).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (out_dir / SCORING_DIR).rmdir()


def base_model_hash(source: str | None) -> str | None:
    """The short SHA-256 of a single-file base checkpoint (AUTOMATIC1111's model hash); None for a diffusers folder
    or hub id (their version string names them)."""
    path = Path(str(source or "")).expanduser()
    return short_hash(path) if path.suffix in (".safetensors", ".ckpt") and path.is_file() else None


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
             "checkpoint": name, "step": checkpoint["step"], "weight": report["ranking"].get("weight"),
             "type": report.get("dataset_type", "character"), "dataset": report.get("dataset"),
             "file_hash": short_hash(Path(checkpoint["file"])),
             "base_model_source": checkpoint.get("base_model"),
             "base_model_hash": base_model_hash(checkpoint.get("base_model"))}
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
