"""Dataset assembly: reviewed instance crops → a LoRA training dataset.

Output contract (``out_dir``)::

    images/<name>.png          RGB, crop composited on ``dataset.background_rgb``, letterboxed to
                               ``dataset.resolution`` (aspect kept)
    captions/<name>.txt        the caption (reviewed caption, else the caption stage's prediction, else a
                               template from ``dataset.*``)
    metadata.json              per image: source row, shot, split, caption, its source, CLIP token count
    kohya/<repeats>_<trigger> <class_word>/   train split only: image + .txt (kohya folder layout)
    dataset_config.toml        kohya dataset config ([general] / [[datasets]] / [[datasets.subsets]])
    training.toml              ``training.template`` filled in (see the template's header)

The train/val split is by shot (frames of one shot never straddle it), seeded by ``seed``.
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from PIL import Image
from tqdm import tqdm

from castlab.config import PROJECT_ROOT, Config
from castlab.errors import ConfigError, InputError
from castlab.frames.splits import row_splits, shot_key
from castlab.layers import media_path, open_rgba, safe_name
from castlab.manifest import row_text
from castlab.rows import chunked
from castlab.workspace import atomic_path, write_json_atomic, write_text_atomic

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

OUTPUTS = ("images", "captions", "kohya", "metadata.json", "dataset_config.toml", "training.toml")
_PLACEHOLDER = re.compile(r"^\$\{(cfg|castlab):([A-Za-z0-9_.]+)\}$")
_CAPTION_FIELDS = ("view", "shot_size", "lighting")  # structured review choices, used when present


def letterbox(image: Image.Image, size: int, background: tuple[int, int, int]) -> Image.Image:
    """Composite an RGBA/RGB image on `background` and fit it, aspect kept, centred in a size×size square."""
    rgba = image.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, (*background, 255))
    flat.alpha_composite(rgba)  # composite first: no colour fringes from transparent pixels when resizing
    scale = size / max(rgba.size)
    w, h = max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale))
    canvas = Image.new("RGB", (size, size), background)
    resized = flat.convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
    canvas.paste(resized, ((size - w) // 2, (size - h) // 2))
    return canvas


def caption_source(row: dict[str, Any]) -> str:
    """Where the row's dataset caption comes from: ``reviewed`` (Label Studio), ``predicted`` (the caption
    stage, not reviewed yet) or ``template``."""
    if row_text(row.get("caption")):
        return "reviewed"
    return "predicted" if row_text(row.get("caption_pred")) else "template"


def build_caption(row: dict[str, Any], cfg: Config) -> str:
    """The row's reviewed caption, else its predicted caption (both led by the trigger phrase), else
    ``<trigger> <class_word>, <caption_prefix>`` plus the structured fields (view, shot size, lighting)
    the row carries."""
    lead = f"{cfg.dataset.trigger_token} {cfg.dataset.class_word}"
    caption = row_text(row.get("caption")) or row_text(row.get("caption_pred"))
    if caption:
        return caption if caption.lower().startswith(lead.lower()) else f"{lead}, {caption}"
    parts = [lead, str(cfg.dataset.caption_prefix)] + [row_text(row.get(k)) for k in _CAPTION_FIELDS]
    return ", ".join(p for p in parts if p)


def fill_template(template: Any, cfg: Config, values: dict[str, Any]) -> Any:
    """Replace ``"${cfg:key}"`` and ``"${castlab:name}"`` string values (recursively) with typed values."""
    if isinstance(template, dict):
        return {k: fill_template(v, cfg, values) for k, v in template.items()}
    if isinstance(template, list):
        return [fill_template(v, cfg, values) for v in template]
    if isinstance(template, str) and (m := _PLACEHOLDER.match(template)):
        kind, key = m.groups()
        if kind == "cfg":
            return cfg.value(key)
        if key not in values:
            raise ConfigError(
                f"training.template: unknown placeholder ${{castlab:{key}}} (known: {sorted(values)})"
            )
        return values[key]
    return template


def apply_overrides(toml: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set each override key in the section that already holds it (top level when none does)."""
    for key, value in overrides.items():
        section = next((s for s in toml.values() if isinstance(s, dict) and key in s), toml)
        section[key] = value
    return toml


