"""InsightFace face detector (SCRFD) + recognition (ArcFace) behind one wrapper, :class:`FaceAnalyzer`.

Profiles (``models.<profile>.faces``):

- ``tiny``: castlab builds a tiny SCRFD-like detector (9 outputs: scores, box distances and 5 keypoints for
  strides 8/16/32, 2 anchors per location) and a tiny ArcFace-like recogniser (112×112 → 512) from torch
  modules with random weights seeded from ``seed``, exports them to ONNX once into
  ``<project root>/.cache/tiny-faces/<hash>/`` and loads that folder as an InsightFace pack (offline,
  seconds). The detector's random heads still give well-formed output: face-sized boxes around each anchor
  and keypoints in a frontal face layout with a little random jitter; its scores are noise.
  ``model_version`` is ``tiny-faces-<hash>-s<seed>``.
- ``full``: ``pack`` is an InsightFace model pack name, looked up in ``<root>/models/<name>`` and
  ``<root>/<name>`` (``root`` defaults to ``~/.insightface``), or a folder holding the pack's ONNX files
  (a detector with keypoints and an ArcFace recogniser, e.g. buffalo_l's ``det_10g.onnx`` +
  ``w600k_r50.onnx``). castlab never downloads a pack and never falls back to random weights: a missing
  pack is a :class:`ConfigError`. ``model_version`` is ``insightface-<pack>-<sha1 of the two ONNX files>``.

InsightFace's models are trained on photographs of real people; stylised 3D faces are a known weak spot
(fewer detections, identities less separated), which is why castlab routes face-less instances to open_clip.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from castlab.config import Config
from castlab.errors import ConfigError, InputError
from castlab.models import cache_root, file_sha1

TINY_DET_SIZE = 128  # tiny detector input side (fixed): strides 8/16/32 → 16², 8², 4² locations
TINY_REC_SIZE = 112  # ArcFace input side
EMBED_DIM = 512
_ANCHORS = 2
_STRIDES = (8, 16, 32)
_TINY_FORMAT = 1  # bump when the export changes in a way the module sources below do not show
# 5 keypoints (eyes, nose, mouth corners) of InsightFace's ArcFace alignment template, 112-pixel crop
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class Face:
    """One detected face: ``bbox`` (x0, y0, x1, y1) in image pixels, detector ``score`` and ``kps`` (5×2,
    pixels: image-left eye, image-right eye, nose tip, image-left and image-right mouth corners)."""

    bbox: tuple[float, float, float, float]
    score: float
    kps: np.ndarray

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0


class FaceAnalyzer:
    """SCRFD detection and ArcFace embeddings on RGB uint8 images (InsightFace itself works in BGR)."""

    def __init__(
        self, detector: Any, recognizer: Any, model_version: str, profile: str, det_thresh: float
    ) -> None:
        if not getattr(detector, "use_kps", False):
            raise ConfigError(f"face detector {getattr(detector, 'model_file', '?')} gives no keypoints")
        self.detector = detector
        self.recognizer = recognizer
        self.model_version = model_version
        self.profile = profile
        self.det_thresh = float(det_thresh)

    @property
    def dim(self) -> int:
        shape = getattr(self.recognizer, "output_shape", None)
        return int(shape[-1]) if shape and isinstance(shape[-1], int) else EMBED_DIM

    def detect(
        self, image_rgb: np.ndarray, region: tuple[float, float, float, float] | None = None
    ) -> list[Face]:
        """Faces in `image_rgb`, best score first; with `region` (x0, y0, x1, y1) only that part of the image
        is searched (at the detector's full resolution) and only faces centred in it are kept. Boxes and
        keypoints are in `image_rgb` pixels."""
        image = _check_rgb(image_rgb)
        ox = oy = 0
        limit = (0.0, 0.0, float(image.shape[1]), float(image.shape[0]))
        if region is not None:
            height, width = image.shape[:2]
            x0, y0 = max(0, int(np.floor(region[0]))), max(0, int(np.floor(region[1])))
            x1, y1 = min(width, int(np.ceil(region[2]))), min(height, int(np.ceil(region[3])))
            if x1 - x0 < 2 or y1 - y0 < 2:
                return []
            image, ox, oy = image[y0:y1, x0:x1], x0, y0
            limit = (float(x0), float(y0), float(x1), float(y1))
        bgr = np.ascontiguousarray(image[..., ::-1])
        dets, kpss = self.detector.detect(bgr, max_num=0, det_thresh=self.det_thresh)
        faces = []
        for det, kps in zip(np.asarray(dets).reshape(-1, 5), np.asarray(kpss).reshape(-1, 5, 2), strict=True):
            if not (np.all(np.isfinite(det)) and np.all(np.isfinite(kps))):
                continue
            box = (float(det[0] + ox), float(det[1] + oy), float(det[2] + ox), float(det[3] + oy))
            points = (kps + np.array([ox, oy], np.float32)).astype(np.float32)
            face = Face(box, float(det[4]), points)
            cx, cy = face.centre  # the detector letterboxes: anchors on the padding lie outside the image
            if limit[0] <= cx < limit[2] and limit[1] <= cy < limit[3]:
                faces.append(face)
        return sorted(faces, key=lambda f: -f.score)

    def embed(self, image_rgb: np.ndarray, face: Face) -> np.ndarray:
        """512-d L2-normalised ArcFace embedding of `face` (aligned with ``norm_crop`` on its keypoints)."""
        return self.embed_many(image_rgb, [face])[0]

    def embed_many(self, image_rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
        """(N, 512) L2-normalised embeddings of several faces of one image (one recogniser call)."""
        from insightface.utils.face_align import norm_crop

        if not faces:
            return np.zeros((0, self.dim), np.float32)
        bgr = np.ascontiguousarray(_check_rgb(image_rgb)[..., ::-1])
        side = int(self.recognizer.input_size[0])
        with warnings.catch_warnings():  # scikit-image deprecates SimilarityTransform.estimate, used by norm_crop
            warnings.simplefilter("ignore", FutureWarning)
            aligned = [norm_crop(bgr, np.asarray(f.kps, np.float32).reshape(5, 2), image_size=side) for f in faces]
        feats = np.asarray(self.recognizer.get_feat(aligned), np.float32).reshape(len(faces), -1)
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        return (feats / np.maximum(norms, 1e-12)).astype(np.float32)


def _check_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"face analysis expects an RGB uint8 HxWx3 array, got {image.dtype} {image.shape}")
    return image


# -- loading ------------------------------------------------------------------------------------------
def load_face_analyzer(cfg: Config, device: str = "cpu") -> FaceAnalyzer:
    """The face analyzer of the active profile (see module docstring)."""
    prefix = f"models.{cfg.profile}.faces"
    settings = cfg.model("faces")
    det_thresh = float(settings.det_thresh)
    if cfg.profile == "tiny":
        seed = int(cfg.seed)
        folder, digest = tiny_face_pack(seed)
        name, version = folder.name, f"tiny-faces-{digest[:10]}-s{seed}"
        det_size = TINY_DET_SIZE
    else:
        folder, name = _find_pack(settings, prefix)
        det_size = int(settings.det_size or 640)
        version = ""
    app = _face_analysis(folder, device, det_size, det_thresh, prefix)
    detector, recognizer = app.models["detection"], app.models["recognition"]
    if not version:
        digest = hashlib.sha1()
        for path in (detector.model_file, recognizer.model_file):
            digest.update(file_sha1(Path(path)).encode())
        version = f"insightface-{name}-{digest.hexdigest()[:10]}"
    return FaceAnalyzer(detector, recognizer, version, cfg.profile, det_thresh)


def _find_pack(settings: dict[str, Any], prefix: str) -> tuple[Path, str]:
    pack = str(settings.pack or "").strip()
    root = Path(str(settings.root or "~/.insightface")).expanduser()
    hint = (
        "a folder holding an InsightFace pack's ONNX files (a detector with keypoints and an ArcFace "
        "recogniser, e.g. buffalo_l's det_10g.onnx and w600k_r50.onnx)"
    )
    if not pack:
        raise ConfigError(
            f"{prefix}.pack is not set: set it to an InsightFace pack name found under {root / 'models'} "
            f"(e.g. buffalo_l) or to {hint}; castlab never downloads packs nor falls back to random weights"
        )
    direct = Path(pack).expanduser()
    candidates = [direct] if direct.is_absolute() or "/" in pack else [root / "models" / pack, root / pack, direct]
    for folder in candidates:
        if folder.is_dir():
            return folder.resolve(), folder.name
    looked = ", ".join(str(c) for c in candidates)
    raise ConfigError(
        f"{prefix}.pack: InsightFace pack {pack!r} not found (looked in {looked}): unpack the pack into "
        f"{root / 'models' / direct.name} or set {prefix}.pack to {hint} ({prefix}.root changes where names "
        "are looked up); castlab never downloads packs"
    )


def _providers(device: str) -> tuple[list[str], int]:
    import onnxruntime

    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], index
    return ["CPUExecutionProvider"], -1


def _face_analysis(folder: Path, device: str, det_size: int, det_thresh: float, prefix: str) -> Any:
    from insightface.app import FaceAnalysis

    providers, ctx_id = _providers(device)
    try:  # a folder path: FaceAnalysis loads it as it is (no name lookup, no download)
        app = FaceAnalysis(name=str(folder), allowed_modules=["detection", "recognition"], providers=providers)
    except AssertionError as exc:
        raise ConfigError(f"{prefix}: {folder} holds no face detector InsightFace can load") from exc
    except Exception as exc:  # onnx / onnxruntime / manifest errors have many types
        raise InputError(folder, f"InsightFace cannot load this model pack ({type(exc).__name__}: {exc})") from exc
    if "recognition" not in app.models:
        raise ConfigError(f"{prefix}: {folder} holds no ArcFace recognition model InsightFace can load")
    app.prepare(ctx_id=ctx_id, det_thresh=det_thresh, det_size=(det_size, det_size))
    return app


# -- the tiny pack ------------------------------------------------------------------------------------
def _modules() -> tuple[type, type]:
    import torch
    from torch import nn

    class TinySCRFD(nn.Module):
        """SCRFD-shaped detector: 3 strides × (scores, box distances, keypoints), 2 anchors per location."""

        def __init__(self, width: int = 16) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, width, 3, 2, 1), nn.ReLU(),
                nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(),
            )
            self.down = nn.ModuleList(
                [nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.ReLU()) for _ in _STRIDES[1:]]
            )
            self.heads = nn.ModuleList([nn.Conv2d(width, _ANCHORS * 15, 1) for _ in _STRIDES])
            # keypoints in stride units around the anchor: the ArcFace template on a 3-stride face box
            template = (ARCFACE_TEMPLATE - 56.0) / 112.0 * 3.0
            self.register_buffer("template", torch.from_numpy(template.reshape(1, 10).copy()))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            feats = [self.stem(x)]
            for down in self.down:
                feats.append(down(feats[-1]))
            scores, boxes, kps = [], [], []
            for feat, head in zip(feats, self.heads, strict=True):
                out = head(feat).permute(0, 2, 3, 1).reshape(-1, 15)  # row = (y, x, anchor) as SCRFD decodes
                scores.append(torch.sigmoid(out[:, :1]))
                boxes.append(1.5 + torch.tanh(out[:, 1:5]))  # distances to the box sides, in strides
                kps.append(self.template + 0.15 * torch.tanh(out[:, 5:15]))
            return (*scores, *boxes, *kps)

    class TinyArcFace(nn.Module):
        """ArcFace-shaped recogniser: 112×112 RGB → 512 (unnormalised, as ArcFace ONNX models are)."""

        def __init__(self) -> None:
            super().__init__()
            chans = [3, 16, 32, 64, 64]
            layers: list[nn.Module] = []
            for cin, cout in zip(chans[:-1], chans[1:], strict=True):
                layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.ReLU()]
            self.body = nn.Sequential(*layers)
            self.fc = nn.Linear(chans[-1], EMBED_DIM)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.body(x).mean(dim=(2, 3)))

    return TinySCRFD, TinyArcFace


def _tiny_digest(seed: int) -> str:
    spec = {
        "format": _TINY_FORMAT, "seed": seed, "det_size": TINY_DET_SIZE, "rec_size": TINY_REC_SIZE,
        "source": inspect.getsource(_modules),
    }
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()



def tiny_face_pack(seed: int) -> tuple[Path, str]:
    """Folder of the tiny pack for `seed` (built on first use) and its digest."""
    digest = _tiny_digest(seed)
    folder = cache_root("the tiny face models") / "tiny-faces" / digest[:16]
    if not ((folder / "det_tiny.onnx").is_file() and (folder / "rec_tiny.onnx").is_file()):
        _build_tiny_pack(folder, seed)
    return folder, digest


def _build_tiny_pack(folder: Path, seed: int) -> None:
    import torch

    tiny_scrfd, tiny_arcface = _modules()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-faces-", dir=folder.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            det, rec = tiny_scrfd().eval(), tiny_arcface().eval()
        names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in _STRIDES]
        with torch.no_grad():
            torch.onnx.export(
                det, (torch.zeros(1, 3, TINY_DET_SIZE, TINY_DET_SIZE),), str(tmp / "det_tiny.onnx"),
                input_names=["input"], output_names=names, opset_version=17, dynamo=False,
            )
            torch.onnx.export(
                rec, (torch.zeros(1, 3, TINY_REC_SIZE, TINY_REC_SIZE),), str(tmp / "rec_tiny.onnx"),
                input_names=["input"], output_names=["embedding"], opset_version=17, dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
            )
        tmp.chmod(0o755)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process built it first (the folder exists and is not empty)
            if not (folder / "rec_tiny.onnx").is_file():
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
