"""NSFW scorer of the frame safety gate (``safety.*``, :mod:`castlab.frames.safety`): P(unsafe) per image.

Backends (``safety.backend``):

- ``classifier`` (``models.<profile>.safety``): a transformers image-classification model; the score is the
  softmax probability of its labels named in ``safety.unsafe_labels`` (summed; a multi-label model: the highest
  sigmoid among them).

  - ``tiny``: ``arch: tiny-vit-nsfw`` — a ``ViTForImageClassification`` (the architecture of
    Falconsai/nsfw_image_detection) with a small config (:data:`TINY_CONFIG`), its two labels ``normal`` /
    ``nsfw`` and random weights seeded from ``seed``, built in memory (no files, offline), with a
    ``ViTImageProcessor`` set up as that model's but at :data:`TINY_SIZE` pixels. Random weights score about
    0.5 for every image. ``model_version`` is ``tiny-vit-nsfw-<hash of the recipe>-s<seed>``.
  - ``full``: ``model`` (hub id or local folder, e.g. ``Falconsai/nsfw_image_detection``, Apache-2.0) at
    ``revision``, loaded with ``AutoModelForImageClassification`` + ``AutoImageProcessor``; with
    ``local_files_only`` (the default) castlab never downloads. A model that is not there is a
    :class:`ConfigError` naming the setting; there is no fallback to random weights. ``model_version`` is
    ``<name>@<revision or commit>``.

- ``clip``: open_clip zero-shot with the embedder role (``models.<profile>.embedder``,
  :mod:`castlab.models.embedder`): softmax over ``safety.clip_unsafe_prompts`` + ``safety.clip_safe_prompts`` at
  the model's own logit scale, summed over the unsafe prompts. ``model_version`` is the embedder's (so ``tiny-…``
  under ``tiny``) plus ``+zeroshot-<hash of the prompts>``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

import numpy as np
import torch

from castlab.config import Config
from castlab.errors import ConfigError
from castlab.models.pretrained import role_device

TINY_ARCH = "tiny-vit-nsfw"
TINY_SIZE = 32
TINY_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": TINY_SIZE,
    "patch_size": 8,
}
TINY_LABELS = ("normal", "nsfw")  # Falconsai/nsfw_image_detection's id2label
VIT_MEAN = [0.5, 0.5, 0.5]  # that model's ViTImageProcessor statistics
VIT_STD = [0.5, 0.5, 0.5]


class SafetyScorer(Protocol):
    """What the safety gate needs: a version to stamp rows with and P(unsafe) per image."""

    model_version: str

    def score(self, images: list[Any]) -> list[float]: ...


class ClassifierScorer:
    """A transformers image classifier; :meth:`score` is the probability of its unsafe labels."""

    def __init__(self, model: Any, processor: Any, unsafe_ids: list[int], model_version: str, device: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.unsafe_ids = unsafe_ids
        self.model_version = model_version
        self.device = device
        self.multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"

    @torch.no_grad()
    def score(self, images: list[Any]) -> list[float]:
        """PIL images (any mode, any size) → P(unsafe) each, in one forward pass."""
        if not images:
            return []
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        logits = self.model(pixel_values=pixels.to(self.device, torch.float32)).logits.float()
        if self.multi_label:
            probs = torch.sigmoid(logits)[:, self.unsafe_ids].amax(dim=-1)
        else:
            probs = torch.softmax(logits, dim=-1)[:, self.unsafe_ids].sum(dim=-1)
        return [float(p) for p in probs.clamp(0.0, 1.0).cpu()]


class ZeroShotScorer:
    """open_clip zero-shot: P(unsafe prompts) among unsafe + safe prompts, at the model's logit scale."""

    def __init__(self, embedder: Any, unsafe: list[str], safe: list[str]) -> None:
        self.embedder = embedder
        self.n_unsafe = len(unsafe)
        self._text = embedder.encode_texts([*unsafe, *safe])  # (n, D) unit vectors
        scale = getattr(embedder.model, "logit_scale", None)
        self.logit_scale = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0
        digest = hashlib.sha1(json.dumps([unsafe, safe]).encode()).hexdigest()[:8]
        self.model_version = f"{embedder.model_version}+zeroshot-{digest}"

    def score(self, images: list[Any]) -> list[float]:
        if not images:
            return []
        logits = self.logit_scale * (self.embedder.encode_images(images) @ self._text.T)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return [float(p) for p in probs[:, : self.n_unsafe].sum(axis=1).clip(0.0, 1.0)]


