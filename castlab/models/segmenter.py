"""SAM2 instance segmenter: point/box prompts and automatic grid instances, with an embedding cache.

Profiles (``models.<profile>.segmenter``):

- ``tiny``: sam2's real Hiera-tiny architecture at a small ``image_size``, random weights seeded from
  ``seed`` (reproducible, offline); ``model_version`` is ``tiny-<arch>-<image_size>``.
- ``full``: the same builder plus a real checkpoint (``checkpoint``), loaded strictly with
  ``torch.load(weights_only=True)["model"]``. A missing checkpoint is a :class:`ConfigError`.

Masks are ``sigmoid(logits) > alpha`` with alpha = ``models.<profile>.segmenter.alpha_threshold`` when
set, else ``segmentation.alpha_threshold``. The probability map ``sigmoid(logits)`` itself (upsampled to
the frame) is kept as the soft alpha of an instance (:attr:`Instance.alpha`, :meth:`Segmenter.predict_soft`).
"""

from __future__ import annotations

import hashlib
import math
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from castlab.config import Config
from castlab.errors import ConfigError, InputError
from castlab.layers import mask_bbox
from castlab.models import file_sha1


@dataclass
class Instance:
    mask: np.ndarray  # bool HxW
    bbox: list[int]  # [x, y, w, h]
    area: int
    score: float
    point: tuple[float, float] | None = None  # grid prompt that produced it
    alpha: np.ndarray | None = None  # float32 HxW SAM2 probability sigmoid(logits) in [0, 1] (soft edges)


@dataclass
class _Embedding:
    features: dict[str, Any]
    orig_hw: tuple[int, int]
    nbytes: int


def alpha_threshold(cfg: Config) -> float:
    """The mask threshold of the active profile: ``models.<profile>.segmenter.alpha_threshold`` when set,
    else ``segmentation.alpha_threshold``."""
    alpha = cfg.model("segmenter").alpha_threshold
    return float(cfg.segmentation.alpha_threshold if alpha is None else alpha)


def logit(p: float) -> float:
    """The logit SAM2's mask probability `p` corresponds to (masks are ``logits > logit(alpha)``)."""
    if not 0.0 < p < 1.0:
        raise ConfigError(f"segmentation alpha_threshold must be in (0, 1), got {p}")
    return math.log(p / (1.0 - p))


