"""``python -m ml_backend [--host H] [--port P]``: serve the castlab ML backend with uvicorn.

Host and port default to the ``ml_backend.host`` / ``ml_backend.port`` settings (127.0.0.1 by default:
the backend reads the media root, so it is not exposed beyond this machine unless asked). With
``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS`` set, every request needs those credentials; beyond loopback they are
required (the backend refuses to start without them).
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from castlab.config import load_config
from castlab.errors import CastlabError
from castlab.labelstudio.backends import PASS_ENV, USER_ENV, backend_auth
from castlab.runtime import setup_runtime
from ml_backend.app import create_app
from ml_backend.auth import check_bind


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ml_backend", description="castlab's Label Studio ML backend"
    )
    parser.add_argument(
        "--host", help="bind address (default: setting ml_backend.host); beyond loopback needs BASIC_AUTH_USER/_PASS"
    )
    parser.add_argument("--port", type=int, help="port (default: setting ml_backend.port)")
    parser.add_argument("--config", action="append", default=[], help="override YAML file (repeatable)")
    parser.add_argument("--preset", help="config preset, e.g. 2d")
    parser.add_argument(
        "--profile", choices=["tiny", "full"], help="model profile (default: setting profile)"
    )
    parser.add_argument(
        "--lazy", action="store_true", help="load the segmenter on the first request, not at start"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: list[str] | None = None) -> None:
    setup_runtime()
    args = build_parser().parse_args(argv)
    cfg = load_config(overrides=args.config, preset=args.preset, profile=args.profile)
    host = args.host or str(cfg.ml_backend.host)
    port = args.port or int(cfg.ml_backend.port)
    try:  # before any model load: a backend that would be open to the network never starts
        auth = backend_auth()
        check_bind(host, auth)
    except CastlabError as exc:
        raise SystemExit(f"ml_backend: {exc}") from exc
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if auth is not None:
        logging.getLogger("ml_backend").info("HTTP basic auth required on every endpoint (%s, %s)", USER_ENV, PASS_ENV)
    app = create_app(cfg, auth=auth)
    if not args.lazy:  # before binding the port: Label Studio gives /setup 3 s, less than a cold SAM2 load
        try:
            app.state.backend.warm_up()
        except CastlabError as exc:
            raise SystemExit(f"ml_backend: {exc}") from exc
    uvicorn.run(app, host=host, port=port, log_level=args.log_level, access_log=args.log_level == "debug")


if __name__ == "__main__":
    main()