def unsafe_label_ids(id2label: dict[Any, str], wanted: list[str], model_name: str) -> list[int]:
    """Ids of the labels named in ``safety.unsafe_labels`` (case-insensitive); a missing one is a ConfigError."""
    by_name = {str(label).lower(): int(i) for i, label in id2label.items()}
    missing = [w for w in wanted if w.lower() not in by_name]
    if missing or not wanted:
        raise ConfigError(
            f"safety.unsafe_labels: {missing or wanted} not among the labels of {model_name} "
            f"({', '.join(sorted(by_name))})"
        )
    return sorted({by_name[w.lower()] for w in wanted})


def _tiny_classifier(cfg: Config) -> ClassifierScorer:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    arch = str(cfg.model("safety").arch or "")
    if arch != TINY_ARCH:
        raise ConfigError(f"models.tiny.safety.arch: unknown tiny safety classifier {arch!r} (known: {TINY_ARCH})")
    seed = int(cfg.seed)
    id2label = dict(enumerate(TINY_LABELS))
    config = ViTConfig(**TINY_CONFIG, id2label=id2label, label2id={v: k for k, v in id2label.items()},
                       problem_type="single_label_classification")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTForImageClassification(config)
    processor = ViTImageProcessor(size={"height": TINY_SIZE, "width": TINY_SIZE}, resample=2,
                                  image_mean=VIT_MEAN, image_std=VIT_STD)
    recipe = {"config": TINY_CONFIG, "labels": TINY_LABELS, "mean": VIT_MEAN, "std": VIT_STD}
    digest = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    ids = unsafe_label_ids(id2label, list(cfg.safety.unsafe_labels), TINY_ARCH)
    return ClassifierScorer(model, processor, ids, f"{TINY_ARCH}-{digest}-s{seed}", "cpu")


def _full_classifier(cfg: Config) -> ClassifierScorer:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    from castlab.models.pretrained import pretrained

    pre = pretrained(cfg, "safety", "a transformers image-classification model (hub id, e.g. "
                     "Falconsai/nsfw_image_detection, or a local folder); or set safety.backend: clip, or "
                     "safety.enabled: false to skip the safety gate")

    def load() -> tuple[Any, list[int], Any, Any]:
        try:
            config = AutoConfig.from_pretrained(pre.source, **pre.kwargs)
            ids = unsafe_label_ids(dict(getattr(config, "id2label", None) or {}), list(cfg.safety.unsafe_labels),
                                   pre.name)
            processor = AutoImageProcessor.from_pretrained(pre.source, **pre.kwargs)
            model = AutoModelForImageClassification.from_pretrained(pre.source, dtype=torch.float32, **pre.model_kwargs)
        except ValueError as exc:  # a config transformers has no image-classification model for
            raise ConfigError(f"{pre.prefix}.model: {pre.source!r} is not an image-classification model "
                              f"({exc})") from exc
        return config, ids, processor, model

    config, ids, processor, model = pre.load("image-classification", load)
    device = role_device(cfg, "safety")
    return ClassifierScorer(model.to(device), processor, ids, pre.version(config), device)


def load_safety_scorer(cfg: Config) -> SafetyScorer:
    """The NSFW scorer of ``safety.backend`` for the active profile (see module docstring)."""
    if cfg.safety.backend == "clip":
        from castlab.models.embedder import load_embedder

        return ZeroShotScorer(load_embedder(cfg, role_device(cfg, "safety")), list(cfg.safety.clip_unsafe_prompts),
                              list(cfg.safety.clip_safe_prompts))
    return _tiny_classifier(cfg) if cfg.profile == "tiny" else _full_classifier(cfg)
