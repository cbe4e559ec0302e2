"""Export one castlab dataset folder into the layouts other trainers read.

Input: a dataset folder as ``castlab dataset`` writes it (``metadata.json``, ``images/<name>.png`` RGBA with the
character's soft mask in the alpha, ``captions/<name>.txt``, ``dataset_config.toml``, ``training.toml``). Only files
inside that folder are read; nothing is fetched. Images are hard links of the dataset's images (a copy where the file
system refuses links); captions, masks and configs are new files. Every format gets the same images, captions and
masks, each in the trainer's own convention:

``kohya`` (sd-scripts)::

    <out>/<num_repeats>_<class_tokens>/<name>.png + <name>.txt     train split only (like the dataset's kohya/)
    <out>/dataset_config.toml    the dataset's, its subsets' image_dir pointing at the folder above
    <out>/training.toml          the dataset's; dataset_config, and output_dir / logging_dir where they pointed
                                 into the dataset, now point into <out>

  Masks: the PNG alpha, read by sd-scripts with the subset option ``alpha_mask = true`` (set where absent).

``onetrainer`` (Nerogar/OneTrainer)::

    <out>/train/<name>.png + <name>.txt + <name>-masklabel.png    one STANDARD concept (balancing = num_repeats)
    <out>/val/...                                                 a VALIDATION concept (balancing 1), if val images
    <out>/concepts.json          the concept list (OneTrainer's ``concept_file_name``), ConceptConfig keys

  Masks: ``<name>-masklabel.png`` beside the image, a grayscale PNG (white = learn, black = ignore) = the alpha.
  Captions: ``<name>.txt`` beside the image (``text.prompt_source = "sample"``). Turn on "Masked Training"
  (``masked_training``) in OneTrainer's training settings to use the masks.

``aitoolkit`` (ostris/ai-toolkit)::

    <out>/train/<name>.png + <name>.txt     the dataset's ``folder_path`` (train split)
    <out>/masks/<name>.png                  the dataset's ``mask_path``: grayscale = the alpha (white = more loss)
    <out>/val/<name>.png + <name>.txt       ``train.validation_config.validation_items``, when there are val images
    <out>/config.yaml                       a job stub: every value to fill in is marked FILL_ME

``hf`` (Hugging Face ``imagefolder``; ``datasets.load_dataset("imagefolder", data_dir=<out>)``)::

    <out>/train/<name>.png, <out>/train/masks/<name>.png, <out>/train/metadata.jsonl
    <out>/validation/...                     when there are val images

  Each metadata.jsonl line: ``file_name`` (the RGBA image: column ``image``), ``mask_file_name`` (the grayscale
  alpha: column ``mask``; imagefolder turns every ``*_file_name`` key into an image column), ``text`` (the caption),
  ``name``, ``trigger``, ``character``, ``view``, ``shot_key``, ``caption_source``.

With ``force``, an existing output folder is reused: the files the export writes are replaced, nothing else is
deleted; files already in the image folders that this export did not write are listed in the summary's
``other_files`` (a trainer that scans those folders would train on them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import yaml
from PIL import Image

from castlab.dataset.kohya import tomllib
from castlab.errors import InputError
from castlab.workspace import atomic_path, read_json, write_json_atomic, write_text_atomic

FORMATS = ("kohya", "onetrainer", "aitoolkit", "hf")
DATASET_FORMAT = "castlab-dataset/1"
PLACEHOLDER = "FILL_ME"
SPLITS = ("train", "val")
ONETRAINER_MASK_SUFFIX = "-masklabel.png"
ONETRAINER_CONCEPT_VERSION = 2  # ConceptConfig(config_version=2)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
_KOHYA_OUTPUT_KEYS = ("output_dir", "logging_dir")


@dataclass(frozen=True)
class Item:
    """One image of the dataset: where it is, its caption, its split and its metadata entry."""

    name: str
    image: Path
    caption: str
    split: str
    entry: dict[str, Any]


def export_dataset(dataset_dir: Path, out_dir: Path, fmt: str, force: bool = False) -> dict[str, Any]:
    """Write the dataset folder `dataset_dir` into `out_dir` in format `fmt` (one of :data:`FORMATS`).

    Returns a summary: format, out_dir, images, train, val, masks, config (the main file written), files (every
    file written) and other_files (files in the written image folders that this export did not write).
    """
    if fmt not in FORMATS:
        raise InputError(fmt, f"unknown export format (known: {', '.join(FORMATS)})")
    dataset_dir = Path(dataset_dir).resolve()
    out_dir = Path(out_dir).resolve()
    meta, items = load_dataset(dataset_dir)
    _check_out_dir(out_dir, dataset_dir, force)

    writer = _Writer(out_dir)
    config = _WRITERS[fmt](meta, items, dataset_dir, writer)
    return {
        "format": fmt,
        "out_dir": str(out_dir),
        "images": writer.images,
        "train": sum(1 for i in items if i.split == "train"),
        "val": sum(1 for i in items if i.split == "val"),
        "masks": writer.masks,
        "config": str(config),
        "files": [str(p) for p in writer.files],
        "other_files": [str(p) for p in writer.others()],
    }


def load_dataset(dataset_dir: Path) -> tuple[dict[str, Any], list[Item]]:
    """Read and check ``metadata.json`` and the images and captions it lists (all inside `dataset_dir`)."""
    dataset_dir = Path(dataset_dir).resolve()
    path = dataset_dir / "metadata.json"
    if not path.is_file():
        raise InputError(path, "missing: not a castlab dataset folder (run `castlab dataset` first)")
    meta = read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("images"), list):
        raise InputError(path, "has no 'images' list")
    if meta.get("format", DATASET_FORMAT) != DATASET_FORMAT:
        raise InputError(path, f"format {meta.get('format')!r} is not {DATASET_FORMAT!r}")
    if not str(meta.get("trigger") or "").strip():
        raise InputError(path, "has no 'trigger'")
    if not meta["images"]:
        raise InputError(path, "lists no images")

    items, seen = [], set()
    for k, entry in enumerate(meta["images"]):
        if not isinstance(entry, dict) or not entry.get("image"):
            raise InputError(path, f"images[{k}] has no 'image' path")
        image = _inside(dataset_dir, str(entry["image"]), path)
        name = str(entry.get("name") or Path(image).stem)
        if not _NAME.match(name) or name in seen:
            raise InputError(path, f"images[{k}]: name {name!r} is not a unique plain file name")
        seen.add(name)
        if not image.is_file():
            raise InputError(image, f"missing (listed in {path} as images[{k}] {name!r})")
        split = str(entry.get("split") or "train")
        if split not in SPLITS:
            raise InputError(path, f"images[{k}] {name!r}: split {split!r} is not one of {SPLITS}")
        items.append(Item(name, image, _caption(dataset_dir, entry, path, name), split, entry))
    return meta, items


def class_tokens(meta: dict[str, Any]) -> str:
    """The kohya class tokens: ``metadata["class_tokens"]``, else ``"<trigger> <class_word>"``."""
    tokens = str(meta.get("class_tokens") or "").strip()
    return tokens or " ".join(str(meta.get(k) or "").strip() for k in ("trigger", "class_word")).strip()


def alpha_mask(image: Path) -> Image.Image:
    """The image's alpha channel as a grayscale ("L") image: 255 = character, 0 = not; opaque images give 255."""
    with Image.open(image) as im:
        return im.convert("RGBA").getchannel("A")


