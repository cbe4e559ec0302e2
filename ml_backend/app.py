"""FastAPI app speaking Label Studio 1.23's ML backend protocol (routing in :mod:`ml_backend.router`).

Endpoints: ``GET /health``, ``POST /setup``, ``POST /predict``, ``POST /webhook``. Errors answer
``{"error": message}`` with a 4xx/5xx status; the server keeps serving. With credentials
(:mod:`ml_backend.auth`), every endpoint requires HTTP basic auth.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from castlab.config import Config, load_config
from castlab.errors import CastlabError
from castlab.labelstudio.backends import BasicAuth
from castlab.models.segmenter import Segmenter
from ml_backend.auth import BasicAuthMiddleware
from ml_backend.errors import BackendError
from ml_backend.identity import VectorLoader
from ml_backend.images import LabelStudioSource
from ml_backend.router import Backend

logger = logging.getLogger("ml_backend")


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BackendError(
            400, f"{request.url.path}: body is not valid JSON ({exc.__class__.__name__})"
        ) from exc


def create_app(
    cfg: Config | None = None,
    *,
    preload: bool = False,
    segmenter_factory: Callable[[Config], Segmenter] | None = None,
    labelstudio: LabelStudioSource | None | Callable[[], LabelStudioSource | None] = None,
    identity_loader: VectorLoader | None = None,
    captioner_factory: Callable[[Config], Any] | None = None,
    embedder_factory: Callable[[Config], Any] | None = None,
    auth: BasicAuth | None = None,
) -> FastAPI:
    """The backend app; models come from the factories (castlab's loaders by default, loaded on first use).
    With `preload`, the predictors are set up before the server accepts requests: Label Studio gives
    ``/setup`` only 3 s, less than a cold SAM2 load. With `auth`, every request must carry those basic-auth
    credentials (401 otherwise, before anything else runs)."""
    backend = Backend(cfg or load_config(), segmenter_factory=segmenter_factory, labelstudio=labelstudio,
                      identity_loader=identity_loader, captioner_factory=captioner_factory,
                      embedder_factory=embedder_factory)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if preload:
            await run_in_threadpool(backend.warm_up)
        yield

    app = FastAPI(title="castlab ML backend", lifespan=lifespan)
    app.state.backend = backend
    if auth is not None:
        app.add_middleware(BasicAuthMiddleware, auth=auth)

    @app.exception_handler(BackendError)
    async def _backend_error(request: Request, exc: BackendError) -> JSONResponse:
        logger.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(CastlabError)
    async def _castlab_error(request: Request, exc: CastlabError) -> JSONResponse:
        logger.error("%s %s -> 500: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": str(exc)}, status_code=500)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.get("/")
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return backend.health()

    @app.post("/setup")
    async def setup(request: Request) -> dict[str, Any]:
        return await run_in_threadpool(backend.setup, await _json_body(request))

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        return await run_in_threadpool(backend.predict, await _json_body(request))

    @app.post("/webhook")
    async def webhook(request: Request) -> dict[str, Any]:
        return backend.webhook(await _json_body(request))

    return app
