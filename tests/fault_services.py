"""Throwaway Redis and PostgreSQL servers that fault tests may SIGKILL and restart.

Each server listens on 127.0.0.1 only, on a free port that stays the same across restarts, and keeps its
files in a temporary directory of its own, so the machine's shared servers (ports 5432 and 6379) are never
touched. PostgreSQL gets a cluster of its own (``initdb`` once per server object, trust authentication,
``fsync`` off, its Unix socket in a private directory); when this process is root it runs as the
``postgres`` OS user, since PostgreSQL refuses to run as root. Redis runs without persistence, so a
restart always comes back empty.

Use the fixtures by importing them into a test module. The fixture functions carry ``_fixture`` in their
Python names and register the fixture names ``private_redis`` and ``private_postgres``, so the test
parameters do not shadow the import (ruff would report F811)::

    from tests.fault_services import (
        PrivatePostgres,
        PrivateRedis,
        private_postgres_fixture,  # noqa: F401
        private_redis_fixture,  # noqa: F401
    )


    async def test_survives_a_redis_crash(private_redis: PrivateRedis) -> None:
        settings = Settings(redis_url=private_redis.url, ...)
        ...
        private_redis.kill()
        ...
        await asyncio.to_thread(private_redis.start)

Outside fixtures, use a server as a context manager (``with PrivatePostgres() as pg:``): it starts on entry,
and on exit its processes are killed and its directory is removed, whether the block failed or not.

The methods block until they are done (a start waits, bounded, until the server answers: milliseconds for
Redis, a fraction of a second for PostgreSQL); call them through ``asyncio.to_thread`` to keep an event
loop serving meanwhile. Servers die with this process even when it is SIGKILLed: each is started with
``PR_SET_PDEATHSIG`` set to SIGKILL. That signal fires when the *thread* that started the process ends,
so every server is started from one long-lived thread of this module, whichever thread calls ``start()``.
PostgreSQL's own children notice the postmaster's death and exit by themselves.

A fixture fails (it does not skip) when ``redis-server``, the PostgreSQL server binaries or, for root, the
``postgres`` user are missing: CI has them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import pytest

_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_IPC_RMID = 0
_POLL_S = 0.01
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fault-services-spawner")


class FaultServiceError(RuntimeError):
    """A private server's software is missing, or the server would not start or die."""


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (dead, waiting to be reaped)."""
    return _state(pid) not in (None, "Z", "X")


def _state(pid: int) -> str | None:
    """The state letter of process ``pid`` (R, S, T for stopped, Z for zombie...), None if there is none."""
    fields = _stat(pid)
    return None if fields is None else fields[0]


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first, then the parent's pid)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _descendants(pid: int) -> list[int]:
    """The pids of the children of ``pid``, their children, and so on."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        below = children.get(pending.pop(), [])
        found += below
        pending += below
    return found


