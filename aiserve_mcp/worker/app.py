"""The worker's HTTP server. It trusts only callers that present the token it was started with.

Routes: ``GET /health``; ``PUT /models/{key}?format=onnx|torchscript&require_gpu=true|false`` with the model
file as the body; ``GET`` and ``DELETE /models/{key}``; ``POST /models/{key}/infer`` with
``{"inputs": {name: wire tensor}}`` (see :mod:`aiserve_mcp.runtime.wire`). Errors are the platform's error
bodies, ``{"error", "code"}``.

It announces where it listens by printing one JSON line to stdout, ``{"listening": "http://host:port"}``,
so that a parent which asked for port 0 learns the port without a race.

Started by a server (``worker/launch.py`` sets :data:`PARENT_PID_ENV`), it never outlives that server: on
Linux it asks the kernel for SIGTERM when its parent dies, and everywhere it checks every second that its
parent is still the server (an orphan is adopted by another process) and stops when it is not. SIGINT and
SIGTERM stop it quietly: the server's shutdown, a terminal's Ctrl-C or the parent-death signal print no
traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from types import FrameType
from typing import Any, Final

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aiserve_mcp.core.errors import (
    AiserveError,
    AuthInvalid,
    PayloadTooLarge,
    ValidationFailed,
    error_body,
    error_headers,
    kind_of,
)
from aiserve_mcp.core.processes import term_when_parent_dies
from aiserve_mcp.runtime.wire import decode_arrays, encode_arrays
from aiserve_mcp.worker import TOKEN_ENV
from aiserve_mcp.worker.launch import HEARTBEAT_ENV, PARENT_CHECK_ENV, PARENT_PID_ENV, PDEATHSIG_ENV
from aiserve_mcp.worker.models import WorkerModels, check_format, check_key

MAX_MODEL_BYTES_ENV: Final = "AISERVE_WORKER_MAX_MODEL_BYTES"
THREADS_ENV: Final = "AISERVE_WORKER_THREADS"
DEFAULT_MAX_MODEL_BYTES: Final = 10 * 1024**3
MAX_INFER_BYTES: Final = 256 * 1024**2
PARENT_CHECK_S: Final = 1.0  # default seconds between checks that the server is still the parent
EXIT_GRACE_S: Final = 5.0  # after the server is gone, how long a graceful stop may take before exiting

log = logging.getLogger(__name__)


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


def _positive_float_env(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        number = float(value) if value is not None else default
    except ValueError:
        number = -1.0
    if not 0 < number < 86400:
        raise SystemExit(f"error: {name} must be a number of seconds under a day, not {value!r}")
    return number


class _QuietStop:
    """The SIGINT and SIGTERM handler outside uvicorn's own (before it serves, and when uvicorn re-raises
    the signal after its graceful shutdown): exit without a traceback, gracefully once the server exists."""

    def __init__(self) -> None:
        self.server: uvicorn.Server | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.server is None:
            raise SystemExit(0)
        self.server.should_exit = True


class ParentWatch:
    """Stops this worker once the server that started it is gone.

    ``expected`` is the server's pid. On Linux, :meth:`arm` asks the kernel for SIGTERM when the parent
    dies (only when the server says so: the signal is bound to the thread that forked us) and then
    compares :func:`os.getppid` with ``expected``, which closes the race with a parent that died before
    the request. :meth:`start` runs a daemon thread that compares them again every ``interval_s`` seconds
    (an orphan is adopted by init or a subreaper, on every POSIX system), keeps ``heartbeat``'s mtime
    fresh, and calls ``on_gone`` when the parent changed; if the process still runs ``grace_s`` later,
    it exits at once."""

    def __init__(
        self, expected: int, interval_s: float, heartbeat: str | None, grace_s: float = EXIT_GRACE_S
    ) -> None:
        self.expected = expected
        self.interval_s = interval_s
        self.heartbeat = heartbeat
        self.grace_s = grace_s

    @classmethod
    def from_env(cls) -> ParentWatch | None:
        parent = os.environ.get(PARENT_PID_ENV)
        if parent is None:
            return None  # started by hand or on a rented machine: nothing to outlive
        if not parent.isdigit():
            raise SystemExit(f"error: {PARENT_PID_ENV} must be a process id, not {parent!r}")
        interval = _positive_float_env(PARENT_CHECK_ENV, PARENT_CHECK_S)
        return cls(int(parent), interval, os.environ.get(HEARTBEAT_ENV) or None)

    @property
    def parent_alive(self) -> bool:
        return os.getppid() == self.expected

    def arm(self) -> None:
        """Ask for the parent-death signal where asked to, then exit at once if the parent is gone."""
        if os.environ.get(PDEATHSIG_ENV) == "1" and sys.platform == "linux" and not term_when_parent_dies():
            log.warning("prctl(PR_SET_PDEATHSIG) failed: the parent check alone stops this worker")
        if not self.parent_alive:
            log.warning("the server that started this worker (pid %d) is gone; exiting", self.expected)
            raise SystemExit(0)

    def start(self, on_gone: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(on_gone,), name="parent-watch", daemon=True)
        thread.start()
        return thread

    def _beat(self) -> None:
        if self.heartbeat is not None:
            with suppress(OSError):
                os.utime(self.heartbeat)

    def _run(self, on_gone: Callable[[], None]) -> None:
        while self.parent_alive:
            self._beat()
            time.sleep(self.interval_s)
        log.warning("the server that started this worker (pid %d) is gone; stopping", self.expected)
        on_gone()
        time.sleep(self.grace_s)
        os._exit(0)  # the graceful stop did not finish in time (a daemon thread dies with a clean exit)


def serve_worker(host: str, port: int) -> None:
    """Bind ``host:port`` (0 picks a free port), announce it on stdout, and serve until stopped."""
    stop = _QuietStop()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    watch = ParentWatch.from_env()
    if watch is not None:
        watch.arm()
    try:
        _serve(host, port, watch, stop)
    except KeyboardInterrupt:
        raise SystemExit(0) from None


def _serve(host: str, port: int, watch: ParentWatch | None, stop: _QuietStop) -> None:
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
    stop.server = server
    if watch is not None:
        watch.start(lambda: setattr(server, "should_exit", True))
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    print(json.dumps({"listening": f"http://{shown_host}:{bound}"}), flush=True)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the announcement pipe is done; later output is logs
    server.run(sockets=[sock])
