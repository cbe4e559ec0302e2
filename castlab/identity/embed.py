"""Face-first identity embeddings and view buckets for character instances.

Each instance (a manifest ``kind: instance`` row) is routed:

- ``face``: InsightFace's detector (:mod:`castlab.models.faces`) finds a face in the source frame inside the
  instance's box (grown by ``identity.face_box_margin``); the best face whose centre lies inside the
  instance mask and whose detector score is at least ``identity.face_min_score`` gives a 512-d ArcFace
  embedding, its 5 keypoints give a yaw estimate and a view bucket.
- ``clip``: no such face; the identity vector is the open_clip embedding of the instance's RGBA crop
  composited on ``dataset.background_rgb``.
- ``missing``: the crop cannot be read; the row keeps its reason and gets no vector (nothing is dropped).

Every readable instance gets an open_clip vector too, so face-less instances can be compared with clusters
built on faces. Vectors are stored in ``embeddings/identity.npz`` with a JSON sidecar (model versions,
profile) by :func:`save_embeddings`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from castlab.config import Config
from castlab.errors import InputError
from castlab.layers import media_path, open_rgba
from castlab.manifest import row_text
from castlab.models.faces import ARCFACE_TEMPLATE, Face
from castlab.workspace import atomic_path, read_json, write_json_atomic

ROUTES = ("face", "clip", "missing")
VIEWS = ("front", "three_quarter", "profile", "back", "unknown")
EMBEDDINGS_DIR = "embeddings"
EMBEDDINGS_NAME = "identity.npz"
SIDECAR_NAME = "identity.json"
_CHUNK = 256  # instances whose crops are held in memory before one open_clip call

# -- yaw from 5 keypoints ---------------------------------------------------------------------------
# Nose tip depth in front of the eye/mouth-corner plane, as a fraction of the face width (mean of the
# eye distance and mouth width); ~0.45 on a mean human head model. Turning the head by yaw θ moves the
# nose off the face midline by depth·sin θ while the width shrinks to width·cos θ, so
# offset / width = NOSE_DEPTH_RATIO · tan θ.
NOSE_DEPTH_RATIO = 0.45
# Face width / eye-to-mouth height of a frontal face (InsightFace's ArcFace template: ~0.79). The ratio
# shrinks with cos(yaw); it only speaks when it says "past PROFILE_SQUEEZE_YAW" (nearly profile), where
# the nose cue fails because the far eye is hidden and keypoints collapse.
def _geometry(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """Eye midpoint, mouth midpoint, eye distance, mouth width and eye-to-mouth height of 5×2 keypoints."""
    eye_mid, mouth_mid = (pts[0] + pts[1]) / 2.0, (pts[3] + pts[4]) / 2.0
    return (eye_mid, mouth_mid, float(np.linalg.norm(pts[1] - pts[0])), float(np.linalg.norm(pts[4] - pts[3])),
            float(np.linalg.norm(mouth_mid - eye_mid)))


_, _, _IOD, _MOUTH, _HEIGHT = _geometry(ARCFACE_TEMPLATE.astype(np.float64))
FRONTAL_WIDTH_HEIGHT = (_IOD + _MOUTH) / 2.0 / _HEIGHT
PROFILE_SQUEEZE_YAW = 70.0
# Default bucket edges (degrees of |yaw|), overridable by identity.view_front_max_yaw and
# identity.view_three_quarter_max_yaw: |yaw| <= 25 front (both eyes and mouth corners fully visible),
# <= 65 three_quarter (the far cheek narrows, the nose still inside the face outline), above: profile.
FRONT_MAX_YAW = 25.0
THREE_QUARTER_MAX_YAW = 65.0


def estimate_yaw(kps: Any) -> float:
    """Yaw in degrees from 5 keypoints (eyes, nose, mouth corners; InsightFace order): 0 = facing the camera,
    positive = the nose points to image right. NaN when the keypoints are missing or unusable.

    The nose's offset from the face midline (halfway between the eye midpoint and the mouth midpoint),
    measured along the eye axis (so head roll does not matter) and divided by the face width, gives
    ``atan(offset / (width · NOSE_DEPTH_RATIO))``. When the face is squeezed beyond what
    ``PROFILE_SQUEEZE_YAW`` degrees of foreshortening explain, that foreshortening angle is used instead if
    larger. Stylised faces (big eyes, small noses) bias the estimate; buckets are coarse on purpose.
    """
    if kps is None:
        return math.nan
    pts = np.asarray(kps, dtype=np.float64)
    if pts.size != 10 or not np.all(np.isfinite(pts)):
        return math.nan
    pts = pts.reshape(5, 2)
    left_eye, right_eye, nose, mouth_left, mouth_right = pts
    eye_mid, mouth_mid, iod, mouth_w, height = _geometry(pts)
    scale = max(iod, mouth_w, height)
    if scale <= 1e-6:
        return math.nan
    axis = right_eye - left_eye if iod > 1e-3 * scale else mouth_right - mouth_left
    norm = float(np.linalg.norm(axis))
    axis = axis / norm if norm > 1e-3 * scale else np.array([1.0, 0.0])
    offset = float(np.dot(nose - (eye_mid + mouth_mid) / 2.0, axis))
    width = (iod + mouth_w) / 2.0
    sign = 1.0 if offset >= 0 else -1.0
    if width <= 1e-3 * scale:
        return 90.0 * sign
    yaw = math.degrees(math.atan2(abs(offset), width * NOSE_DEPTH_RATIO))
    if height > 1e-6:
        squeeze = min(1.0, (width / height) / FRONTAL_WIDTH_HEIGHT)
        foreshortened = math.degrees(math.acos(squeeze))
        if foreshortened > PROFILE_SQUEEZE_YAW:
            yaw = max(yaw, foreshortened)
    return sign * yaw


def view_bucket(kps: Any, front_max: float = FRONT_MAX_YAW, three_quarter_max: float = THREE_QUARTER_MAX_YAW) -> str:
    """``front`` | ``three_quarter`` | ``profile`` from the keypoints' yaw; ``unknown`` without a usable face.

    ``back`` (a head seen from behind) is part of the vocabulary but never returned yet: a head without a
    face cannot be told apart from a face the detector missed, so such instances stay ``unknown``.
    """
    yaw = estimate_yaw(kps)
    if math.isnan(yaw):
        return "unknown"
    if abs(yaw) <= front_max:
        return "front"
    if abs(yaw) <= three_quarter_max:
        return "three_quarter"
    return "profile"


# -- embeddings ----------------------------------------------------------------------------------------
class FaceModel(Protocol):
    """What :func:`embed_instances` needs from :class:`castlab.models.faces.FaceAnalyzer`."""

    model_version: str

    @property
    def dim(self) -> int: ...

    def detect(self, image_rgb: np.ndarray, region: tuple[float, float, float, float] | None = None) -> list[Face]: ...

    def embed(self, image_rgb: np.ndarray, face: Face) -> np.ndarray: ...


class ImageModel(Protocol):
    """What :func:`embed_instances` needs from :class:`castlab.models.embedder.Embedder`."""

    model_version: str

    @property
    def dim(self) -> int: ...

    def encode_images(self, images: list[Any]) -> np.ndarray: ...


def square_on_background(crop: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """The RGBA crop composited on `background`, padded to a square (open_clip centre-crops otherwise)."""
    side = max(crop.size)
    flat = Image.new("RGBA", crop.size, (*background, 255))
    flat.alpha_composite(crop)
    canvas = Image.new("RGB", (side, side), background)
    canvas.paste(flat.convert("RGB"), ((side - crop.width) // 2, (side - crop.height) // 2))
    return canvas


def _search_box(bbox: Any, margin: float, shape: tuple[int, ...]) -> tuple[float, float, float, float] | None:
    values = np.asarray(bbox if bbox is not None else [], dtype=np.float64).ravel()
    if values.size != 4 or not np.all(np.isfinite(values)) or values[2] <= 0 or values[3] <= 0:
        return None
    x, y, w, h = values
    height, width = shape[:2]
    return (max(0.0, x - margin * w), max(0.0, y - margin * h), min(width, x + w * (1 + margin)),
            min(height, y + h * (1 + margin)))


def _inside(face: Face, mask: np.ndarray | None, box: tuple[float, float, float, float] | None) -> bool:
    cx, cy = face.centre
    if mask is not None:
        ix, iy = int(math.floor(cx)), int(math.floor(cy))
        return 0 <= iy < mask.shape[0] and 0 <= ix < mask.shape[1] and bool(mask[iy, ix])
    if box is not None:
        return box[0] <= cx < box[2] and box[1] <= cy < box[3]
    return True


@dataclass
class _FrameCache:
    """The last frame read (instances are visited grouped by frame)."""

    key: str | None = None
    image: np.ndarray | None = None
    error: str | None = None

    def get(self, key: str, path: Path | None) -> tuple[np.ndarray | None, str | None]:
        if key != self.key:
            self.key, self.image, self.error = key, None, None
            try:
                self.image = np.asarray(open_rgba(path, "frame").convert("RGB"))
            except InputError as exc:
                self.error = str(exc)
        return self.image, self.error


def embed_instances(
    instances: Sequence[Mapping[str, Any]],
    frames: Mapping[str, Mapping[str, Any]],
    analyzer: FaceModel,
    clip_embedder: ImageModel,
    cfg: Config,
    base_dir: Path | None = None,
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Route every instance (module docstring) and embed it.

    `frames` maps a frame ``row_id`` (an instance's ``parent_id``) to its frame row (``path``). Relative
    paths resolve against `base_dir` (e.g. the run folder) or else the workspace root. Returns one update per
    instance, in input order (``row_id``, ``embedding_route``, ``embedding_reason``, ``face_score``,
    ``face_bbox`` x0/y0/x1/y1, ``face_kps``, ``yaw``, ``view``, ``embedding_model``, ``clip_model``), the
    (N, 512) face matrix (NaN rows where the route is not ``face``) and the (N, D) open_clip matrix (NaN rows
    for ``missing``).
    """
    min_score = float(cfg.identity.face_min_score)
    margin = float(cfg.identity.face_box_margin)
    front_max = float(cfg.identity.view_front_max_yaw)
    three_quarter_max = float(cfg.identity.view_three_quarter_max_yaw)
    background = tuple(int(c) for c in cfg.dataset.background_rgb)
    n = len(instances)
    updates: list[dict[str, Any]] = [{} for _ in range(n)]
    face_matrix = np.full((n, int(analyzer.dim)), np.nan, np.float32)
    clip_matrix = np.full((n, int(clip_embedder.dim)), np.nan, np.float32)
    order = sorted(range(n), key=lambda i: row_text(instances[i].get("parent_id")))
    frame_cache = _FrameCache()
    for start in range(0, n, _CHUNK):
        crops: list[Image.Image] = []
        crop_rows: list[int] = []
        for i in order[start : start + _CHUNK]:
            row = instances[i]
            update = updates[i]
            update.update({
                "row_id": row_text(row.get("row_id")), "embedding_route": "missing", "embedding_reason": None,
                "face_score": None, "face_bbox": None, "face_kps": None, "yaw": None, "view": "unknown",
                "embedding_model": None, "clip_model": None,
            })
            try:
                crop = open_rgba(media_path(row.get("crop_path"), base_dir), "instance crop")
            except InputError as exc:
                update["embedding_reason"] = str(exc)
                continue
            crops.append(square_on_background(crop, background))
            crop_rows.append(i)
            update.update({"embedding_route": "clip", "embedding_model": clip_embedder.model_version,
                           "clip_model": clip_embedder.model_version})
            face, vector, reason = _find_face(row, frames, analyzer, frame_cache, base_dir, margin, min_score)
            if face is None or vector is None:
                update["embedding_reason"] = reason
                continue
            face_matrix[i] = vector
            yaw = estimate_yaw(face.kps)
            update.update({
                "embedding_route": "face", "embedding_model": analyzer.model_version,
                "face_score": round(face.score, 6), "face_bbox": [round(v, 2) for v in face.bbox],
                "face_kps": [[round(float(x), 2), round(float(y), 2)] for x, y in np.asarray(face.kps)],
                "yaw": None if math.isnan(yaw) else round(yaw, 2),
                "view": view_bucket(face.kps, front_max, three_quarter_max),
            })
        if crops:
            clip_matrix[crop_rows] = np.asarray(clip_embedder.encode_images(crops), np.float32)
    return updates, face_matrix, clip_matrix


