"""The webhook receiver: Label Studio project webhooks in, Prefect events out (``castlab up`` runs it on 127.0.0.1).

``POST /labelstudio``: a request without the shared secret header gets 401 and touches nothing; a body that is not
a Label Studio annotation webhook gets 400; otherwise the answer (202) goes back at once and the event is sent to
the Prefect server after it (Label Studio waits 1 s and never retries). ``GET /health`` answers without the secret.
A failed event send is logged: the ``review-reconcile`` deployment finds the annotation later.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse

from castlab.errors import CastlabError
from castlab.reviews.events import annotation_event, post_events, project_of
from castlab.reviews.secret import HEADER, matches

logger = logging.getLogger("castlab.receiver")
ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"}


def _send(api_url: str, events: list[dict[str, Any]]) -> None:
    try:
        post_events(api_url, events)
        logger.info("sent %d event(s) for project %s", len(events), events[0]["resource"]["castlab.project.id"])
    except CastlabError as exc:
        logger.warning("events not sent (reconciliation will catch up): %s", exc)


def create_app(secret: str, api_url: str) -> FastAPI:
    app = FastAPI(title="castlab webhook receiver", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "UP"}

    @app.post("/labelstudio")
    async def labelstudio(request: Request, background: BackgroundTasks) -> JSONResponse:
        if not matches(request.headers.get(HEADER), secret):
            return JSONResponse({"error": f"missing or wrong {HEADER} header"}, status_code=401)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        action = body.get("action") if isinstance(body, dict) else None
        project_id = project_of(body) if isinstance(body, dict) else None
        if action not in ACTIONS or project_id is None:
            return JSONResponse({"error": f"not an annotation webhook (action {action!r})"}, status_code=400)
        annotations = body.get("annotations") or [body.get("annotation")]
        events = [annotation_event(project_id, action, a, "webhook") for a in annotations if isinstance(a, dict)]
        background.add_task(_send, api_url, events)
        return JSONResponse({"accepted": len(events)}, status_code=202)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from castlab.reviews.secret import webhook_secret

    parser = argparse.ArgumentParser(prog="python -m flows.receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    api_url = os.environ.get("PREFECT_API_URL", "").strip()
    secret = webhook_secret()
    if not api_url or not secret:
        raise SystemExit("castlab receiver: PREFECT_API_URL and the webhook secret must be set (castlab up does it)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(secret, api_url), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