# --- the formats -------------------------------------------------------------------------------------------------


def _export_kohya(meta: dict[str, Any], items: list[Item], dataset_dir: Path, w: _Writer) -> Path:
    folder = w.out / f"{_repeats(meta, dataset_dir)}_{class_tokens(meta)}"
    for item in items:
        if item.split == "train":
            w.image(item, folder)
            w.text(folder / f"{item.name}.txt", item.caption + "\n")

    dc_path, tr_path = dataset_dir / "dataset_config.toml", dataset_dir / "training.toml"
    dataset_config, training = _read_toml(dc_path), _read_toml(tr_path)
    rewired = 0
    for dataset in dataset_config.get("datasets") or []:
        for subset in dataset.get("subsets") or []:
            if "image_dir" in subset and _is_inside(dataset_dir, str(subset["image_dir"])):
                subset["image_dir"] = str(folder)
                subset.setdefault("alpha_mask", True)  # the mask is the PNG alpha
                rewired += 1
    if not rewired:
        raise InputError(dc_path, "no [[datasets.subsets]] image_dir points into the dataset folder")

    sections = [training] + [v for v in training.values() if isinstance(v, dict)]
    holder = next((s for s in sections if "dataset_config" in s), training)
    holder["dataset_config"] = str(w.out / "dataset_config.toml")
    for section in sections:
        for key in _KOHYA_OUTPUT_KEYS:
            value = section.get(key)
            if isinstance(value, str) and _is_inside(dataset_dir, value):
                section[key] = str(w.out / Path(os.path.normpath(dataset_dir / value)).relative_to(dataset_dir))
    w.text(w.out / "dataset_config.toml", tomli_w.dumps(dataset_config))
    return w.text(w.out / "training.toml", tomli_w.dumps(training))


