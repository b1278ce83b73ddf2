"""The worker's HTTP server. It trusts only callers that present the token it was started with.

Routes: ``GET /health``; ``PUT /models/{key}?format=onnx|torchscript&require_gpu=true|false`` with the model
file as the body; ``GET`` and ``DELETE /models/{key}``; ``POST /models/{key}/infer`` with
``{"inputs": {name: wire tensor}}`` (see :mod:`aiserve_mcp.runtime.wire`). Errors are the platform's error
bodies, ``{"error", "code"}``.

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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aiserve_mcp.errors import (
    AiserveError,
    AuthInvalid,
    PayloadTooLarge,
    ValidationFailed,
    error_body,
    error_headers,
    kind_of,
)
from aiserve_mcp.runtime.wire import decode_arrays, encode_arrays
from aiserve_mcp.worker import TOKEN_ENV
from aiserve_mcp.worker.models import WorkerModels, check_format, check_key

MAX_MODEL_BYTES_ENV: Final = "AISERVE_WORKER_MAX_MODEL_BYTES"
THREADS_ENV: Final = "AISERVE_WORKER_THREADS"
DEFAULT_MAX_MODEL_BYTES: Final = 10 * 1024**3
MAX_INFER_BYTES: Final = 256 * 1024**2


def _device() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "cuda" if visible not in (None, "", "-1") else "cpu"


def _declared_size(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise ValidationFailed("the Content-Length header is not a number")
    return int(value)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with :class:`PayloadTooLarge` as soon as it passes ``limit`` bytes."""
    declared = _declared_size(request)
    too_large = PayloadTooLarge(f"the request body is larger than the {limit} bytes this worker accepts")
    if declared is not None and declared > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false")
    if value not in ("true", "false"):
        raise ValidationFailed(f"{name} must be true or false")
    return value == "true"


async def _render_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AiserveError)
    return JSONResponse(error_body(exc), status_code=kind_of(exc).http_status, headers=error_headers(exc))


def create_worker_app(
    token: str | None, *, max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES, threads: int | None = None
) -> Starlette:
    """The worker's routes. Every one requires ``Authorization: Bearer <token>`` when ``token`` is set;
    model files up to ``max_model_bytes`` are accepted and loaded with ``threads`` runtime threads."""
    started_at = time.time()
    device = _device()
    models = WorkerModels(max_model_bytes=max_model_bytes, threads=threads, device=device)

    def authorize(request: Request) -> None:
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if token and not hmac.compare_digest(presented.encode(), token.encode()):
            raise AuthInvalid("worker token required")

    def model_key(request: Request) -> str:
        authorize(request)
        return check_key(str(request.path_params["key"]))

    async def health(request: Request) -> JSONResponse:
        authorize(request)
        uptime_s = round(time.time() - started_at)
        return JSONResponse(
            {
                "status": "ok",
                "device": device,
                "pid": os.getpid(),
                "uptime_s": uptime_s,
                "models": len(models),
            }
        )

    async def put_model(request: Request) -> JSONResponse:
        key = model_key(request)
        format = check_format(request.query_params.get("format", ""))
        require_gpu = _flag(request, "require_gpu")
        path = await models.receive(request.stream(), _declared_size(request))
        hosted = await models.load(key, path, format, require_gpu=require_gpu)
        return JSONResponse(hosted.describe())

    async def get_model(request: Request) -> JSONResponse:
        return JSONResponse(models.get(model_key(request)).describe())

    async def delete_model(request: Request) -> JSONResponse:
        await models.unload(model_key(request))
        return JSONResponse({"deleted": True})

    async def infer(request: Request) -> JSONResponse:
        key = model_key(request)
        models.get(key)
        body = await _read_body(request, MAX_INFER_BYTES)
        try:
            payload: Any = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValidationFailed(f"the body is not JSON: {exc}") from exc
        if not isinstance(payload, dict) or "inputs" not in payload:
            raise ValidationFailed('the body must be an object with "inputs"')
        outputs, used_gpu = await models.infer(key, decode_arrays(payload["inputs"]))
        return JSONResponse({"outputs": encode_arrays(outputs), "used_gpu": used_gpu})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        models.open()
        try:
            yield
        finally:
            models.close()

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/models/{key}", put_model, methods=["PUT"]),
            Route("/models/{key}", get_model, methods=["GET"]),
            Route("/models/{key}", delete_model, methods=["DELETE"]),
            Route("/models/{key}/infer", infer, methods=["POST"]),
        ],
        lifespan=lifespan,
        exception_handlers={AiserveError: _render_error},
    )


def _positive_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.isdigit() or int(value) == 0:
        raise SystemExit(f"error: {name} must be a positive integer, not {value!r}")
    return int(value)


def serve_worker(host: str, port: int) -> None:
    """Bind ``host:port`` (0 picks a free port), announce it on stdout, and serve until stopped."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connections made right after the announcement wait in the backlog, not refused
    bound = sock.getsockname()[1]
    app = create_worker_app(
        os.environ.get(TOKEN_ENV) or None,
        max_model_bytes=_positive_env(MAX_MODEL_BYTES_ENV) or DEFAULT_MAX_MODEL_BYTES,
        threads=_positive_env(THREADS_ENV),
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    print(json.dumps({"listening": f"http://{shown_host}:{bound}"}), flush=True)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the announcement pipe is done; later output is logs
    server.run(sockets=[sock])
