"""This host as a GPU provider: its accelerators (or its CPU) are the offers, a worker process the instance.

Renting an offer starts ``aiserve worker`` on a free loopback port with a fresh token; destroying it stops
the process. Workers live as long as the server that started them: ``aclose`` stops them all, a worker
whose server died stops by itself (``worker/launch.py``), and a contract whose worker is gone reads as
destroyed.

Several server processes on this host may share the database and the data directory (``serve --workers``).
The slots are theirs together: every rented worker carries its slot (qualified by the data directory) and
its contract in its environment, so that each process sees through ``/proc`` (:func:`host_workers`) which
slots the others' workers take; a rent checks and starts under a lock on a file in the data directory, so
that two processes never start workers on one slot; and a worker that another live process started reads
as running here, and a destroy here stops it (identified by its command line, contract and slot, never by
its pid alone). Each worker still lives no longer than the process that started it.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Final

import anyio

from aiserve_mcp.core.errors import ServiceUnavailable
from aiserve_mcp.gpu.catalog import normalise_name
from aiserve_mcp.gpu.providers.base import (
    Billing,
    InstanceState,
    InstanceStatus,
    Offer,
    OfferQuery,
    OfferUnavailable,
    ProviderFailed,
    Rental,
    RentRequest,
)
from aiserve_mcp.gpu.providers.host_workers import (
    find_worker,
    host_workers,
    inspect_worker,
    last_heartbeat,
    remove_workdirs,
    stop_host_worker,
)
from aiserve_mcp.worker.launch import start_worker, stop_worker

log = logging.getLogger(__name__)

LOCATION = "local"
RENT_GRACE_S: Final = 300.0  # a contract with no worker yet may be in the middle of a rent this long


@dataclass(frozen=True)
class Accelerator:
    offer_id: str
    name: str
    vram_gb: int
    visible_devices: str  # CUDA_VISIBLE_DEVICES for a worker on it ("" hides every GPU)


@dataclass
class _Worker:
    offer_id: str
    process: asyncio.subprocess.Process
    endpoint: str


@dataclass(frozen=True)
class Ending:
    """How a contract whose worker no live server holds ends: its status, why, and when it stopped."""

    status: InstanceStatus
    message: str
    at: datetime


def _pid_in(instance_id: str | None) -> int | None:
    """The worker's pid in a local instance id (``cpu0-1234``, ``gpu1-1234``)."""
    tail = instance_id.rsplit("-", 1)[-1] if instance_id else ""
    return int(tail) if tail.isdigit() else None


def _offer_in(instance_id: str) -> str:
    """The offer (slot) in a local instance id."""
    return instance_id.rsplit("-", 1)[0]


