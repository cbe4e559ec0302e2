"""Small kohya training pairs for trainer tests: synthetic concept images and the two TOMLs over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tomli_w
from PIL import Image

RES = 64


def write_pair(folder: Path, images: list[Image.Image], caption: str, *, base_model: str, steps: int,
               extra: dict | None = None, dataset_extra: dict | None = None) -> Path:
    """A kohya pair over `images` (RGBA or RGB), all captioned `caption`."""
    image_dir = folder / "img"
    image_dir.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
        image.save(image_dir / f"i{k}.png")
        (image_dir / f"i{k}.txt").write_text(caption + "\n")
    subset = {"image_dir": str(image_dir), "num_repeats": 1, "caption_extension": ".txt",
              "class_tokens": caption, "alpha_mask": any(i.mode == "RGBA" for i in images)}
    dataset = {"resolution": RES, "batch_size": 2, "enable_bucket": True, "min_bucket_reso": 64,
               "max_bucket_reso": 256, "bucket_reso_steps": 64, "bucket_no_upscale": False,
               **(dataset_extra or {}), "subsets": [subset]}
    (folder / "dataset_config.toml").write_text(tomli_w.dumps({"general": {}, "datasets": [dataset]}))
    training = {
        "pretrained_model_name_or_path": base_model, "network_module": "networks.lora", "network_dim": 8,
        "network_alpha": 4, "optimizer_type": "AdamW", "learning_rate": 1e-3, "lr_scheduler": "constant",
        "dataset_config": str(folder / "dataset_config.toml"), "resolution": str(RES),
        "output_dir": str(folder / "out"), "output_name": "concept", "max_train_steps": steps,
        "train_batch_size": 2, "seed": 7, "save_precision": "float", **(extra or {}),
    }
    (folder / "training.toml").write_text(tomli_w.dumps(training))
    return folder / "training.toml"


def concept_images(n: int, distractor: bool = False) -> list[Image.Image]:
    """A red disc on grey (alpha = the disc); with `distractor` a green bar outside the disc."""
    yy, xx = np.mgrid[:RES, :RES]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        cx, cy = RES // 2 + rng.integers(-4, 5), RES // 2 + rng.integers(-4, 5)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (RES // 4) ** 2
        rgb = np.full((RES, RES, 3), 128, np.uint8)
        rgb[disc] = (220, 30, 30)
        if distractor:
            rgb[:12, :] = (30, 220, 30)
        alpha = np.where(disc, 255, 0).astype(np.uint8)
        out.append(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    return out