class Segmenter:
    """Wraps :class:`sam2.sam2_image_predictor.SAM2ImagePredictor`; thread-safe, one image at a time."""

    def __init__(
        self, predictor: Any, model_version: str, cfg: Config, alpha: float, cache_bytes: int
    ) -> None:
        self.predictor = predictor
        self.model = predictor.model
        self.model_version = model_version
        self.alpha = float(alpha)
        self._mask_logit = logit(self.alpha)
        seg = cfg.segmentation
        self.points_per_side = int(seg.points_per_side)
        self.points_per_batch = max(1, int(seg.points_per_batch))
        self.min_size = float(seg.min_size)
        self.min_size_reference_height = float(seg.min_size_reference_height)
        self.min_area_fraction = float(seg.min_area_fraction)
        self.max_instances = int(seg.max_instances_per_frame)
        self.dedup_iou = float(seg.dedup_iou)
        self.pred_iou_thresh = float(seg.pred_iou_thresh)
        self.stability_thresh = float(seg.stability_score_thresh)
        self.stability_offset = float(seg.stability_score_offset)
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[str, _Embedding] = OrderedDict()
        self._cached_bytes = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self._lock = threading.RLock()
        self._current: str | None = None

    # -- image embedding ---------------------------------------------------------------------
    @staticmethod
    def image_key(image: np.ndarray) -> str:
        digest = hashlib.blake2b(str((image.shape, image.dtype.str)).encode(), digest_size=16)
        digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()

    def set_image(self, image: np.ndarray) -> None:
        """Embed an RGB uint8 HxWx3 image, or reuse its cached embedding (keyed by content hash)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"set_image expects an RGB uint8 HxWx3 array, got {image.dtype} {image.shape}")
        key = self.image_key(image)
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
            else:
                self.cache_misses += 1
                self.predictor.set_image(image if image.flags.writeable else image.copy())
                feats = self.predictor._features
                nbytes = sum(t.element_size() * t.nelement() for t in _tensors(feats))
                entry = _Embedding(feats, tuple(image.shape[:2]), nbytes)
                self._remember(key, entry)
            p = self.predictor
            p._features, p._orig_hw = entry.features, [entry.orig_hw]
            p._is_image_set, p._is_batch = True, False
            self._current = key

    def _remember(self, key: str, entry: _Embedding) -> None:
        if entry.nbytes > self.cache_bytes:
            return
        self._cache[key] = entry
        self._cached_bytes += entry.nbytes
        while self._cached_bytes > self.cache_bytes and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes

    @property
    def cached_images(self) -> int:
        return len(self._cache)

    # -- prompts -------------------------------------------------------------------------------
    @torch.no_grad()
    def _decode(
        self,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits (B x C x h x w) and predicted IoUs (B x C) for prompts in image pixels."""
        p = self.predictor
        hw = p._orig_hw[0]
        coords = labels_t = None
        if points is not None:
            coords = p._transforms.transform_coords(points, normalize=True, orig_hw=hw)
            labels_t = labels
        if boxes is not None:
            corners = p._transforms.transform_boxes(boxes, normalize=True, orig_hw=hw).reshape(-1, 2, 2)
            box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=corners.device)
            box_labels = box_labels.repeat(corners.shape[0], 1)
            if coords is None:
                coords, labels_t = corners, box_labels
            else:
                coords, labels_t = torch.cat([corners, coords], 1), torch.cat([box_labels, labels_t], 1)
        sparse, dense = self.model.sam_prompt_encoder(points=(coords, labels_t), boxes=None, masks=None)
        feats = p._features
        low_res, iou, _, _ = self.model.sam_mask_decoder(
            image_embeddings=feats["image_embed"],
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=coords.shape[0] > 1,
            high_res_features=feats["high_res_feats"],
        )
        return low_res.float(), iou.float()

    def _upsample(self, low_res: torch.Tensor, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """C x h x w logits → C x H x W boolean masks (sigmoid > alpha) and float32 probabilities at the
        image size."""
        up = F.interpolate(low_res[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]
        return (up > self._mask_logit).cpu().numpy(), torch.sigmoid(up).cpu().numpy().astype(np.float32, copy=False)

    def predict(
        self,
        points: list[tuple[float, float]] | None = None,
        labels: list[int] | None = None,
        box: tuple[float, float, float, float] | None = None,
    ) -> tuple[np.ndarray, float]:
        """Best mask for prompts on the current image: points (x, y) in pixels with labels 1 = foreground,
        0 = background, and/or a box (x0, y0, x1, y1) in pixels. Returns (bool HxW mask, predicted IoU)."""
        mask, _, score = self.predict_soft(points, labels, box)
        return mask, score

    def predict_soft(
        self,
        points: list[tuple[float, float]] | None = None,
        labels: list[int] | None = None,
        box: tuple[float, float, float, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """:meth:`predict` plus the soft alpha: (bool HxW mask, float32 HxW probability, predicted IoU)."""
        if not points and box is None:
            raise ValueError("predict needs at least one point or a box")
        if points and (labels is None or len(labels) != len(points)):
            raise ValueError("predict needs one label per point")
        device = self.predictor.device
        with self._lock:
            if self._current is None:
                raise RuntimeError("call set_image before predict")
            pts = lbl = bx = None
            if points:
                pts = torch.as_tensor(np.asarray(points, np.float32).reshape(1, -1, 2), device=device)
                lbl = torch.as_tensor(np.asarray(labels, np.int32).reshape(1, -1), device=device)
            if box is not None:
                bx = torch.as_tensor(np.asarray(box, np.float32).reshape(1, 4), device=device)
            multimask = box is None and len(points or []) == 1  # SAM's advice for an ambiguous single click
            low_res, iou = self._decode(pts, lbl, bx, multimask)
            best = int(torch.argmax(iou[0]))
            masks, probs = self._upsample(low_res[0, best : best + 1], self.predictor._orig_hw[0])
        return masks[0], probs[0], float(iou[0, best])

    def predict_image(
        self,
        image: np.ndarray,
        points: list[tuple[float, float]] | None = None,
        labels: list[int] | None = None,
        box: tuple[float, float, float, float] | None = None,
    ) -> tuple[np.ndarray, float]:
        """:meth:`set_image` + :meth:`predict` as one atomic call (for concurrent servers)."""
        with self._lock:
            self.set_image(image)
            return self.predict(points, labels, box)

    def prompt_instance(
        self,
        image: np.ndarray,
        points: list[tuple[float, float]] | None = None,
        labels: list[int] | None = None,
        box: tuple[float, float, float, float] | None = None,
    ) -> Instance:
        """:meth:`set_image` + :meth:`predict_soft` as one atomic call, as an :class:`Instance` (soft alpha)."""
        with self._lock:
            self.set_image(image)
            mask, prob, score = self.predict_soft(points, labels, box)
        point = points[0] if points else None
        return Instance(mask, mask_bbox(mask), int(mask.sum()), score, point, alpha=prob)

    # -- automatic instances ---------------------------------------------------------------------
    def min_side(self, height: int) -> float:
        """Minimum bbox long side in pixels for a frame `height` tall (``min_size`` scaled to it)."""
        return self.min_size * height / self.min_size_reference_height

    def grid_points(self, height: int, width: int) -> np.ndarray:
        n = self.points_per_side
        steps = (np.arange(n, dtype=np.float32) + 0.5) / n
        xs, ys = np.meshgrid(steps * width, steps * height)
        return np.stack([xs.ravel(), ys.ravel()], axis=1)

    def auto_instances(self, image: np.ndarray) -> list[Instance]:
        """Prompt a ``points_per_side``² grid, then filter (predicted IoU, stability, area fraction,
        bbox long side ≥ :meth:`min_side`), drop duplicates (mask IoU > ``dedup_iou``) and keep the
        ``max_instances_per_frame`` best by predicted IoU. Filtering runs on SAM's low-res logits
        (IoU and area fractions survive its square resize); kept masks and their probabilities (the
        soft :attr:`Instance.alpha`) are upsampled to the frame."""
        with self._lock:
            self.set_image(image)
            height, width = self.predictor._orig_hw[0]
            grid = self.grid_points(height, width)
            device = self.predictor.device
            logits, scores, origins = [], [], []
            for start in range(0, len(grid), self.points_per_batch):
                chunk = torch.as_tensor(grid[start : start + self.points_per_batch], device=device)[:, None]
                labels = torch.ones(chunk.shape[:2], dtype=torch.int, device=device)
                low_res, iou = self._decode(chunk, labels, None, multimask=True)
                logits.append(low_res.flatten(0, 1))
                scores.append(iou.flatten(0, 1))
                origins.extend(int(start + i) for i in range(chunk.shape[0]) for _ in range(low_res.shape[1]))
            all_logits, all_scores = torch.cat(logits), torch.cat(scores)
            keep = self._select(all_logits, all_scores, height, width)
            if not keep:
                return []
            masks, probs = self._upsample(all_logits[keep], (height, width))
        instances = []
        for idx, mask, prob in zip(keep, masks, probs, strict=True):
            area = int(mask.sum())
            if area == 0:
                continue
            point = (float(grid[origins[idx]][0]), float(grid[origins[idx]][1]))
            instances.append(Instance(mask, mask_bbox(mask), area, float(all_scores[idx]), point, alpha=prob))
        return instances

    def _select(self, logits: torch.Tensor, scores: torch.Tensor, height: int, width: int) -> list[int]:
        n, h, w = logits.shape
        binary = logits > self._mask_logit
        ok = torch.ones(n, dtype=torch.bool, device=logits.device)
        if self.pred_iou_thresh > 0:
            ok &= scores > self.pred_iou_thresh
        if self.stability_thresh > 0:
            high = (logits > self._mask_logit + self.stability_offset).flatten(1).sum(1)
            low = (logits > self._mask_logit - self.stability_offset).flatten(1).sum(1)
            ok &= (high.float() / low.clamp(min=1).float()) >= self.stability_thresh
        flat = binary.flatten(1).float()
        area_frac = flat.mean(1)
        ok &= area_frac >= max(self.min_area_fraction, 1e-9)
        rows, cols = binary.any(2), binary.any(1)  # n x h, n x w
        span_h = _span(rows) * (height / h)
        span_w = _span(cols) * (width / w)
        ok &= torch.maximum(span_h, span_w) >= self.min_side(height)
        score_list = scores.tolist()
        order = sorted(torch.nonzero(ok).flatten().tolist(), key=lambda i: (-score_list[i], i))
        kept: list[int] = []
        for i in order:
            if len(kept) >= self.max_instances:
                break
            if kept:
                inter = flat[kept] @ flat[i]
                union = flat[kept].sum(1) + flat[i].sum() - inter
                if bool((inter / union.clamp(min=1) > self.dedup_iou).any()):
                    continue
            kept.append(i)
        return kept


def _span(any_along: torch.Tensor) -> torch.Tensor:
    """Extent (last - first + 1) of True entries per row of an n x k bool tensor; 0 when none."""
    k = any_along.shape[1]
    idx = torch.arange(k, device=any_along.device).expand_as(any_along)
    first = torch.where(any_along, idx, k).min(1).values
    last = torch.where(any_along, idx, -1).max(1).values
    return (last - first + 1).clamp(min=0).float()


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


# -- loading -------------------------------------------------------------------------------------
def _sam2_config(arch: str, setting: str) -> str:
    family = "sam2.1" if arch.startswith("sam2.1") else "sam2"
    name = f"configs/{family}/{arch}.yaml"
    if not resources.files("sam2").joinpath(name).is_file():
        raise ConfigError(f"{setting}: unknown SAM2 architecture {arch!r} (no {name} in the sam2 package)")
    return name




def build_sam2_model(cfg: Config, video: bool = False, device: str = "cpu") -> tuple[Any, str, int]:
    """SAM2 of the active profile (see module docstring): (model, model version, image size).

    `video` builds SAM2's video predictor (the same weights, for mask propagation) instead of the image model.
    """
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    builder = build_sam2_video_predictor if video else build_sam2
    prefix = f"models.{cfg.profile}.segmenter"
    settings = cfg.model("segmenter")
    arch = str(settings.arch or "")
    if not arch:
        raise ConfigError(f"{prefix}.arch is not set (e.g. sam2.1_hiera_t)")
    image_size = int(settings.image_size)
    if image_size % 16:
        raise ConfigError(f"{prefix}.image_size must be a multiple of 16, got {image_size}")
    config_file = _sam2_config(arch, f"{prefix}.arch")
    overrides = [f"++model.image_size={image_size}"]
    suffix = "-video" if video else ""
    if cfg.profile == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))
            model = builder(config_file, ckpt_path=None, device=device, hydra_overrides_extra=overrides)
        return model, f"tiny-{arch}-{image_size}{suffix}", image_size
    checkpoint = settings.checkpoint
    if not checkpoint:
        raise ConfigError(
            f"{prefix}.checkpoint is not set: point it to a SAM2 checkpoint for {arch} "
            "(e.g. sam2.1_hiera_tiny.pt); castlab never falls back to random weights in the full profile"
        )
    path = Path(str(checkpoint)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{prefix}.checkpoint: {path} does not exist")
    state = _read_checkpoint(path)  # before building: a bad file fails fast
    model = builder(config_file, ckpt_path=None, device="cpu", hydra_overrides_extra=overrides)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(path, f"does not match architecture {arch}: {str(exc).splitlines()[0]}") from exc
    return model.to(device), f"{arch}-{image_size}-{file_sha1(path)[:10]}{suffix}", image_size


def load_segmenter(cfg: Config, device: str = "cpu", cache_mb: float | None = None) -> Segmenter:
    """Build the SAM2 segmenter of the active profile (see module docstring)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model, version, image_size = build_sam2_model(cfg, device=device)
    with warnings.catch_warnings():  # sam2's transforms use torch.jit.script, deprecated in recent torch
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        predictor = SAM2ImagePredictor(model)
    predictor._bb_feat_sizes = [(image_size // s, image_size // s) for s in (4, 8, 16)]
    alpha = alpha_threshold(cfg)
    mb = float(cfg.segmentation.embedding_cache_mb if cache_mb is None else cache_mb)
    return Segmenter(predictor, version, cfg, alpha=alpha, cache_bytes=int(mb * 2**20))


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors vary by torch version
        raise InputError(path, f"is not a loadable torch checkpoint ({exc})") from exc
    state = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise InputError(path, "is not a SAM2 checkpoint (no 'model' state dict)")
    return state
