"""Load a task's image the way Label Studio references it, never reading outside what it serves.

Accepted references:

- ``/data/local-files/?d=<path>``: read straight from the shared media root (the castlab workspace, which
  is Label Studio's local-files document root) through :func:`castlab.workspace.resolve_in_workspace`;
  anything that escapes the root is refused.
- ``http(s)://<Label Studio host>/...`` and other root-relative paths Label Studio serves
  (``/data/upload/...``): downloaded from that one Label Studio instance with its API token. Any other
  host, scheme or redirect is refused.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import requests
from PIL import Image, ImageOps, UnidentifiedImageError

from castlab.config import Config
from castlab.errors import CastlabError, InputError
from castlab.labelstudio.connection import labelstudio_connection
from castlab.workspace import resolve_in_workspace
from ml_backend.errors import BackendError

logger = logging.getLogger("ml_backend.images")

LOCAL_FILES_PATH = "/data/local-files/"
DOWNLOAD_TIMEOUT_S = 30  # below Label Studio's 100 s predict timeout, so a stuck download fails first
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class LabelStudioSource:
    """The one Label Studio instance images may be downloaded from (the token is never logged)."""

    url: str
    token: str

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return f"LabelStudioSource(url={self.url!r}, token=***)"

    def origin(self) -> tuple[str, str, int]:
        return _origin(self.url)

    def auth_header(self) -> dict[str, str]:
        """``Token <key>`` for legacy keys; a JWT personal access token is exchanged for an access token."""
        if self.token.count(".") == 2 and self.token.startswith("eyJ"):
            response = requests.post(
                f"{self.url.rstrip('/')}/api/token/refresh/",
                json={"refresh": self.token},
                timeout=DOWNLOAD_TIMEOUT_S,
                allow_redirects=False,
            )
            if response.status_code != 200 or "access" not in response.json():
                raise BackendError(
                    502, f"Label Studio at {self.url} refused the API token (HTTP {response.status_code})"
                )
            return {"Authorization": f"Bearer {response.json()['access']}"}
        return {"Authorization": f"Token {self.token}"}


def labelstudio_source(cfg: Config) -> LabelStudioSource | None:
    """The Label Studio to download from (:func:`castlab.labelstudio.connection.labelstudio_connection`:
    ``LABEL_STUDIO_URL`` + ``LABEL_STUDIO_API_KEY`` or the running local stack), or None when there is none yet."""
    try:
        url, token = labelstudio_connection(cfg)
    except CastlabError as exc:
        logger.info("no Label Studio connection for image downloads: %s", exc)
        return None
    return LabelStudioSource(str(url).rstrip("/"), str(token))


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if host in _LOOPBACK_NAMES:
        host = "loopback"
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise BackendError(400, f"{url}: invalid port") from exc
    return scheme, host, port


def decode_image(data: bytes | Path, name: str, mode: str = "RGB") -> np.ndarray:
    """RGB uint8 HxWx3 array (HxWx4 for `mode` "RGBA"), EXIF orientation applied (as browsers show it in
    Label Studio)."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img.load()
            return np.asarray(ImageOps.exif_transpose(img).convert(mode))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise BackendError(422, f"{name}: not a readable image ({type(exc).__name__})") from exc


def local_files_path(url: str) -> str | None:
    """The ``d`` parameter of a root-relative ``/data/local-files/?d=...`` reference, else None."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or parts.path.rstrip("/") != LOCAL_FILES_PATH.rstrip("/"):
        return None
    values = parse_qs(parts.query, keep_blank_values=True).get("d")
    if not values or not values[0]:
        raise BackendError(400, f"{url}: local-files reference without a 'd' parameter")
    return values[0]


def read_local_file(rel: str, mode: str = "RGB") -> np.ndarray:
    """Decode an image under the media root; paths that escape the root are refused (HTTP 403)."""
    if "\x00" in rel:
        raise BackendError(400, f"d={rel!r}: invalid path")
    try:
        path = resolve_in_workspace(rel)
    except InputError as exc:
        raise BackendError(403, f"d={rel}: refused, {exc.problem}") from exc
    if not path.exists():
        raise BackendError(404, f"d={rel}: image does not exist under the media root")
    if not path.is_file():
        raise BackendError(400, f"d={rel}: not a file")
    return decode_image(path, f"d={rel}", mode)


def download(url: str, source: LabelStudioSource | None, mode: str = "RGB") -> np.ndarray:
    """Download an image from the configured Label Studio instance only (no redirects, no other host)."""
    parts = urlsplit(url)
    if not parts.scheme and not parts.netloc and url.startswith("/"):
        if source is None:
            raise BackendError(
                400, f"{url}: served by Label Studio, but no Label Studio connection is configured"
            )
        url = f"{source.url.rstrip('/')}{url}"
    elif parts.scheme.lower() not in ("http", "https"):
        raise BackendError(
            400,
            f"{url[:200]}: unsupported image reference (expected /data/local-files/?d=... or "
            "a URL of the connected Label Studio)",
        )
    if source is None:
        raise BackendError(400, f"{url}: no Label Studio connection is configured, remote images are refused")
    if _origin(url) != source.origin():
        raise BackendError(
            403, f"{url}: refused, images are only downloaded from Label Studio at {source.url}"
        )
    try:
        response = requests.get(
            url, headers=source.auth_header(), timeout=DOWNLOAD_TIMEOUT_S, allow_redirects=False
        )
    except requests.RequestException as exc:
        raise BackendError(502, f"{url}: download failed ({type(exc).__name__})") from exc
    if 300 <= response.status_code < 400:
        raise BackendError(
            403, f"{url}: refused, Label Studio answered with a redirect (HTTP {response.status_code})"
        )
    if response.status_code == 404:
        raise BackendError(404, f"{url}: Label Studio has no such image (HTTP 404)")
    if response.status_code in (401, 403):
        raise BackendError(
            502,
            f"{url}: Label Studio refused the download (HTTP {response.status_code}); "
            "check LABEL_STUDIO_API_KEY",
        )
    if response.status_code != 200:
        raise BackendError(502, f"{url}: Label Studio answered HTTP {response.status_code}")
    return decode_image(response.content, url, mode)


def load_image(
    reference: object, source: LabelStudioSource | Callable[[], LabelStudioSource | None] | None, mode: str = "RGB"
) -> np.ndarray:
    """Image of a task's data value (see module docstring). `source` may be a lazy getter; `mode` "RGBA"
    keeps the alpha channel."""
    if not isinstance(reference, str) or not reference.strip():
        raise BackendError(400, f"task image reference must be a non-empty string, got {reference!r:.80}")
    reference = reference.strip()
    rel = local_files_path(reference)
    if rel is not None:
        return read_local_file(rel, mode)
    resolved = source() if callable(source) else source
    return download(reference, resolved, mode)


def task_run_dir(run_rel: Any, what: str) -> Path:
    """The run folder a task names (``castlab_run``, relative to the media root), with a manifest."""
    if not isinstance(run_rel, str) or not run_rel:
        raise BackendError(400, f"{what} task: data has no 'castlab_run'")
    try:
        run_dir = resolve_in_workspace(run_rel)
    except CastlabError as exc:
        raise BackendError(403, f"{what} task: run {run_rel!r} is outside the media root") from exc
    if not (run_dir / "manifest.parquet").is_file():
        raise BackendError(404, f"{what} task: run {run_rel!r} has no manifest")
    return run_dir
