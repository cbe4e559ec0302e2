"""Evaluation inputs without training (evaluation tests): a character dataset folder as `castlab dataset` writes
it (trimmed to what evaluation reads) and random kohya LoRAs for the tiny base model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from training_pairs import concept_images

SMALL_SUITE = """
identity:
  front: "{trigger} {class_word}, front view"
editability:
  place: "{trigger} {class_word} on a beach"
leakage:
  class_word: "a {class_word}, front view"
"""


def write_dataset(folder: Path, character: str, trigger: str, images: list[Image.Image]) -> Path:
    """A castlab dataset folder (metadata.json + images; the last image is the val split)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for k, image in enumerate(images):
        image.save(folder / "images" / f"{k}.png")
        entries.append({"name": str(k), "image": f"images/{k}.png", "split": "train" if k < len(images) - 1 else
                        "val", "view": ["front", "profile"][k % 2], "caption": f"{trigger} disc, picture {k}"})
    meta = {"format": "castlab-dataset/1", "character": character, "trigger": trigger, "class_word": "disc",
            "images": entries}
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def character_datasets(root: Path) -> Path:
    """The hero's dataset (red discs) and a rival's (blue discs) side by side under `root`; the hero's folder."""
    hero = write_dataset(root / "zorvik", "Zorvik", "zorvik", [i.convert("RGB") for i in concept_images(4)])
    blue = [Image.fromarray(np.asarray(i.convert("RGB"))[..., ::-1].copy()) for i in concept_images(4)]
    write_dataset(root / "blubo", "Blubo", "blubo", blue)
    return hero


def random_lora(pipe, path: Path, dataset: Path, seed: int, steps: int, scale: float = 0.2) -> Path:
    """A kohya LoRA of the UNet of `pipe` (a tiny SD1.x pipeline, left unchanged) with random non-zero weights,
    stamped with the castlab metadata evaluation reads (dataset, step, profile)."""
    from castlab.models.kohya import save_kohya_lora
    from trainers.network import NetworkSettings, add_lora, lora_state_dict

    unet = copy.deepcopy(pipe.unet)
    settings = NetworkSettings.from_toml({"network_module": "networks.lora", "network_dim": 4, "network_alpha": 4})
    add_lora(unet, [], settings, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=generator) * scale if "lora_B" in k else v
             for k, v in lora_state_dict(unet).items()}
    meta = {**settings.metadata(), "castlab_dataset": str(dataset), "castlab_profile": "tiny",
            "ss_steps": str(steps), "ss_output_name": path.stem}
    return save_kohya_lora(state, path, settings.alpha, meta, unet_config=unet.config)
