"""The kohya pair as castlab's trainer reads it: ``training.toml`` (sd-scripts ``--config_file``, sections flattened)
and its ``dataset_config`` (``[general]`` / ``[[datasets]]`` / ``[[datasets.subsets]]``), with sd-scripts' meaning
and defaults.

A dataset value is taken from the subset, else its ``[[datasets]]`` entry, else ``[general]``, else the training
TOML's key of the same name (sd-scripts' argparse fallback), else sd-scripts' default. Relative paths resolve
against the TOML's folder (sd-scripts would use its working directory; castlab writes absolute ones anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from castlab.dataset.kohya import flatten_toml, read_toml
from castlab.errors import InputError
from trainers import buckets

REQUIRED = (
    "pretrained_model_name_or_path", "dataset_config", "output_dir", "output_name", "network_dim",
    "network_alpha", "learning_rate", "train_batch_size", "resolution", "seed",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# sd-scripts' defaults of the dataset keys castlab reads (library/config_util.py, train_util.add_dataset_arguments)
DATASET_DEFAULTS: dict[str, Any] = {
    "batch_size": 1, "enable_bucket": False, "min_bucket_reso": 256, "max_bucket_reso": 1024,
    "bucket_reso_steps": 64, "bucket_no_upscale": False, "num_repeats": 1, "caption_extension": ".caption",
    "class_tokens": None, "alpha_mask": False, "flip_aug": False, "color_aug": False, "random_crop": False,
    "is_reg": False, "shuffle_caption": False, "keep_tokens": 0,
}
# keys that change what sd-scripts trains but castlab does not implement: refused unless left at the default
NOT_SUPPORTED: dict[str, Any] = {
    "color_aug": False, "random_crop": False, "face_crop_aug_range": None, "is_reg": False, "v2": False,
    "token_warmup_step": 0, "enable_wildcard": False,
}


@dataclass
class Subset:
    """One ``[[datasets.subsets]]`` entry, every value resolved (its own, its dataset's, general, TOML, default)."""

    image_dir: Path
    values: dict[str, Any]
    images: list[Path] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


@dataclass
class DatasetSpec:
    """One ``[[datasets]]`` entry: its resolution, batch size, bucket settings and subsets."""

    resolution: tuple[int, int]
    values: dict[str, Any]
    subsets: list[Subset]


@dataclass
class TrainingPlan:
    """Everything the two TOMLs say."""

    training_toml: Path
    args: dict[str, Any]  # the flattened training TOML, paths resolved, resolution parsed to (w, h)
    datasets: list[DatasetSpec]
    notes: list[str] = field(default_factory=list)


def _resolve(base: Path, value: Any) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def parse_resolution(value: Any, where: Path | str) -> tuple[int, int]:
    """sd-scripts' resolution forms ("512", "768,512", 512, [768, 512]) → (width, height), multiples of 8."""
    try:
        size = buckets.parse_resolution(value)
    except ValueError as exc:
        raise InputError(where, str(exc)) from exc
    if min(size) < 8 or any(p % 8 for p in size):
        raise InputError(where, f"resolution {value!r} must be one or two multiples of 8")
    return size


def read_training_args(training_toml: Path) -> dict[str, Any]:
    """The flattened training TOML with required keys checked and paths resolved against its folder."""
    training_toml = Path(training_toml).resolve()
    flat = flatten_toml(read_toml(training_toml))
    missing = [k for k in REQUIRED if flat.get(k) in (None, "")]
    if missing:
        raise InputError(training_toml, f"training TOML lacks {', '.join(missing)}")
    if not (flat.get("max_train_steps") or flat.get("max_train_epochs")):
        raise InputError(training_toml, "training TOML sets neither max_train_steps nor max_train_epochs")
    unfilled = [k for k, v in flat.items() if isinstance(v, str) and v.startswith("${")]
    if unfilled:
        raise InputError(training_toml, f"template placeholders left unfilled: {', '.join(unfilled)}")
    for key in ("dataset_config", "output_dir"):
        flat[key] = _resolve(training_toml.parent, flat[key])
    flat["resolution"] = parse_resolution(flat["resolution"], training_toml)
    return flat


def _refuse_unsupported(values: dict[str, Any], where: Path) -> None:
    bad = [f"{k} = {values[k]!r}" for k, default in NOT_SUPPORTED.items() if values.get(k, default) not in
           (default, None, False, 0)]
    if bad:
        raise InputError(where, f"castlab's trainer does not support {', '.join(bad)} (sd-scripts does; use it, "
                                "or leave these at their defaults)")


def _images(image_dir: Path) -> list[Path]:
    if not image_dir.is_dir():
        raise InputError(image_dir, "subset image_dir does not exist (sd-scripts would only warn and train nothing)")
    return sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not p.stem.endswith("-masklabel"))


def read_plan(training_toml: Path) -> TrainingPlan:
    """Both TOMLs of a training run (InputError naming the file and key on anything castlab cannot honour)."""
    args = read_training_args(training_toml)
    config_path = Path(args["dataset_config"])
    data = read_toml(config_path)
    general = dict(data.get("general") or {})
    datasets: list[DatasetSpec] = []
    for d_index, entry in enumerate(data.get("datasets") or []):
        level = {k: v for k, v in entry.items() if k != "subsets"}
        resolved = {**DATASET_DEFAULTS, **{k: args[k] for k in DATASET_DEFAULTS if k in args}, **general, **level}
        resolved["batch_size"] = int(level.get("batch_size", general.get("batch_size", args["train_batch_size"])))
        resolution = parse_resolution(level.get("resolution", general.get("resolution", args["resolution"])),
                                      f"{config_path} datasets[{d_index}]")
        subsets = []
        for s_index, raw in enumerate(entry.get("subsets") or []):
            if "image_dir" not in raw:
                raise InputError(config_path, f"datasets[{d_index}].subsets[{s_index}] lacks image_dir")
            if "metadata_file" in raw:
                raise InputError(config_path, "fine-tuning subsets (metadata_file) are not supported; use "
                                              "DreamBooth-style image_dir subsets")
            values = {**resolved, **raw}
            _refuse_unsupported(values, config_path)
            image_dir = _resolve(config_path.parent, raw["image_dir"])
            subsets.append(Subset(image_dir, values, _images(image_dir)))
        datasets.append(DatasetSpec(resolution, resolved, subsets))
    if not any(s.images for d in datasets for s in d.subsets):
        raise InputError(config_path, "the dataset config lists no training images")
    _refuse_unsupported(args, Path(training_toml))
    return TrainingPlan(Path(training_toml).resolve(), args, datasets)


def read_caption(image: Path, extension: str, fallback: str | None) -> str:
    """The first line of the image's caption file (sd-scripts reads only that), else `fallback` (the subset's
    ``class_tokens``); InputError when there is neither."""
    path = image.with_suffix(extension)
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        if lines and lines[0].strip():
            return lines[0].strip()
    if fallback:
        return str(fallback)
    raise InputError(path, "no caption file and the subset has no class_tokens")