def _find_face(
    row: Mapping[str, Any], frames: Mapping[str, Mapping[str, Any]], analyzer: FaceModel, cache: _FrameCache,
    base_dir: Path | None, margin: float, min_score: float,
) -> tuple[Face | None, np.ndarray | None, str | None]:
    """The instance's face and its embedding, or (None, None, why not)."""
    parent = row_text(row.get("parent_id"))
    frame = frames.get(parent)
    if frame is None:
        return None, None, f"frame {parent or '?'} not given: no face search"
    image, error = cache.get(parent, media_path(frame.get("path"), base_dir))
    if image is None:
        return None, None, f"{error}: no face search"
    box = _search_box(row.get("bbox"), margin, image.shape)
    mask, note = None, ""
    try:
        mask_image = open_rgba(media_path(row.get("mask_path"), base_dir), "instance mask")
        mask = np.asarray(mask_image.convert("L")) > 0
        if mask.shape != image.shape[:2]:
            mask, note = None, " (mask size differs from the frame: box used)"
    except InputError:
        note = " (no mask: box used)"
    faces = [f for f in analyzer.detect(image, region=box) if _inside(f, mask, box)]
    if not faces:
        return None, None, "no face inside the instance" + note
    best = max(faces, key=lambda f: f.score)
    if best.score < min_score:
        return None, None, f"best face inside the instance scored {best.score:.2f} < {min_score}" + note
    vector = np.asarray(analyzer.embed(image, best), np.float32).ravel()
    if not np.all(np.isfinite(vector)):
        return None, None, "face embedding is not finite" + note
    return best, vector, (note.strip(" ()") or None)


