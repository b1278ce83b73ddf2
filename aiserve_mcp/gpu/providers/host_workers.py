"""``aiserve worker`` processes on this host as ``/proc`` shows them, whichever server process started them:
finding them by contract, stopping one safely (pinned by a pidfd, re-checked before any signal), and the
working directories that record when each last ran."""

from __future__ import annotations

import os
import select
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from aiserve_mcp.worker.launch import CONTRACT_ENV, PARENT_PID_ENV, SLOT_ENV, contract_workdirs

PROC: Final = Path("/proc")
STOP_GRACE_S: Final = 5.0  # a leftover worker gets this long after SIGTERM before SIGKILL


@dataclass(frozen=True)
class HostWorker:
    """An ``aiserve worker`` process on this host, as ``/proc`` shows it."""

    pid: int
    contract_id: str | None  # the contract it was started for (its environment says), if any
    slot: str | None  # the slot it occupies (its environment says), if any
    started_by: int | None  # the pid of the server that started it (its environment says)
    parent: int  # its parent now

    @property
    def orphaned(self) -> bool:
        """Its server is gone: it was adopted by another process (it stops by itself within seconds)."""
        return self.started_by is None or self.parent != self.started_by


def _is_worker(cmdline: list[bytes]) -> bool:
    """``python -m aiserve_mcp worker ...``, as :func:`aiserve_mcp.worker.launch.start_worker` runs it."""
    return cmdline[1:4] == [b"-m", b"aiserve_mcp", b"worker"]


def inspect_worker(pid: int) -> HostWorker | None:
    """The ``aiserve worker`` running as ``pid`` on this host; None when there is no such process, it is
    something else (a pid reused by another program), it has exited, or ``/proc`` cannot tell (another
    user's process, a system without ``/proc``)."""
    base = PROC / str(pid)
    try:
        cmdline = (base / "cmdline").read_bytes().split(b"\0")
        if not _is_worker(cmdline):
            return None
        stat = (base / "stat").read_text()
        fields = stat[stat.rfind(")") + 2 :].split()
        environ = dict(
            item.split(b"=", 1) for item in (base / "environ").read_bytes().split(b"\0") if b"=" in item
        )
    except (OSError, ValueError):
        return None
    if fields[0] in ("Z", "X"):  # exited, waiting to be collected
        return None
    contract = environ.get(CONTRACT_ENV.encode())
    slot = environ.get(SLOT_ENV.encode())
    started_by = environ.get(PARENT_PID_ENV.encode(), b"")
    return HostWorker(
        pid,
        contract.decode(errors="replace") if contract else None,
        slot.decode(errors="replace") if slot else None,
        int(started_by) if started_by.isdigit() else None,
        int(fields[1]),
    )


def host_workers() -> Iterator[HostWorker]:
    """Every ``aiserve worker`` running on this host, as ``/proc`` shows them (none without it)."""
    try:
        pids = [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]
    except OSError:
        return
    yield from (w for w in map(inspect_worker, pids) if w is not None)


def find_worker(contract_id: str, pid: int | None) -> HostWorker | None:
    """The worker of ``contract_id`` on this host: the process ``pid`` when it is known (the instance id
    names it), else any ``aiserve worker`` whose environment names the contract."""
    if pid is not None:
        found = inspect_worker(pid)
        return found if found is not None and found.contract_id == contract_id else None
    return next((w for w in host_workers() if w.contract_id == contract_id), None)


def _alive(pidfd: int | None, pid: int) -> bool:
    if pidfd is not None:
        return not select.select([pidfd], [], [], 0)[0]
    return inspect_worker(pid) is not None


def _wait_gone(pidfd: int | None, pid: int, timeout_s: float) -> bool:
    if pidfd is not None:
        return bool(select.select([pidfd], [], [], timeout_s)[0])
    deadline = time.monotonic() + timeout_s
    while inspect_worker(pid) is not None:
        if time.monotonic() > deadline:
            return False
        select.select([], [], [], 0.05)
    return True


def stop_host_worker(worker: HostWorker, *, orphans_only: bool, grace_s: float = STOP_GRACE_S) -> bool:
    """Stop ``worker`` (SIGTERM, then SIGKILL after ``grace_s``) if it is still the worker of the same
    contract and slot (and, with ``orphans_only``, still orphaned); blocking. The process is pinned with a
    pidfd where the system has them, so that a pid reused in the meantime is never signalled. Returns
    whether it was stopped here."""
    try:
        pidfd: int | None = os.pidfd_open(worker.pid) if hasattr(os, "pidfd_open") else None
    except ProcessLookupError:
        return False
    except OSError:
        pidfd = None
    try:
        again = inspect_worker(worker.pid)  # read after pinning: the process the pidfd refers to
        same = again is not None and (again.contract_id, again.slot) == (worker.contract_id, worker.slot)
        if again is None or not same or (orphans_only and not again.orphaned):
            return False

        def send(sig: signal.Signals) -> None:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(worker.pid, sig)

        try:
            send(signal.SIGTERM)
            if not _wait_gone(pidfd, worker.pid, grace_s) and _alive(pidfd, worker.pid):
                send(signal.SIGKILL)
                _wait_gone(pidfd, worker.pid, grace_s)
        except ProcessLookupError:
            pass
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def last_heartbeat(contract_id: str) -> datetime | None:
    """When the worker of ``contract_id`` last touched its working directory, which is then removed."""
    latest = None
    for workdir in contract_workdirs(contract_id):
        try:
            beat = datetime.fromtimestamp(workdir.stat().st_mtime, UTC)
        except OSError:
            continue
        latest = beat if latest is None else max(latest, beat)
    remove_workdirs(contract_id)
    return latest


def remove_workdirs(contract_id: str) -> None:
    for workdir in contract_workdirs(contract_id):
        shutil.rmtree(workdir, ignore_errors=True)
