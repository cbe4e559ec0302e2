"""open_clip image/text embedder (CLIP-T scores, identity features).

Profiles (``models.<profile>.embedder``):

- ``tiny``: a small open_clip config shipped in ``castlab/models/configs/<arch>.json`` (registered with
  ``open_clip.add_model_config``), random weights seeded from ``seed``; ``model_version`` is
  ``tiny-openclip-<arch>-s<seed>``.
- ``full``: ``arch`` + ``pretrained`` (a local checkpoint file, ``.safetensors`` or a torch file read with
  ``weights_only=True``, or an open_clip pretrained tag fetched from the hub). Unset → :class:`ConfigError`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from castlab.config import Config
from castlab.errors import ConfigError, InputError
from castlab.models import file_sha1

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
_BATCH = 32


class Embedder:
    """An open_clip model with its eval transform and tokenizer; outputs are L2-normalised float32."""

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, model_version: str, device: str) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_version = model_version
        self.device = device

    @torch.no_grad()
    def encode_images(self, images: list[Any]) -> np.ndarray:
        """PIL images → (N, D) unit vectors."""
        out = []
        for start in range(0, len(images), _BATCH):
            batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images[start : start + _BATCH]])
            feats = self.model.encode_image(batch.to(self.device)).float()
            out.append(torch.nn.functional.normalize(feats, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Strings → (N, D) unit vectors."""
        out = []
        for start in range(0, len(texts), _BATCH):
            tokens = self.tokenizer(list(texts[start : start + _BATCH])).to(self.device)
            feats = self.model.encode_text(tokens).float()
            out.append(torch.nn.functional.normalize(feats, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def zero_shot(self, images: list[Any], texts: np.ndarray) -> np.ndarray:
        """(N, T) probabilities of each image over `texts` (T unit vectors of :meth:`encode_texts`): softmax of
        the cosines at CLIP's logit scale 100."""
        logits = 100.0 * (self.encode_images(images) @ np.asarray(texts).T)
        logits -= logits.max(axis=1, keepdims=True)
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    def clip_t(self, images: list[Any], texts: list[str]) -> list[float]:
        """Cosine similarity of each image with its text (pairwise, same length)."""
        if len(images) != len(texts):
            raise ValueError(f"clip_t needs one text per image, got {len(images)} images, {len(texts)} texts")
        if not images:
            return []
        img, txt = self.encode_images(images), self.encode_texts(texts)
        return [float(v) for v in np.sum(img * txt, axis=1)]

    @property
    def dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        return int(self.model.encode_text(self.tokenizer([""]).to(self.device)).shape[-1])


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _register_tiny_configs(arch: str, setting: str) -> None:
    import open_clip

    if not (CONFIGS_DIR / f"{arch}.json").is_file():
        known = sorted(p.stem for p in CONFIGS_DIR.glob("*.json"))
        raise ConfigError(f"{setting}: no tiny open_clip config {arch!r} (known: {', '.join(known)})")
    if arch not in open_clip.list_models():
        open_clip.add_model_config(CONFIGS_DIR)


def load_embedder(cfg: Config, device: str = "cpu") -> Embedder:
    """Build the open_clip embedder of the active profile (see module docstring)."""
    import open_clip

    prefix = f"models.{cfg.profile}.embedder"
    settings = cfg.model("embedder")
    arch = str(settings.arch or "")
    if not arch:
        raise ConfigError(f"{prefix}.arch is not set (e.g. ViT-B-32)")
    if cfg.profile == "tiny":
        _register_tiny_configs(arch, f"{prefix}.arch")
        seed = int(cfg.seed)
        quiet = _DropMessage("No pretrained weights loaded")  # random weights are the point of tiny
        logging.getLogger().addFilter(quiet)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model, _, preprocess = open_clip.create_model_and_transforms(arch, device=device)
        finally:
            logging.getLogger().removeFilter(quiet)
        digest = hashlib.sha1((CONFIGS_DIR / f"{arch}.json").read_bytes()).hexdigest()[:8]
        version = f"tiny-openclip-{arch}-{digest}-s{seed}"
    else:
        pretrained = settings.pretrained
        if not pretrained:
            raise ConfigError(
                f"{prefix}.pretrained is not set: point it to an open_clip checkpoint for {arch} "
                "(a .safetensors/.pt file, or an open_clip pretrained tag); "
                "castlab never falls back to random weights"
            )
        pretrained = str(pretrained)
        path = Path(pretrained).expanduser()
        looks_like_path = path.suffix in {".safetensors", ".pt", ".pth", ".bin"} or "/" in pretrained
        if looks_like_path and not path.is_file():
            raise ConfigError(f"{prefix}.pretrained: {path} does not exist")
        if arch not in open_clip.list_models():
            raise ConfigError(f"{prefix}.arch: unknown open_clip architecture {arch!r}")
        try:
            source = str(path) if looks_like_path else pretrained
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=source, device=device, weights_only=True
            )
        except RuntimeError as exc:
            if looks_like_path:
                raise InputError(path, f"does not match open_clip architecture {arch}: {exc}") from exc
            raise
        tag = file_sha1(path)[:10] if looks_like_path else pretrained
        version = f"openclip-{arch}-{tag}"
    tokenizer = open_clip.get_tokenizer(arch)
    return Embedder(model, preprocess, tokenizer, version, device)