# -- storage -------------------------------------------------------------------------------------------
@dataclass
class IdentityEmbeddings:
    """Vectors of one run: ``face`` (N, 512) and ``clip`` (N, D), NaN rows where a row has none."""

    row_ids: list[str]
    face: np.ndarray
    clip: np.ndarray
    meta: dict[str, Any]

    @property
    def face_mask(self) -> np.ndarray:
        return np.all(np.isfinite(self.face), axis=1) if self.face.size else np.zeros(len(self.row_ids), bool)

    @property
    def clip_mask(self) -> np.ndarray:
        return np.all(np.isfinite(self.clip), axis=1) if self.clip.size else np.zeros(len(self.row_ids), bool)


def embedding_meta(analyzer: FaceModel, clip_embedder: ImageModel, cfg: Config) -> dict[str, Any]:
    """Sidecar fields for :func:`save_embeddings`: model versions and profile."""
    return {"profile": cfg.profile, "face_model": analyzer.model_version, "clip_model": clip_embedder.model_version,
            "face_min_score": float(cfg.identity.face_min_score)}


def save_embeddings(
    run_dir: Path, row_ids: Sequence[str], face_matrix: np.ndarray, clip_matrix: np.ndarray, meta: Mapping[str, Any]
) -> Path:
    """Write ``<run_dir>/embeddings/identity.npz`` (row ids, face and clip vectors, masks of rows that have
    them) and ``identity.json`` beside it (`meta` plus counts). Returns the npz path."""
    face = np.asarray(face_matrix, np.float32)
    clip = np.asarray(clip_matrix, np.float32)
    ids = np.array([str(r) for r in row_ids], dtype=str)
    if face.ndim != 2 or clip.ndim != 2 or not (len(ids) == len(face) == len(clip)):
        raise ValueError(f"embeddings: {len(ids)} row ids, face {face.shape}, clip {clip.shape} do not line up")
    if len(set(ids.tolist())) != len(ids):
        raise ValueError("embeddings: duplicate row ids")
    out = Path(run_dir) / EMBEDDINGS_DIR / EMBEDDINGS_NAME
    face_mask = np.all(np.isfinite(face), axis=1)
    clip_mask = np.all(np.isfinite(clip), axis=1)
    with atomic_path(out) as tmp, tmp.open("wb") as fh:
        np.savez(fh, row_ids=ids, face=face, clip=clip, face_mask=face_mask, clip_mask=clip_mask)
    sidecar = {**dict(meta), "file": EMBEDDINGS_NAME, "rows": len(ids), "face_rows": int(face_mask.sum()),
               "clip_rows": int(clip_mask.sum()), "face_dim": int(face.shape[1]), "clip_dim": int(clip.shape[1])}
    write_json_atomic(out.with_name(SIDECAR_NAME), sidecar)
    return out


