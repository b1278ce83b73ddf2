"""Starting and stopping ``aiserve worker`` processes beside this server.

A worker runs users' models, which may be programs, so it gets nothing of the server's: a scrubbed
environment (no database URL, no JWT secret, no payment keys, no other ``AISERVE_`` settings), a fresh
working directory, a loopback port of its own and a fresh token. Only the standard library here: the
providers and services start workers without importing the worker's web stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sys
import tempfile
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from aiserve_mcp.errors import ServiceUnavailable
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

# Each running worker's working directory, removed when the worker is stopped.
_workdirs: weakref.WeakKeyDictionary[asyncio.subprocess.Process, str] = weakref.WeakKeyDictionary()


@dataclass
class WorkerProcess:
    process: asyncio.subprocess.Process
    endpoint: str  # http://127.0.0.1:PORT
    token: str


def _worker_env(token: str, visible_devices: str | None, extra_env: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of a worker: :data:`PASSED_ENV` from ours, then ``extra_env``, the token and
    ``CUDA_VISIBLE_DEVICES`` (unset when ``visible_devices`` is None)."""
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    env.update(extra_env)
    env[TOKEN_ENV] = token
    if visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices
    return env


async def start_worker(
    *, visible_devices: str | None, extra_env: Mapping[str, str] = {}, timeout_s: float = 60.0
) -> WorkerProcess:
    """Start a worker on a free loopback port and wait until it announces its address.

    ``visible_devices`` becomes ``CUDA_VISIBLE_DEVICES`` (``""`` hides every GPU). Raises
    :class:`ServiceUnavailable` when the process exits or stays silent for ``timeout_s`` (it is stopped)."""
    token = secrets.token_urlsafe(24)
    workdir = tempfile.mkdtemp(prefix="aiserve-worker-")
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "aiserve_mcp", "worker", "--host", "127.0.0.1", "--port", "0"),
            env=_worker_env(token, visible_devices, extra_env),
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
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


async def stop_worker(process: asyncio.subprocess.Process, timeout_s: float = 10.0) -> None:
    """Terminate the worker, kill it if it has not exited after ``timeout_s``, and remove its working
    directory."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
    workdir = _workdirs.pop(process, None)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
