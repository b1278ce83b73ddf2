"""Starting and stopping ``aiserve worker`` processes beside this server.

A worker runs users' models, which may be programs, so it gets nothing of the server's: a scrubbed
environment (no database URL, no JWT secret, no payment keys, no other ``AISERVE_`` settings), a fresh
working directory, a loopback port of its own and a fresh token. Only the standard library here: the
providers and services start workers without importing the worker's web stack.

A worker never outlives the server that started it. It runs in a session of its own (a terminal's Ctrl-C
reaches the server alone, which then stops its workers in order), and it is told who its parent is
(:data:`PARENT_PID_ENV`): it checks every second that this parent is still its parent and stops when it is
not, and on Linux it also asks the kernel for SIGTERM when its parent dies (:data:`PDEATHSIG_ENV`, see
:func:`aiserve_mcp.worker.app.serve_worker`). A worker rented as a contract carries the contract id
(:data:`CONTRACT_ENV`) and the slot it occupies (:data:`SLOT_ENV`), so that another server process, or a
later server, can tell that worker from an unrelated process that reused its pid and sees the slot taken;
it touches its working directory as a heartbeat, so that a later server knows when it stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiserve_mcp.core.errors import ServiceUnavailable
from aiserve_mcp.worker import TOKEN_ENV

PASSED_ENV: Final = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "PYTHONPATH",
    "LD_LIBRARY_PATH",
    "VIRTUAL_ENV",
    "AISERVE_LOG_LEVEL",
)
PARENT_PID_ENV: Final = "AISERVE_WORKER_PARENT_PID"  # the server's pid: the worker stops when it is gone
PDEATHSIG_ENV: Final = "AISERVE_WORKER_PDEATHSIG"  # "1": ask the kernel for SIGTERM when the parent dies
PARENT_CHECK_ENV: Final = "AISERVE_WORKER_PARENT_CHECK_S"  # seconds between parent checks (default 1)
HEARTBEAT_ENV: Final = "AISERVE_WORKER_HEARTBEAT"  # a directory whose mtime the worker keeps fresh
CONTRACT_ENV: Final = "AISERVE_WORKER_CONTRACT"  # the contract a rented worker serves
SLOT_ENV: Final = (
    "AISERVE_WORKER_SLOT"  # the slot of this host a rented worker occupies (its provider's name)
)
WORKDIR_PREFIX: Final = "aiserve-worker-"
_CONTRACT_ID: Final = re.compile(r"[A-Za-z0-9_]{1,64}")

# Each running worker's working directory, removed when the worker is stopped.
_workdirs: weakref.WeakKeyDictionary[asyncio.subprocess.Process, str] = weakref.WeakKeyDictionary()


@dataclass
class WorkerProcess:
    process: asyncio.subprocess.Process
    endpoint: str  # http://127.0.0.1:PORT
    token: str


def contract_workdirs(contract_id: str) -> list[Path]:
    """The working directories of the workers started for ``contract_id`` that still exist (in the
    temporary directory of this process)."""
    if not _CONTRACT_ID.fullmatch(contract_id):
        return []
    return sorted(Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}{contract_id}-*"))


def _parent_death_signal() -> bool:
    """Whether the kernel's parent-death signal is safe to ask for: it fires when the *thread* that forked
    the worker exits, and asyncio forks from the thread that runs the event loop. The main thread lives
    as long as the process; any other thread may end before it (the worker then relies on its parent
    check alone)."""
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


def _worker_env(
    token: str,
    visible_devices: str | None,
    extra_env: Mapping[str, str],
    *,
    workdir: str,
    contract_id: str | None,
    slot: str | None,
) -> dict[str, str]:
    """The whole environment of a worker: :data:`PASSED_ENV` from ours, then ``extra_env``, the token,
    ``CUDA_VISIBLE_DEVICES`` (unset when ``visible_devices`` is None) and the lifetime variables."""
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    env.update(extra_env)
    env[TOKEN_ENV] = token
    if visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices
    env[PARENT_PID_ENV] = str(os.getpid())
    env[HEARTBEAT_ENV] = workdir
    if _parent_death_signal():
        env[PDEATHSIG_ENV] = "1"
    else:
        env.pop(PDEATHSIG_ENV, None)
    if contract_id is not None:
        env[CONTRACT_ENV] = contract_id
    if slot is not None:
        env[SLOT_ENV] = slot
    return env


async def start_worker(
    *,
    visible_devices: str | None,
    extra_env: Mapping[str, str] = {},
    timeout_s: float = 60.0,
    contract_id: str | None = None,
    slot: str | None = None,
) -> WorkerProcess:
    """Start a worker on a free loopback port and wait until it announces its address.

    ``visible_devices`` becomes ``CUDA_VISIBLE_DEVICES`` (``""`` hides every GPU); ``contract_id`` and
    ``slot`` mark the worker of a rented contract and the slot it occupies. Raises
    :class:`ServiceUnavailable` when the process exits or stays silent for ``timeout_s`` (it is
    stopped)."""
    if contract_id is not None and not _CONTRACT_ID.fullmatch(contract_id):
        raise ValueError(f"not a contract id: {contract_id!r}")
    token = secrets.token_urlsafe(24)
    prefix = f"{WORKDIR_PREFIX}{contract_id}-" if contract_id else WORKDIR_PREFIX
    workdir = tempfile.mkdtemp(prefix=prefix)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "aiserve_mcp", "worker", "--host", "127.0.0.1", "--port", "0"),
            env=_worker_env(
                token, visible_devices, extra_env, workdir=workdir, contract_id=contract_id, slot=slot
            ),
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # signals meant for the server's process group are not the worker's
        )
    except OSError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServiceUnavailable(f"the worker process did not start: {exc}") from exc
    _workdirs[process] = workdir
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout_s)
    except TimeoutError:
        await stop_worker(process)
        raise ServiceUnavailable(
            f"the worker process did not start: no address announced within {timeout_s:g} s"
        ) from None
    except BaseException:  # cancelled while waiting: the process must not outlive the request
        await asyncio.shield(stop_worker(process))
        raise
    try:
        endpoint = json.loads(line)["listening"]
    except (ValueError, TypeError, KeyError):
        await stop_worker(process)
        raise ServiceUnavailable(
            f"the worker process did not start: it exited with code {process.returncode}"
            if not line
            else "the worker process did not start: it announced no address"
        ) from None
    return WorkerProcess(process, str(endpoint), token)


async def stop_worker(
    process: asyncio.subprocess.Process, timeout_s: float = 10.0, *, keep_workdir: bool = False
) -> None:
    """Terminate the worker, kill it if it has not exited after ``timeout_s``, and remove its working
    directory; with ``keep_workdir`` (the server is stopping, its contracts are ended at its next start)
    the directory stays, its mtime the moment the worker stopped."""
    if process.returncode is None:
        with suppress(ProcessLookupError):  # it exited and nobody has collected its status yet
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
    workdir = _workdirs.pop(process, None)
    if workdir is None:
        return
    if keep_workdir:
        with suppress(OSError):
            os.utime(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