def load_embeddings(run_dir: Path) -> IdentityEmbeddings:
    """Read what :func:`save_embeddings` wrote."""

    path = Path(run_dir) / EMBEDDINGS_DIR / EMBEDDINGS_NAME
    if not path.is_file():
        raise InputError(path, "identity embeddings do not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, face, clip = data["row_ids"], data["face"], data["clip"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(path, f"identity embeddings are not readable ({exc})") from exc
    sidecar = path.with_name(SIDECAR_NAME)
    meta = read_json(sidecar) if sidecar.is_file() else {}
    if not (len(ids) == len(face) == len(clip)):
        raise InputError(path, f"{len(ids)} row ids but face {face.shape} and clip {clip.shape}")
    return IdentityEmbeddings([str(r) for r in ids.tolist()], face.astype(np.float32), clip.astype(np.float32), meta)


# -- sampling ------------------------------------------------------------------------------------------
def view_balanced_sample(rows: Sequence[Mapping[str, Any]], n: int, seed: int) -> list[Mapping[str, Any]]:
    """Up to `n` rows taken round-robin over view buckets (``VIEWS`` order, unknown and other values last),
    each bucket shuffled with `seed`: rare views are all kept before common ones fill the rest."""
    buckets: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        buckets.setdefault(row_text(row.get("view")) or "unknown", []).append(row)
    names = [v for v in VIEWS if v in buckets and v != "unknown"]
    names += sorted(v for v in buckets if v not in VIEWS) + (["unknown"] if "unknown" in buckets else [])
    rng = random.Random(seed)
    queues = []
    for name in names:
        items = list(buckets[name])
        rng.shuffle(items)
        queues.append(items)
    picked: list[Mapping[str, Any]] = []
    depth = 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(picked) < n:
                picked.append(queue[depth])
        depth += 1
    return picked