def _export_onetrainer(meta: dict[str, Any], items: list[Item], dataset_dir: Path, w: _Writer) -> Path:
    repeats = _repeats(meta, dataset_dir)
    name = str(meta.get("character") or meta["trigger"])
    concepts = []
    for split, folder_name, concept_type in (("train", "train", "STANDARD"), ("val", "val", "VALIDATION")):
        chosen = [i for i in items if i.split == split]
        if not chosen:
            continue
        folder = w.out / folder_name
        for item in chosen:
            w.image(item, folder)
            w.text(folder / f"{item.name}.txt", item.caption + "\n")
            w.mask(item, folder / f"{item.name}{ONETRAINER_MASK_SUFFIX}")
        balancing = repeats if split == "train" else 1
        concepts.append(_onetrainer_concept(f"{name} ({split})", folder, concept_type, balancing))
    return w.json(w.out / "concepts.json", concepts)


def _onetrainer_concept(name: str, folder: Path, concept_type: str, repeats: int) -> dict[str, Any]:
    """One OneTrainer concept (modules/util/config/ConceptConfig.py keys; keys left out take its defaults)."""
    return {
        "__version": ONETRAINER_CONCEPT_VERSION,
        "name": name,
        "path": str(folder),
        "seed": 42,
        "enabled": True,
        "type": concept_type,  # ConceptType: STANDARD | VALIDATION | PRIOR_PREDICTION
        "include_subdirectories": False,
        "image_variations": 1,
        "text_variations": 1,
        "balancing": float(repeats),
        "balancing_strategy": "REPEATS",  # BalancingStrategy: REPEATS | SAMPLES
        "loss_weight": 1.0,
        "image": {"__version": 0, "enable_crop_jitter": True, "enable_random_flip": False,
                  "enable_fixed_flip": False},
        "text": {"__version": 0, "prompt_source": "sample", "prompt_path": "", "enable_tag_shuffling": False,
                 "tag_delimiter": ",", "keep_tags_count": 1},
    }


