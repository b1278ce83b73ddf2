"""The worker's HTTP server. It trusts only callers that present the token it was started with.

It announces where it listens by printing one JSON line to stdout, ``{"listening": "http://host:port"}``,
so that a parent which asked for port 0 learns the port without a race.
"""

from __future__ import annotations

import hmac
import json
import os
import socket
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TOKEN_ENV = "AISERVE_WORKER_TOKEN"  # noqa: S105 (the name of the variable, not a secret)


def _device() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "cuda" if visible not in (None, "", "-1") else "cpu"


def create_worker_app(token: str | None) -> Starlette:
    started_at = time.time()
    device = _device()

    async def health(request: Request) -> JSONResponse:
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if token and not hmac.compare_digest(presented.encode(), token.encode()):
            return JSONResponse({"error": "worker token required", "code": "AUTH_INVALID"}, status_code=401)
        uptime_s = round(time.time() - started_at)
        return JSONResponse({"status": "ok", "device": device, "pid": os.getpid(), "uptime_s": uptime_s})

    return Starlette(routes=[Route("/health", health)])


def serve_worker(host: str, port: int) -> None:
    """Bind ``host:port`` (0 picks a free port), announce it on stdout, and serve until stopped."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    app = create_worker_app(os.environ.get(TOKEN_ENV) or None)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    print(json.dumps({"listening": f"http://{shown_host}:{bound}"}), flush=True)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the announcement pipe is done; later output is logs
    server.run(sockets=[sock])