def flatten_toml(toml: dict[str, Any]) -> dict[str, Any]:
    """kohya's reading of a training TOML: top-level keys plus every section's keys, flattened."""
    flat: dict[str, Any] = {}
    for key, value in toml.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def load_template(cfg: Config) -> dict[str, Any]:
    path = Path(str(cfg.training.template))
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    if not path.is_file():
        raise ConfigError(f"training.template: {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"is not valid TOML ({exc})") from exc


def _unique_names(rows: list[dict[str, Any]]) -> list[str]:
    names, used = [], set()
    for row in rows:
        name = safe_name(str(row["row_id"]))
        if name in used:
            name = f"{name}-{hashlib.sha1(str(row['row_id']).encode()).hexdigest()[:8]}"
        used.add(name)
        names.append(name)
    return names


def _check_rows(rows: list[dict[str, Any]], out_dir: Path) -> None:
    if not rows:
        raise InputError(out_dir, "no reviewed instance rows to build a dataset from (review masks first)")
    ids = [r.get("row_id") for r in rows]
    for row in rows:
        if not row.get("row_id") or not row_text(row.get("crop_path")):
            raise InputError(out_dir, f"dataset row lacks row_id or crop_path: {row}")
    if len(set(ids)) != len(ids):
        raise InputError(out_dir, "dataset rows repeat a row_id")


def _prepare_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise InputError(out_dir, "dataset folder is not empty (pass --force to rebuild it)")
        for name in OUTPUTS:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


DATASET_CHUNK = 64  # rows per process() call: the progress bar's step


@dataclass(frozen=True)
class Layout:
    """Where a dataset's files go: folders, the split of every shot, and each row's unique file name."""

    out_dir: Path
    kohya_dir: Path
    splits: dict[str, str]
    names: dict[str, str]


def process(rows: list[dict[str, Any]], cfg: Config, models: Any, *, layout: Layout) -> list[dict[str, Any]]:
    """Write one chunk of reviewed instance rows into the dataset (image, caption, kohya copy for train rows);
    `models` is the CLIP tokenizer (caption token counts). Returns the ``metadata.json`` entries."""
    size = int(cfg.dataset.resolution)
    background = tuple(cfg.dataset.background_rgb)
    entries = []
    for row in rows:
        name = layout.names[str(row["row_id"])]
        crop_path = media_path(row["crop_path"])
        crop = open_rgba(crop_path, "instance crop")
        image = letterbox(crop, size, background)
        caption = build_caption(row, cfg)
        split = layout.splits[shot_key(row)]
        with atomic_path(layout.out_dir / "images" / f"{name}.png") as tmp:
            image.save(tmp, format="PNG")
        write_text_atomic(layout.out_dir / "captions" / f"{name}.txt", caption + "\n")
        if split == "train":
            shutil.copyfile(layout.out_dir / "images" / f"{name}.png", layout.kohya_dir / f"{name}.png")
            write_text_atomic(layout.kohya_dir / f"{name}.txt", caption + "\n")
        entries.append({
            "image": f"images/{name}.png",
            "caption_file": f"captions/{name}.txt",
            "caption": caption,
            "caption_tokens": len(models(caption).input_ids),
            "caption_source": caption_source(row),
            "split": split,
            "row_id": str(row["row_id"]),
            "shot_id": row_text(row.get("shot_id")) or None,
            "video_id": row_text(row.get("video_id")) or None,
            "shot_key": shot_key(row),
            "identity": row_text(row.get("identity")) or None,
            "source_crop": str(crop_path),
            "source_size": list(crop.size),
        })
    return entries


def assemble_dataset(
    rows: list[dict[str, Any]], out_dir: Path, cfg: Config, base_model: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Write the dataset described in the module docstring; returns counts and paths (as strings).

    `base_model` goes into the training TOML (default: the active profile's base model, see
    :func:`castlab.models.diffusion.base_model_source`).
    """
    from castlab.models.diffusion import base_model_source, training_resolution
    from castlab.models.tokenizers import clip_tokenizer

    out_dir = Path(out_dir).resolve()
    _check_rows(rows, out_dir)
    template = load_template(cfg)  # fail on a bad template before writing anything
    base_model = base_model or base_model_source(cfg)
    _prepare_out_dir(out_dir, force)

    trigger, class_word = str(cfg.dataset.trigger_token), str(cfg.dataset.class_word)
    class_tokens = f"{trigger} {class_word}"
    splits = row_splits(rows, float(cfg.dataset.val_fraction), int(cfg.seed))
    n_train = sum(1 for r in rows if splits[shot_key(r)] == "train")
    repeats = max(1, math.ceil(int(cfg.dataset.target_size_min) / max(1, n_train)))
    kohya_dir = out_dir / "kohya" / f"{repeats}_{class_tokens}"
    for sub in (out_dir / "images", out_dir / "captions", kohya_dir):
        sub.mkdir(parents=True, exist_ok=True)

    tokenizer = clip_tokenizer()
    max_tokens = int(cfg.dataset.caption_max_tokens)
    layout = Layout(out_dir, kohya_dir, splits, dict(zip((str(r["row_id"]) for r in rows), _unique_names(rows),
                                                           strict=True)))
    entries = []
    for chunk in tqdm(list(chunked(rows, DATASET_CHUNK)), desc="dataset", unit="chunk"):
        entries += process(chunk, cfg, tokenizer, layout=layout)

    resolution = training_resolution(cfg)
    values = {
        "base_model": base_model,
        "dataset_config": str(out_dir / "dataset_config.toml"),
        "output_dir": str(out_dir / "checkpoints"),
        "resolution": resolution,
    }
    training = fill_template(template, cfg, values)
    apply_overrides(training, dict(cfg.model("base_model").kohya))
    apply_overrides(training, dict(cfg.training.kohya or {}))
    batch_size = int(flatten_toml(training).get("train_batch_size", 1))
    dataset_config = {
        "general": {
            "caption_extension": ".txt",
            "shuffle_caption": False,
            "keep_tokens": 1,
            "flip_aug": bool(cfg.dataset.flip_aug),
            "color_aug": bool(cfg.dataset.color_jitter),
        },
        "datasets": [{
            "resolution": resolution,
            "batch_size": batch_size,
            "subsets": [{
                "image_dir": str(kohya_dir),
                "class_tokens": class_tokens,
                "num_repeats": repeats,
                "caption_extension": ".txt",
                "flip_aug": bool(cfg.dataset.flip_aug),
                "color_aug": bool(cfg.dataset.color_jitter),
            }],
        }],
    }
    write_text_atomic(out_dir / "dataset_config.toml", tomli_w.dumps(dataset_config))
    write_text_atomic(out_dir / "training.toml", tomli_w.dumps(training))

    counts = {s: sum(1 for e in entries if e["split"] == s) for s in ("train", "val")}
    shots = {s: sorted({e["shot_key"] for e in entries if e["split"] == s}) for s in ("train", "val")}
    long_captions = sum(1 for e in entries if e["caption_tokens"] > max_tokens)
    write_json_atomic(out_dir / "metadata.json", {
        "profile": cfg.profile,
        "trigger": trigger,
        "class_word": class_word,
        "resolution": int(cfg.dataset.resolution),
        "training_resolution": resolution,
        "num_repeats": repeats,
        "base_model": base_model,
        "counts": {"images": len(entries), **counts},
        "shots": shots,
        "images": entries,
    })
    return {
        "out_dir": str(out_dir),
        "images": len(entries),
        "train": counts["train"],
        "val": counts["val"],
        "train_shots": len(shots["train"]),
        "val_shots": len(shots["val"]),
        "num_repeats": repeats,
        "long_captions": long_captions,
        "metadata": str(out_dir / "metadata.json"),
        "kohya_dir": str(kohya_dir),
        "dataset_config": str(out_dir / "dataset_config.toml"),
        "training_toml": str(out_dir / "training.toml"),
        "base_model": base_model,
    }