def _free_port() -> int:
    """A TCP port that nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail, naming ``what`` was awaited, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise FaultServiceError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(_POLL_S)


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get SIGKILL when the thread that forked it ends."""

    def preexec() -> None:
        if _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _spawn(
    args: list[str], *, log: IO[bytes], cwd: Path, account: tuple[int, int] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a session of its own, as ``account`` (uid, gid) if given, writing to ``log``."""

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            user=None if account is None else account[0],
            group=None if account is None else account[1],
            extra_groups=None if account is None else [],
            preexec_fn=_die_with_parent(os.getpid()),
        )

    return _SPAWNER.submit(popen).result()


class _PrivateServer(ABC):
    """What both servers share: a fixed port, a temporary directory and the main process's lifecycle."""

    _stop_signal = signal.SIGTERM

    def __init__(self, start_timeout: float) -> None:
        self.port = _free_port()
        self.start_timeout = start_timeout
        self.directory = Path(tempfile.mkdtemp(prefix=f"aiserve-{type(self).__name__.lower()}-"))
        self._log = self.directory / "server.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(127.0.0.1:{self.port}, {self.directory})"

    @property
    def running(self) -> bool:
        """Whether the server's main process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The main process's pid while it runs."""
        return self._process.pid if self._process is not None and self.running else None

    def start(self) -> None:
        """Start the server and wait until it answers, for at most ``start_timeout`` seconds."""
        if self.running:
            raise FaultServiceError(f"{self!r} is already running")
        with self._log.open("ab") as log:
            process = self._process = self._launch(log)
        deadline = time.monotonic() + self.start_timeout
        while not self._answers():
            if process.poll() is not None:
                raise FaultServiceError(f"{self!r} exited with status {process.returncode}{self._log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise FaultServiceError(
                    f"{self!r} did not answer within {self.start_timeout:g} s{self._log_tail()}"
                )
            time.sleep(_POLL_S)

    def kill(self) -> None:
        """SIGKILL the server and every process it started, and wait until they are gone."""
        if self._process is not None:
            self._kill(self._process)
            self._process = None

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down cleanly; kill it if it takes longer than ``timeout`` seconds."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(self._stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout)
        self.kill()

    def restart(self) -> None:
        """Kill the server if it runs, then start it again on the same port."""
        self.kill()
        self.start()

    def close(self) -> None:
        """Kill the server and remove its directory."""
        try:
            self.kill()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _log_tail(self) -> str:
        try:
            lines = self._log.read_text(errors="replace").splitlines()[-20:]
        except OSError:
            return ""
        return "; its log ends:\n" + "\n".join(lines)

    @abstractmethod
    def _launch(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start the server's main process, writing its output to ``log``."""

    @abstractmethod
    def _answers(self) -> bool:
        """Whether the server answers a client now."""

    @abstractmethod
    def _kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL ``process`` and whatever it started, reap it, and clear what they leave behind."""


class PrivateRedis(_PrivateServer):
    """A ``redis-server`` of its own on 127.0.0.1, without persistence."""

    def __init__(self, start_timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FaultServiceError("redis-server is not on PATH: install the redis-server package")
        self._binary = binary
        super().__init__(start_timeout)

    @property
    def url(self) -> str:
        """The URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _launch(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        args = [self._binary, "--bind", "127.0.0.1", "--port", str(self.port)]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        return _spawn(args, log=log, cwd=self.directory)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _kill(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def _postgres_bindir() -> Path:
    """The directory of the newest PostgreSQL server binaries installed."""

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))

    installed = [path for path in Path("/usr/lib/postgresql").glob("*/bin") if (path / "initdb").is_file()]
    if installed:
        return max(installed, key=version)
    initdb = shutil.which("initdb")
    if initdb is None:
        raise FaultServiceError(
            "PostgreSQL server binaries not found (no /usr/lib/postgresql/<version>/bin/initdb, no initdb "
            "on PATH): install the postgresql package"
        )
    return Path(initdb).resolve().parent


def _postgres_account() -> tuple[int, int] | None:
    """The (uid, gid) of the ``postgres`` user when this process is root; None (run as ourselves) else."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise FaultServiceError(
            "running as root, and PostgreSQL refuses to run as root: it must run as the 'postgres' OS "
            "user, which does not exist (install the postgresql package)"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _release_shared_memory(creator: int) -> None:
    """Remove the System V shared memory segments that process ``creator`` made and nobody holds now."""
    try:
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return
    for row in rows:
        fields = row.split()
        shmid, cpid, attached = int(fields[1]), int(fields[4]), int(fields[6])
        if cpid == creator and attached == 0:
            _LIBC.shmctl(shmid, _IPC_RMID, None)


class PrivatePostgres(_PrivateServer):
    """A PostgreSQL cluster of its own on 127.0.0.1, superuser ``postgres`` with trust authentication.

    The cluster is created by the first ``start()``. ``fsync`` and full page writes are off, which a
    SIGKILL of the server does not care about (the OS keeps the written data), so committed data survives
    ``kill()`` and the next start replays the WAL as after a real crash.
    """

    _stop_signal = signal.SIGINT

    def __init__(self, start_timeout: float = 30.0) -> None:
        self.bindir = _postgres_bindir()
        self._account = _postgres_account()
        super().__init__(start_timeout)
        self.data_dir = self.directory / "data"
        self._socket_dir = self.directory / "socket"
        self._socket_dir.mkdir()
        if self._account is not None:
            for path in (self.directory, self._socket_dir):
                os.chown(path, *self._account)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the ``postgres`` database."""
        return self.url_for("postgres")

    @property
    def dsn(self) -> str:
        """The libpq/asyncpg DSN of the ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` on the running server; returns its SQLAlchemy URL."""
        done = subprocess.run(
            [str(self.bindir / "createdb"), *self._client_args(), name],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise FaultServiceError(f"createdb {name} failed on {self!r}: {done.stderr.strip()}")
        return self.url_for(name)

    def pids(self) -> list[int]:
        """The postmaster's pid and those of all its descendants, while it runs."""
        pid = self.pid
        return [] if pid is None else [pid, *_descendants(pid)]

    def _client_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]

    def start(self) -> None:
        """Create the cluster if this is the first start, then start the server and wait until it answers,
        for at most ``start_timeout`` seconds."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        super().start()

    def _initdb(self) -> None:
        args = [str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust"]
        args += ["-E", "UTF8", "--locale=C", "--no-sync"]
        with self._log.open("ab") as log:
            initdb = _spawn(args, log=log, cwd=self.directory, account=self._account)
        try:
            status = initdb.wait(60)
        finally:
            initdb.kill()
            initdb.wait()
        if status != 0:
            raise FaultServiceError(f"initdb failed for {self!r} with status {status}{self._log_tail()}")

    def _launch(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        args = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        args += ["-k", str(self._socket_dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        args += ["-c", "full_page_writes=off", "-c", "dynamic_shared_memory_type=mmap"]
        return _spawn(args, log=log, cwd=self.directory, account=self._account)

    def _answers(self) -> bool:
        ready = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-t", "2", "-d", "postgres", *self._client_args()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
        return ready.returncode == 0

    def _kill(self, process: subprocess.Popen[bytes]) -> None:
        """Freeze the postmaster so it forks no more, SIGKILL its descendants, then it, and clean up after
        them: the postmaster's children run in sessions of their own, out of reach of a group kill."""
        postmaster = process.pid
        doomed: list[int] = []
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGSTOP)
            _wait_for(
                lambda: process.poll() is not None or _state(postmaster) in ("T", "t"),
                10,
                f"the postmaster of {self!r} to stop",
            )
            doomed = _descendants(postmaster)
            for pid in doomed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        process.wait(10)
        _wait_for(lambda: not any(map(process_alive, doomed)), 10, f"the processes of {self!r} to die")
        _release_shared_memory(postmaster)
        for lock in (self.data_dir / "postmaster.pid", self._socket_dir / f".s.PGSQL.{self.port}.lock"):
            lock.unlink(missing_ok=True)


@pytest.fixture(name="private_redis")
def private_redis_fixture() -> Iterator[PrivateRedis]:
    """A running private Redis, killed and removed when the test ends."""
    with PrivateRedis() as server:
        yield server


@pytest.fixture(name="private_postgres")
def private_postgres_fixture() -> Iterator[PrivatePostgres]:
    """A running private PostgreSQL cluster, killed and removed when the test ends."""
    with PrivatePostgres() as server:
        yield server
