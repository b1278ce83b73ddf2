"""``aiserve serve --workers N``: N server processes on one port, started, watched and stopped together.

The supervisor migrates the database once, binds the port once and hands the listening socket to N
processes (``spawn``, so each builds its own services and event loop); the kernel gives each new
connection to one of them. They share everything through PostgreSQL and Redis, which is why N > 1 needs
both. Each process also gets a private Unix socket (in a fresh 0700 directory) for the MCP sessions that
live in it (:mod:`aiserve_mcp.core.processes`).

Stopping the supervisor (SIGINT, SIGTERM) stops every process, which stops the workers it started; a
process that dies on its own is started again in its place, unless it died within
:data:`START_GRACE_S` of starting (a setting or the database is wrong), which stops them all. A process
whose supervisor is killed gets SIGTERM from the kernel (Linux), so none outlives it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Final

import uvicorn
from sqlalchemy.engine import make_url

from aiserve_mcp.core.processes import ProcessGroup, term_when_parent_dies
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.storage.migrate import upgrade

START_GRACE_S: Final = 10.0  # a process that dies this soon after starting stops the group
STOP_GRACE_S: Final = 30.0  # how long a stopping process may take before it is killed

log = logging.getLogger(__name__)


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The MCP endpoint runs two session managers (streamed and plain JSON answers): each would announce
    # its start and stop, the same line twice.
    logging.getLogger("mcp.server.streamable_http_manager").setLevel(logging.WARNING)


def several_refused(settings: Settings) -> str | None:
    """Why ``settings`` cannot serve from several processes, or None when they can."""
    if settings.billing_sandbox and settings.stripe_api_key is None:
        return (
            "the payment sandbox (AISERVE_BILLING_SANDBOX) keeps its checkout sessions and charges in the "
            "process that made them; serve it with --workers 1, or set AISERVE_STRIPE_API_KEY"
        )
    missing = []
    if make_url(settings.effective_database_url).get_backend_name() != "postgresql":
        missing.append("AISERVE_DATABASE_URL to a PostgreSQL database (postgresql+asyncpg://...)")
    if not settings.redis_url:
        missing.append("AISERVE_REDIS_URL (redis://...)")
    if not missing:
        return None
    return (
        "several server processes share their state through PostgreSQL and Redis; set "
        + " and ".join(missing)
        + ", or serve with one process (--workers 1)"
    )


def _unix_listener(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(128)
    return listener


def run_process(
    settings: Settings, group: ProcessGroup, sockets: list[socket.socket], supervisor: int
) -> None:
    """One process of the group (the target of ``spawn``): the app on the shared and its private socket."""
    term_when_parent_dies()
    if os.getppid() != supervisor:
        return  # the supervisor died before the kernel could be asked
    configure_logging(settings)
    from aiserve_mcp.app import create_app

    app = create_app(settings, group)
    config = uvicorn.Config(app, log_level=settings.log_level.lower(), proxy_headers=False)
    uvicorn.Server(config).run(sockets=sockets)


class Supervisor:
    def __init__(self, settings: Settings, count: int) -> None:
        self._settings = settings
        self._count = count
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[int, tuple[BaseProcess, float]] = {}
        self._stopping = False

    def _start(self, group: ProcessGroup, sockets: list[socket.socket]) -> None:
        process = self._context.Process(
            target=run_process,
            args=(self._settings, group, sockets, os.getpid()),
            name=f"aiserve-{group.index}",
        )
        process.start()
        self._processes[group.index] = (process, time.monotonic())
        log.info("server process %d started (pid %s)", group.index, process.pid)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> int:
        """Serve until stopped; the exit status (1 when a process could not start)."""
        settings = self._settings
        upgrade(settings.effective_database_url)
        shared = uvicorn.Config(app="", host=settings.host, port=settings.port).bind_socket()
        run_dir = Path(tempfile.mkdtemp(prefix="aiserve-run-"))
        token = secrets.token_urlsafe(32)
        groups = [ProcessGroup(i, self._count, run_dir, token) for i in range(self._count)]
        listeners = [_unix_listener(g.socket_path(g.index)) for g in groups]
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._stop)
        status = 0
        try:
            for group, private in zip(groups, listeners, strict=True):
                self._start(group, [shared, private])
            while not self._stopping:
                sentinels = [p.sentinel for p, _ in self._processes.values()]
                multiprocessing.connection.wait(sentinels, timeout=0.5)
                status = self._replace_dead(groups, shared, listeners)
        finally:
            self._stop_all()
            for listener in [shared, *listeners]:
                listener.close()
            shutil.rmtree(run_dir, ignore_errors=True)
        return status

    def _replace_dead(
        self, groups: list[ProcessGroup], shared: socket.socket, listeners: list[socket.socket]
    ) -> int:
        """Start again each process that died on its own; 1 (and stop) when one died at start."""
        for index, (process, started) in list(self._processes.items()):
            if process.is_alive() or self._stopping:
                continue
            code = process.exitcode
            if time.monotonic() - started < START_GRACE_S:
                log.error("server process %d exited with code %s at start; stopping", index, code)
                self._stopping = True
                return 1
            log.warning("server process %d exited with code %s; starting it again", index, code)
            self._start(groups[index], [shared, listeners[index]])
        return 0

    def _stop_all(self) -> None:
        for process, _ in self._processes.values():
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process, _ in self._processes.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("server process %s did not stop in %.0f s; killing it", process.pid, STOP_GRACE_S)
                process.kill()
                process.join()
