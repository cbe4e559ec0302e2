"""The kohya sd-scripts pair a dataset carries: ``dataset_config.toml`` and ``training.toml``.

``training.toml`` is ``training.template`` (``configs/training/sd15_lora.toml`` or ``sdxl_lora.toml``) filled in:
``"${cfg:<dotted.key>}"`` → that castlab setting, ``"${castlab:<name>}"`` → a value of the dataset (paths, the
training resolution as the "W,H"/"N" string sd-scripts' argparse expects); then ``models.<profile>.base_model.kohya``
and ``training.kohya`` override any key. ``dataset_config.toml`` has one ``[[datasets]]`` per training resolution
(bucket settings copied from the training TOML) and one DreamBooth-style subset: the train images with
``num_repeats``, ``class_tokens``, ``keep_tokens``, ``alpha_mask = true`` and ``caption_extension``.
Both files use absolute paths: sd-scripts resolves relative ones against its working directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import tomli_w

from castlab.config import PROJECT_ROOT, Config
from castlab.errors import ConfigError, InputError
from castlab.workspace import write_text_atomic

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

_PLACEHOLDER = re.compile(r"^\$\{(cfg|castlab):([A-Za-z0-9_.]+)\}$")
BUCKET_KEYS = ("enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale")


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


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; InputError naming the file when it is missing or not valid TOML."""
    if not Path(path).is_file():
        raise InputError(path, "does not exist")
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"is not valid TOML ({exc})") from exc


def template_path(cfg: Config) -> Path:
    path = Path(str(cfg.training.template))
    path = path if path.is_absolute() else PROJECT_ROOT / path
    if not path.is_file():
        raise ConfigError(f"training.template: {path} does not exist")
    return path


def load_template(cfg: Config) -> dict[str, Any]:
    return read_toml(template_path(cfg))


def resolution_text(resolution: int | tuple[int, int]) -> str:
    """sd-scripts' ``--resolution`` form: "512" or "768,512" (an int crashes its prepare_dataset_args)."""
    if isinstance(resolution, int):
        return str(resolution)
    return f"{resolution[0]},{resolution[1]}"


def training_toml(template: dict[str, Any], cfg: Config, values: dict[str, Any]) -> dict[str, Any]:
    """The filled-in training TOML (see the module docstring)."""
    training = fill_template(template, cfg, values)
    apply_overrides(training, dict(cfg.model("base_model").kohya))
    apply_overrides(training, dict(cfg.training.kohya or {}))
    flat = flatten_toml(training)
    if isinstance(flat.get("resolution"), int):
        apply_overrides(training, {"resolution": resolution_text(int(flat["resolution"]))})
    return training


def min_image_side(training: dict[str, Any]) -> int:
    """The shortest image side the training TOML can bucket: ``bucket_reso_steps`` when buckets are on."""
    flat = flatten_toml(training)
    return int(flat.get("bucket_reso_steps", 64)) if flat.get("enable_bucket") else 8


def dataset_config(training: dict[str, Any], *, resolution: int, image_dir: Path, class_tokens: str,
                   num_repeats: int, cfg: Config) -> dict[str, Any]:
    """The ``--dataset_config`` of one subset of train images at one resolution."""
    flat = flatten_toml(training)
    dataset: dict[str, Any] = {"resolution": int(resolution), "batch_size": int(flat.get("train_batch_size", 1))}
    dataset.update({k: flat[k] for k in BUCKET_KEYS if k in flat})
    return {
        "general": {
            "caption_extension": ".txt",
            "shuffle_caption": False,
            "keep_tokens": 1,
            "flip_aug": bool(cfg.dataset.flip_aug),
            "color_aug": bool(cfg.dataset.color_jitter),
        },
        "datasets": [{
            **dataset,
            "subsets": [{
                "image_dir": str(image_dir),
                "class_tokens": class_tokens,
                "num_repeats": int(num_repeats),
                "keep_tokens": 1,
                "alpha_mask": True,
                "caption_extension": ".txt",
            }],
        }],
    }


def write_pair(out_dir: Path, training: dict[str, Any], dataset: dict[str, Any]) -> dict[str, str]:
    write_text_atomic(out_dir / "dataset_config.toml", tomli_w.dumps(dataset))
    write_text_atomic(out_dir / "training.toml", tomli_w.dumps(training))
    return {"dataset_config": str(out_dir / "dataset_config.toml"), "training_toml": str(out_dir / "training.toml")}