def _export_aitoolkit(meta: dict[str, Any], items: list[Item], dataset_dir: Path, w: _Writer) -> Path:
    train_dir, mask_dir, val_dir = w.out / "train", w.out / "masks", w.out / "val"
    validation = []
    for item in items:
        folder = train_dir if item.split == "train" else val_dir
        image = w.image(item, folder)
        w.text(folder / f"{item.name}.txt", item.caption + "\n")
        if item.split == "train":
            w.mask(item, mask_dir / f"{item.name}.png")
        else:
            validation.append({"image_path": str(image), "prompt": item.caption})

    trigger, resolution = str(meta["trigger"]), _resolution(meta, dataset_dir)
    kohya = _flat_toml(dataset_dir / "training.toml")
    network: dict[str, Any] = {"type": "lora"}
    network.update({k: kohya[src] for k, src in (("linear", "network_dim"), ("linear_alpha", "network_alpha"))
                    if src in kohya})
    train: dict[str, Any] = {k: kohya[src] for k, src in (
        ("batch_size", "train_batch_size"), ("steps", "max_train_steps"), ("lr", "learning_rate")) if src in kohya}
    if validation:
        train["validation_config"] = {"validation_items": validation, "resolution": resolution}
    dataset = {
        "folder_path": str(train_dir),
        "caption_ext": "txt",
        "mask_path": str(mask_dir),
        "resolution": [resolution],
        "num_repeats": _repeats(meta, dataset_dir),
    }
    job = {
        "job": "extension",
        "config": {
            "name": f"castlab_{trigger}_lora",
            "process": [{
                "type": "sd_trainer",
                "training_folder": str(w.out / "output"),
                "trigger_word": trigger,
                "network": network,
                "datasets": [dataset],
                "train": train,
                "model": {
                    "name_or_path": f"{PLACEHOLDER}: base model (Hugging Face id or local path)",
                    "arch": f"{PLACEHOLDER}: ai-toolkit model arch (e.g. sd1, sdxl, flux)",
                },
            }],
        },
        "meta": {"name": "[name]", "version": "1.0"},
    }
    base = kohya.get("pretrained_model_name_or_path")
    header = [
        "# ai-toolkit job stub written by `castlab` from a castlab dataset (run: python run.py <this file>).",
        f"# Replace every {PLACEHOLDER} value before training; add sample/save settings as you like.",
        "# Masks: mask_path holds the character mask (grayscale, white = more loss); `alpha_mask: true` on the",
        "# dataset would read the same mask from the RGBA images' alpha instead.",
    ]
    if base:
        header.append(f"# castlab's kohya training.toml trained on: {base}")
    body = yaml.safe_dump(job, sort_keys=False, allow_unicode=True, width=1000)
    return w.text(w.out / "config.yaml", "\n".join(header) + "\n" + body)


def _export_hf(meta: dict[str, Any], items: list[Item], dataset_dir: Path, w: _Writer) -> Path:
    for split, folder_name in (("train", "train"), ("val", "validation")):
        chosen = [i for i in items if i.split == split]
        if not chosen:
            continue
        folder = w.out / folder_name
        lines = []
        for item in chosen:
            image = w.image(item, folder)
            mask = w.mask(item, folder / "masks" / f"{item.name}.png")
            lines.append(json.dumps({
                "file_name": image.name,
                "mask_file_name": mask.relative_to(folder).as_posix(),
                "text": item.caption,
                "name": item.name,
                "trigger": str(meta["trigger"]),
                "character": str(meta.get("character") or ""),
                "view": str(item.entry.get("view") or ""),
                "shot_key": str(item.entry.get("shot_key") or ""),
                "caption_source": str(item.entry.get("caption_source") or ""),
            }, ensure_ascii=False))
        w.text(folder / "metadata.jsonl", "\n".join(lines) + "\n")
    return w.out


_WRITERS = {"kohya": _export_kohya, "onetrainer": _export_onetrainer, "aitoolkit": _export_aitoolkit,
            "hf": _export_hf}


# --- helpers -----------------------------------------------------------------------------------------------------


