"""This host as a GPU provider: its accelerators (or its CPU) are the offers, a worker process the instance.

Renting an offer starts ``aiserve worker`` on a free loopback port with a fresh token; destroying it stops
the process. Workers live as long as the server that started them: ``aclose`` stops them all, and a
contract whose worker is gone reads as destroyed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from decimal import Decimal

import anyio

from aiserve_mcp.errors import ServiceUnavailable
from aiserve_mcp.providers.base import (
    Billing,
    InstanceState,
    Offer,
    OfferQuery,
    OfferUnavailable,
    ProviderFailed,
    Rental,
    RentRequest,
)
from aiserve_mcp.services.gpu_catalog import normalise_name
from aiserve_mcp.worker.launch import start_worker, stop_worker

log = logging.getLogger(__name__)

LOCATION = "local"


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

    def __init__(self, price_per_hour: Decimal, cpu_slots: int) -> None:
        self._price = price_per_hour
        self._cpu_slots = cpu_slots
        self._workers: dict[str, _Worker] = {}
        self._lock = asyncio.Lock()
        self._accelerators: list[Accelerator] | None = None

    @property
    def configured(self) -> bool:
        return True

    async def _devices(self) -> list[Accelerator]:
        if self._accelerators is None:
            self._accelerators = await anyio.to_thread.run_sync(detect_accelerators, self._cpu_slots)
        return self._accelerators

    def _offer(self, device: Accelerator) -> Offer:
        busy = {w.offer_id for w in self._workers.values() if w.process.returncode is None}
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
        return [
            offer
            for offer in map(self._offer, await self._devices())
            if (query.min_vram_gb is None or offer.vram_gb >= query.min_vram_gb)
            and (query.max_price_per_hour is None or offer.price_per_hour <= query.max_price_per_hour)
            and (model is None or model in normalise_name(offer.gpu_model))
            and (query.location is None or query.location.lower() == LOCATION)
        ]

    async def get_offer(self, offer_id: str) -> Offer | None:
        return next((self._offer(d) for d in await self._devices() if d.offer_id == offer_id), None)

    async def rent(self, request: RentRequest) -> Rental:
        async with self._lock:
            offer = await self.get_offer(request.offer_id)
            if offer is None or not offer.available:
                raise OfferUnavailable(
                    f"local offer '{request.offer_id}' is {'unknown' if offer is None else 'already rented'}",
                    {"provider": self.name, "offer_id": request.offer_id},
                )
            device = next(d for d in await self._devices() if d.offer_id == request.offer_id)
            try:
                started = await start_worker(visible_devices=device.visible_devices, extra_env=request.env)
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
            return InstanceState("destroyed", message="no such worker on this host (stopped or not started)")
        code = worker.process.returncode
        if code is None:
            return InstanceState("running", endpoint=worker.endpoint)
        return InstanceState("failed", message=f"the worker exited with code {code}")

    async def destroy(self, instance_id: str) -> None:
        worker = self._workers.pop(instance_id, None)
        if worker is not None:
            await stop_worker(worker.process)

    async def aclose(self) -> None:
        """Stop every worker this provider started."""
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            await stop_worker(worker.process)