def _nvidia_smi() -> list[Accelerator]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(  # noqa: S603 (a fixed argument list for the driver's own tool)
            [exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.strip().splitlines():
        index, name, mib = (part.strip() for part in line.split(","))
        found.append(Accelerator(f"gpu{index}", name, round(int(mib) / 1024), index))
    return found


def _torch_cuda() -> list[Accelerator]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [
        Accelerator(
            f"gpu{i}",
            torch.cuda.get_device_name(i),
            round(torch.cuda.get_device_properties(i).total_memory / 2**30),
            str(i),
        )
        for i in range(torch.cuda.device_count())
    ]


def detect_accelerators(cpu_slots: int) -> list[Accelerator]:
    """GPUs from the NVIDIA driver (or torch without the driver tool); else ``cpu_slots`` CPU slots."""
    gpus = _nvidia_smi() or _torch_cuda()
    if gpus:
        return gpus
    cpu = platform.processor() or platform.machine()
    return [Accelerator(f"cpu{i}", f"CPU ({cpu}, {os.cpu_count()} cores)", 0, "") for i in range(cpu_slots)]


class LocalProvider:
    name = "local"
    billing: Billing = "metered"

    def __init__(self, price_per_hour: Decimal, cpu_slots: int, data_dir: Path) -> None:
        """``data_dir`` is shared by every server process whose workers share these slots."""
        self._price = price_per_hour
        self._cpu_slots = cpu_slots
        self._workers: dict[str, _Worker] = {}
        self._rent_lock = data_dir / "local-workers.lock"
        # Slots are named for the data directory, so that servers with another one never share them.
        self._slot_group = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
        self._accelerators: list[Accelerator] | None = None

    @property
    def configured(self) -> bool:
        return True

    async def _devices(self) -> list[Accelerator]:
        if self._accelerators is None:
            self._accelerators = await anyio.to_thread.run_sync(detect_accelerators, self._cpu_slots)
        return self._accelerators

    def _slot(self, offer_id: str) -> str:
        """What the environment of a worker on ``offer_id`` names as its slot."""
        return f"{self._slot_group}/{offer_id}"

    async def _busy(self) -> set[str]:
        """The offers whose slot a worker takes: one of this provider's or of another server process."""
        prefix = self._slot("")
        taken = {
            w.slot.removeprefix(prefix)
            for w in await anyio.to_thread.run_sync(lambda: list(host_workers()))
            if w.slot is not None and w.slot.startswith(prefix)
        }
        return taken | {w.offer_id for w in self._workers.values() if w.process.returncode is None}

    def _offer(self, device: Accelerator, busy: set[str]) -> Offer:
        return Offer(
            provider=self.name,
            offer_id=device.offer_id,
            gpu_model=device.name,
            num_gpus=1 if device.visible_devices else 0,
            vram_gb=device.vram_gb,
            price_per_hour=self._price,
            location=LOCATION,
            available=device.offer_id not in busy,
            reliability=1.0,
            extras={"device": f"cuda:{device.visible_devices}" if device.visible_devices else "cpu"},
        )

    async def search(self, query: OfferQuery) -> list[Offer]:
        model = normalise_name(query.gpu_model) if query.gpu_model else None
        busy = await self._busy()
        return [
            offer
            for offer in (self._offer(d, busy) for d in await self._devices())
            if (query.min_vram_gb is None or offer.vram_gb >= query.min_vram_gb)
            and (query.max_price_per_hour is None or offer.price_per_hour <= query.max_price_per_hour)
            and (model is None or model in normalise_name(offer.gpu_model))
            and (query.location is None or query.location.lower() == LOCATION)
        ]

    async def get_offer(self, offer_id: str) -> Offer | None:
        device = next((d for d in await self._devices() if d.offer_id == offer_id), None)
        return None if device is None else self._offer(device, await self._busy())

    @asynccontextmanager
    async def _renting(self) -> AsyncIterator[None]:
        """Held while a rent checks its slot and starts the worker: by one rent at a time among every
        server process on this host with the same data directory."""
        self._rent_lock.parent.mkdir(parents=True, exist_ok=True)
        with self._rent_lock.open("a") as lock:  # closing it releases the lock
            await anyio.to_thread.run_sync(fcntl.flock, lock.fileno(), fcntl.LOCK_EX)
            yield

    async def rent(self, request: RentRequest) -> Rental:
        offer_id = request.offer.offer_id
        async with self._renting():  # the slot may have been rented since the market saw it free
            offer = await self.get_offer(offer_id)
            if offer is None or not offer.available:
                raise OfferUnavailable(
                    f"local offer '{offer_id}' is {'unknown' if offer is None else 'already rented'}",
                    {"provider": self.name, "offer_id": offer_id},
                )
            device = next(d for d in await self._devices() if d.offer_id == offer_id)
            try:
                started = await start_worker(
                    visible_devices=device.visible_devices,
                    extra_env=request.env,
                    contract_id=request.label,
                    slot=self._slot(offer_id),
                )
            except ServiceUnavailable as exc:
                log.warning("local worker on %s: %s", device.offer_id, exc.message)
                raise ProviderFailed(
                    "the local worker did not start; see the server log", {"provider": self.name}
                ) from None
            instance_id = f"{device.offer_id}-{started.process.pid}"
            self._workers[instance_id] = _Worker(device.offer_id, started.process, started.endpoint)
        log.info("local worker %s listening on %s", instance_id, started.endpoint)
        return Rental(
            instance_id, "running", self._price, endpoint=started.endpoint, access_token=started.token
        )

    async def status(self, instance_id: str) -> InstanceState:
        worker = self._workers.get(instance_id)
        if worker is None:
            pid = _pid_in(instance_id)
            other = await anyio.to_thread.run_sync(inspect_worker, pid) if pid is not None else None
            if other is not None and not other.orphaned and other.contract_id is not None:
                return InstanceState("running")  # another server process on this host holds it
            return InstanceState("destroyed", message="no such worker on this host (stopped or not started)")
        code = worker.process.returncode
        if code is None:
            return InstanceState("running", endpoint=worker.endpoint)
        return InstanceState("failed", message=f"the worker exited with code {code}")

    async def leftover(
        self, contract_id: str, instance_id: str | None, period_start: datetime, created_at: datetime
    ) -> Ending | None:
        """How a contract stored as active here ends when no live server on this host holds its worker
        (its server was restarted or killed); None while this server or another live one holds it, or
        while it may still be in the middle of a rent (no instance yet, younger than
        :data:`RENT_GRACE_S`). A leftover worker of the contract that still runs is stopped (it is
        identified by its command line and the contract id in its environment, never by its pid alone).
        The contract ran until then, or until its worker's last heartbeat when the worker is gone."""
        if instance_id is not None and instance_id in self._workers:
            return None
        worker = await anyio.to_thread.run_sync(find_worker, contract_id, _pid_in(instance_id))
        if worker is not None and not worker.orphaned:
            return None
        now = datetime.now(UTC)
        if worker is None and instance_id is None and now - created_at < timedelta(seconds=RENT_GRACE_S):
            return None
        stop = partial(stop_host_worker, orphans_only=True)
        if worker is not None and await anyio.to_thread.run_sync(stop, worker):
            log.warning("stopped worker %d of %s: its server is gone", worker.pid, contract_id)
        beat = await anyio.to_thread.run_sync(last_heartbeat, contract_id)
        if instance_id is None:
            return Ending("failed", "the server stopped before this worker started; nothing is charged", now)
        stopped_at = now if worker is not None or beat is None else min(now, max(beat, period_start))
        return Ending(
            "destroyed",
            "the server that started this worker stopped or was restarted, and the worker with it",
            stopped_at,
        )

    async def destroy(self, instance_id: str) -> None:
        """Stop the instance's worker: one this provider started, or one that another server process
        started on these slots."""
        worker = self._workers.pop(instance_id, None)
        if worker is not None:
            await stop_worker(worker.process)
            return
        pid = _pid_in(instance_id)
        other = await anyio.to_thread.run_sync(inspect_worker, pid) if pid is not None else None
        if other is None or other.contract_id is None or other.slot != self._slot(_offer_in(instance_id)):
            return  # gone already, or not a worker of these slots
        if await anyio.to_thread.run_sync(partial(stop_host_worker, other, orphans_only=False)):
            log.info(
                "stopped worker %d of %s (server %s started it)",
                other.pid,
                other.contract_id,
                other.started_by,
            )
            await anyio.to_thread.run_sync(remove_workdirs, other.contract_id)

    @property
    def holds_workers(self) -> bool:
        """Whether this provider started workers that it has not stopped."""
        return bool(self._workers)

    async def aclose(self) -> None:
        """Stop every worker this provider started. Their working directories stay as the record of when
        they stopped, for :meth:`leftover` (the market ends their contracts next, or the next server to
        start on this database does)."""
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            await stop_worker(worker.process, keep_workdir=True)