class _Writer:
    """Writes into `out` and remembers every file (and image folder) it wrote."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: list[Path] = []
        self.image_dirs: set[Path] = set()
        self.images = 0
        self.masks = 0

    def image(self, item: Item, folder: Path) -> Path:
        """Hard-link (else copy) the item's image into `folder`, replacing the file there without writing into it."""
        target = folder / f"{item.name}{item.image.suffix.lower()}"
        folder.mkdir(parents=True, exist_ok=True)
        if not (target.exists() and os.path.samefile(item.image, target)):
            tmp = folder / f".{target.name}.{os.getpid()}.tmp"
            tmp.unlink(missing_ok=True)
            try:
                os.link(item.image, tmp)
            except OSError:
                shutil.copyfile(item.image, tmp)
            os.replace(tmp, target)  # never open the target: it may be a hard link of a dataset image
        self.images += 1
        self.image_dirs.add(folder)
        return self._done(target)

    def mask(self, item: Item, target: Path) -> Path:
        with atomic_path(target) as tmp:
            alpha_mask(item.image).save(tmp, format="PNG")
        self.masks += 1
        return self._done(target)

    def text(self, target: Path, text: str) -> Path:
        return self._done(write_text_atomic(target, text))

    def json(self, target: Path, data: Any) -> Path:
        return self._done(write_json_atomic(target, data))

    def others(self) -> list[Path]:
        written = set(self.files)
        return sorted(p for d in self.image_dirs for p in d.iterdir()
                      if p.is_file() and p not in written and not p.name.startswith("."))

    def _done(self, path: Path) -> Path:
        self.files.append(path)
        return path


def _check_out_dir(out_dir: Path, dataset_dir: Path, force: bool) -> None:
    if out_dir == dataset_dir:
        raise InputError(out_dir, "is the dataset folder itself: export into another folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise InputError(out_dir, "is not empty (pass --force to replace the files the export writes)")
    out_dir.mkdir(parents=True, exist_ok=True)


def _is_inside(root: Path, value: str) -> bool:
    return Path(os.path.normpath(root / value)).is_relative_to(root)


def _inside(root: Path, value: str, source: Path) -> Path:
    """`value` (relative to `root`, or absolute) as a path that must stay inside `root` (symlinks allowed)."""
    if not _is_inside(root, value):
        raise InputError(source, f"path {value!r} points outside the dataset folder {root}")
    return Path(os.path.normpath(root / value))


def _caption(dataset_dir: Path, entry: dict[str, Any], source: Path, name: str) -> str:
    """The caption file's text when it exists, else metadata's ``caption``; one line."""
    text = None
    if entry.get("caption_file"):
        path = _inside(dataset_dir, str(entry["caption_file"]), source)
        if path.is_file():
            text = path.read_text(encoding="utf-8")
    if text is None:
        text = entry.get("caption")
    if not isinstance(text, str) or not text.strip():
        raise InputError(source, f"image {name!r} has no caption (no caption file and no 'caption')")
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _repeats(meta: dict[str, Any], dataset_dir: Path) -> int:
    try:
        repeats = int(meta.get("num_repeats", 1))
    except (TypeError, ValueError) as exc:
        raise InputError(dataset_dir / "metadata.json", f"num_repeats {meta.get('num_repeats')!r} is not an integer") \
            from exc
    if repeats < 1:
        raise InputError(dataset_dir / "metadata.json", f"num_repeats {repeats} is below 1")
    return repeats


def _resolution(meta: dict[str, Any], dataset_dir: Path) -> int:
    value = meta.get("resolution")
    if isinstance(value, bool) or not isinstance(value, int) or value < 8:
        raise InputError(dataset_dir / "metadata.json", f"resolution {value!r} is not a pixel size")
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, "missing (the kohya export copies it from the dataset)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not valid TOML ({exc})") from exc


def _flat_toml(path: Path) -> dict[str, Any]:
    """sd-scripts' reading of a training TOML (sections flattened); empty when the file is absent."""
    if not path.is_file():
        return {}
    flat: dict[str, Any] = {}
    for key, value in _read_toml(path).items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat
