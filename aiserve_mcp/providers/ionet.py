"""io.net VM marketplace (VMaaS): hardware list, deploy, VM status and destroy.

Reading of the API (``https://api.io.solutions``, docs io.net/docs/reference/vmaas/*):

- ``GET /enterprise/v1/io-cloud/vmaas/hardware`` answers ``{"data": {"hardware": [row, ...]}}``. A row is one
  rentable configuration: ``id`` (``"12__2"``, ``"B200_sxm6x8__US"``) names hardware + card count + location,
  ``deploy_id`` (int or str) is what ``deploy`` takes, ``num_cards`` GPUs of ``vram_per_card`` GB each,
  ``price`` USD per hour for the whole configuration (``12__1`` costs 0.3, ``12__2`` 0.6), ``memory`` and
  ``storage`` in GB, ``location`` an ISO country code, ``sold_out`` a flag. CPU-only and unpriced rows are
  skipped.
- ``POST .../vmaas/deploy`` takes a closed schema (unknown fields are a 422) and is paid up front for
  ``duration_hours`` (1..8760); the first hour is never refunded. The reference leaves its 200 body open; it
  is read as CaaS's ``{"status": ..., "deployment_id": "<uuid>"}``, also accepted inside ``data``.
- ``GET .../vmaas/deployment/{id}/vms`` answers ``{"data": {"total", "workers": [...]}}``; each worker has a
  free-form ``status`` and ``network_services`` ``{name: {"public_ip", "public_port", ...}}``.
- ``DELETE .../vmaas/deployment/{id}`` destroys the deployment and refunds unused hours pro rata.
- Errors are FastAPI's: 422 ``{"detail": [{"loc", "msg", "type"}]}``, others ``{"detail": "message"}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import httpx

from aiserve_mcp.errors import ValidationFailed
from aiserve_mcp.providers.base import (
    Billing,
    InstanceState,
    Offer,
    OfferQuery,
    OfferUnavailable,
    ProviderFailed,
    ProviderNotConfigured,
    Rental,
    RentRequest,
)
from aiserve_mcp.providers.http import HttpMarketplace, send
from aiserve_mcp.services.gpu_catalog import normalise_name

API = "/enterprise/v1/io-cloud/vmaas"
MAX_DURATION_HOURS = 8760
WORKER_PORT = 8000  # the port the worker serves on inside the VM, published through network service "http"
WORKER_SERVICE = "http"

# Worker statuses are free-form strings in the reference; deployments use "deployment requested", "running",
# "completed", "failed", "termination requested", "destroyed". Anything not listed here is still starting.
_RUNNING = frozenset({"running", "active", "online", "ready"})
_FAILED = frozenset({"failed", "error", "unhealthy"})
_GONE = frozenset({"destroyed", "terminated", "completed", "termination requested", "stopped", "expired"})
_TOKENS = re.compile(r"[a-z0-9]+")


def _detail(response: httpx.Response) -> str:
    """The provider's own explanation: FastAPI's ``detail`` string or validation list, else the raw text."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:200] or f"HTTP {response.status_code}"
    if isinstance(detail, list):
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
        return "; ".join(parts) or "invalid request"
    return str(detail) if detail else response.text[:200] or f"HTTP {response.status_code}"


def _gpu_matches(wanted: str, name: str) -> bool:
    """True when ``wanted`` (already ``normalise_name``d) equals a run of whole words of ``name``:
    ``rtx_4090`` and ``4090`` find ``GeForce RTX 4090``; ``a100`` finds ``A100-SXM4-80GB``, ``a10`` not."""
    words = [w for w in (normalise_name(t) for t in _TOKENS.findall(name.lower())) if w]
    return any("".join(words[i:j]) == wanted for i in range(len(words)) for j in range(i + 1, len(words) + 1))


def _offer(row: dict[str, Any]) -> Offer | None:
    """One hardware row in this platform's units, or ``None`` for CPU-only, unpriced or malformed rows."""
    try:
        num_gpus, name = int(row["num_cards"]), str(row["name"]).strip()
        price, vram = Decimal(str(row["price"])), int(row.get("vram_per_card") or 0)
        offer_id, deploy_id = str(row["id"]), row["deploy_id"]
    except (KeyError, TypeError, ValueError, InvalidOperation):
        return None
    if num_gpus < 1 or not name or not price.is_finite() or price <= 0:
        return None
    if not isinstance(deploy_id, int | str):
        return None
    return Offer(
        provider="ionet",
        offer_id=offer_id,
        gpu_model=name,
        num_gpus=num_gpus,
        vram_gb=vram,
        price_per_hour=price,
        location=str(row.get("location") or ""),
        available=not row.get("sold_out", False),
        reliability=None,
        extras={
            "deploy_id": deploy_id,
            "supplier": row.get("supplier"),
            "vcpu": row.get("vcpu"),
            "memory_gb": row.get("memory"),
            "storage_gb": row.get("storage"),
            "interconnect": row.get("interconnect"),
            "nvlink": bool(row.get("nvlink", False)),
        },
    )


def _never(_: httpx.Response) -> bool:
    return False


def _retry_only_429(response: httpx.Response) -> bool:
    """For ``deploy``: a 502/503/504 may have reached io.net, and a second deploy would be paid twice."""
    return response.status_code != 429


class IoNetProvider(HttpMarketplace):
    """io.net VMaaS behind the ``Provider`` protocol. Prepaid: a rental pays ``duration_hours`` up front.

    ``search`` filters client-side: VRAM per card, whole-offer price, GPU model by whole words, location by
    case-insensitive substring. ``RentRequest.env`` cannot be delivered: the VMaaS deploy schema has no
    environment field. The worker is published through network service ``http`` on port 8000."""

    name = "ionet"
    billing: Billing = "prepaid"

    async def _send(
        self, method: str, path: str, *, final: Callable[[httpx.Response], bool] = _never, **kwargs: Any
    ) -> httpx.Response:
        if not self._key:
            raise ProviderNotConfigured("io.net is not configured: set AISERVE_IONET_API_KEY")
        headers = {"x-api-key": self._key, "accept": "application/json"}
        url = f"{self._base}{API}{path}"
        response = await send(self._client, self.name, method, url, headers=headers, final=final, **kwargs)
        if response.status_code in (401, 403):
            raise self._failed(response, "refused the API key")
        return response

    def _failed(self, response: httpx.Response, what: str) -> ProviderFailed:
        return ProviderFailed(
            f"io.net {what} (HTTP {response.status_code}): {_detail(response)}",
            {"provider": self.name, "upstream_status": response.status_code},
        )

    def _about(self, request: RentRequest) -> dict[str, Any]:
        return {"provider": self.name, "offer_id": request.offer_id}

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ProviderFailed("io.net answered with a body that is not JSON", {"provider": "ionet"})
        return body

    async def _hardware(self) -> list[Offer]:
        response = await self._send("GET", "/hardware")
        if response.status_code != 200:
            raise self._failed(response, "did not list hardware")
        data = self._json(response).get("data")
        rows = data.get("hardware") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise ProviderFailed("io.net hardware list has no data.hardware array", {"provider": self.name})
        return [offer for row in rows if isinstance(row, dict) and (offer := _offer(row)) is not None]

    async def search(self, query: OfferQuery) -> list[Offer]:
        """All hardware configurations, sold-out ones included (``available=False``), that match ``query``."""
        offers = await self._hardware()
        wanted = normalise_name(query.gpu_model) if query.gpu_model else None
        place = query.location.strip().lower() if query.location else None
        return [
            o
            for o in offers
            if (query.min_vram_gb is None or o.vram_gb >= query.min_vram_gb)
            and (query.max_price_per_hour is None or o.price_per_hour <= query.max_price_per_hour)
            and (not wanted or _gpu_matches(wanted, o.gpu_model))
            and (not place or place in o.location.lower())
        ]

    async def get_offer(self, offer_id: str) -> Offer | None:
        return next((o for o in await self._hardware() if o.offer_id == offer_id), None)

    async def rent(self, request: RentRequest) -> Rental:
        """Deploy one VM of the offer for ``duration_hours``, paid up front. 4xx refusals raise
        ``OfferUnavailable`` with io.net's reason; 5xx raise ``ProviderFailed`` and are never retried."""
        if not 1 <= request.duration_hours <= MAX_DURATION_HOURS:
            raise ValidationFailed(
                f"io.net rents for 1 to {MAX_DURATION_HOURS} hours",
                {"provider": self.name, "duration_hours": request.duration_hours},
            )
        offer = await self.get_offer(request.offer_id)
        if offer is None or not offer.available:
            state = "gone" if offer is None else "sold out"
            raise OfferUnavailable(f"io.net offer {request.offer_id} is {state}", self._about(request))
        body: dict[str, Any] = {
            "resource_private_name": request.label,
            "duration_hours": request.duration_hours,
            "gpus_per_vm": offer.num_gpus,
            "hardware_id": offer.extras["deploy_id"],
            "vm_image_type": "general",
            "network_services": {
                WORKER_SERVICE: {"port": WORKER_PORT, "protocol": "tcp", "whitelist": ["0.0.0.0/0"]}
            },
        }
        if offer.location:
            body["location_ids"] = [offer.location]
        response = await self._send("POST", "/deploy", json=body, final=_retry_only_429, idempotent=False)
        if 400 <= response.status_code < 500:
            reason = f"io.net refused the deployment: {_detail(response)}"
            raise OfferUnavailable(reason, {**self._about(request), "upstream_status": response.status_code})
        if response.status_code not in (200, 201):
            raise self._failed(response, "failed to deploy")
        answer = self._json(response)
        data = answer.get("data")
        nested = data if isinstance(data, dict) else {}
        deployment_id = answer.get("deployment_id") or nested.get("deployment_id") or nested.get("id")
        if not isinstance(deployment_id, str) or not deployment_id:
            raise ProviderFailed(
                "io.net accepted the deployment but returned no deployment_id",
                {"provider": self.name, "upstream": response.text[:200]},
            )
        return Rental(instance_id=deployment_id, status="provisioning", price_per_hour=offer.price_per_hour)

    async def status(self, instance_id: str) -> InstanceState:
        """The deployment's state from its VMs: running once a VM runs with a published public port."""
        response = await self._send("GET", f"/deployment/{quote(instance_id, safe='')}/vms")
        if response.status_code == 404:
            return InstanceState("destroyed", message="io.net no longer knows this deployment")
        if response.status_code != 200:
            raise self._failed(response, "did not report the deployment's VMs")
        data = self._json(response).get("data")
        workers = data.get("workers") if isinstance(data, dict) else None
        vms = [w for w in workers if isinstance(w, dict)] if isinstance(workers, list) else []
        if not vms:
            return InstanceState("provisioning", message="waiting for io.net to assign a VM")
        statuses = [str(w.get("status") or "").strip().lower() for w in vms]
        if any(s in _FAILED for s in statuses):
            return InstanceState("failed", message=f"io.net VM status: {', '.join(statuses)}")
        if all(s in _GONE for s in statuses):
            return InstanceState("destroyed", message=f"io.net VM status: {statuses[0]}")
        for worker, state in zip(vms, statuses, strict=True):
            if state not in _RUNNING:
                continue
            services = worker.get("network_services") or {}
            service = services.get(WORKER_SERVICE) if isinstance(services, dict) else None
            if isinstance(service, dict) and service.get("public_ip") and service.get("public_port"):
                endpoint = f"http://{service['public_ip']}:{service['public_port']}"
                return InstanceState("running", endpoint=endpoint)
            return InstanceState("provisioning", message="VM running; waiting for its public port")
        return InstanceState("provisioning", message=f"io.net VM status: {', '.join(statuses)}")

    async def destroy(self, instance_id: str) -> None:
        """Destroy the deployment (io.net refunds unused prepaid hours); an unknown one is already gone."""
        response = await self._send("DELETE", f"/deployment/{quote(instance_id, safe='')}")
        if response.status_code in (200, 202, 204, 404, 410):
            return
        raise self._failed(response, "did not destroy the deployment")
