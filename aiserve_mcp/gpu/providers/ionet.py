"""io.net Container-as-a-Service (CaaS): hardware list, deploy a container that starts the worker, status,
destroy.

io.net's VM API has no image, environment or command field, so a rented VM could never start the worker;
its container API can. Reading of the API (``https://api.io.solutions/enterprise/v1/io-cloud/caas``,
io.net/docs/reference/caas/*, the official SDK ``ionet-cloud``; details in ``tests/fakes/ionet_api/``):

- ``GET /hardware`` answers ``{"data": {"hardware": [row, ...]}}``; a row is one rentable configuration:
  ``id`` (``"12__2"``), the integer ``hardware_id`` a deploy takes, ``num_cards`` GPUs of ``vram_per_card``
  GB, ``price`` USD per hour for the whole configuration, ``location`` an ISO country code, ``sold_out`` and
  ``available_replicas``. CPU-only and unpriced rows are skipped.
- ``GET /available-replicas?hardware_id=&hardware_qty=`` lists ``{"id", "iso2", "available_replicas"}`` per
  location: the integer location id a deploy takes, and whether a container fits there now.
- ``POST /deploy`` takes a closed schema (an unknown field is a 422): the configuration, ``duration_hours``
  (1..8760, paid up front; the first hour is never refunded), one location, ``container_config`` (one
  replica, traffic port 8000, environment, secret environment, entrypoint and args) and ``registry_config``
  (the image). It answers ``{"status", "deployment_id": "<uuid>"}``.
- ``GET /deployment/{id}`` answers ``{"data": {"status", ...}}`` (deployment requested, deploying, running,
  completed, failed, termination requested, terminated, destroyed); ``GET /deployment/{id}/containers``
  ``{"data": {"workers": [{"status", "public_url", ...}]}}``, where ``public_url`` stays null until io.net's
  own health check of the container passes.
- ``DELETE /deployment/{id}`` destroys it (unused hours are refunded pro rata).
- Errors: business refusals ``{"status": "failed", "error": "..."}``, FastAPI's 401 ``{"detail": "..."}``
  and 422 ``{"detail": [{"loc", "msg", "type"}]}``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import httpx

from aiserve_mcp.gpu.catalog import normalise_name
from aiserve_mcp.gpu.providers.base import (
    Billing,
    InstanceState,
    Offer,
    OfferQuery,
    OfferUnavailable,
    ProviderFailed,
    Rental,
    RentRequest,
)
from aiserve_mcp.gpu.providers.http import HttpMarketplace, json_object, send
from aiserve_mcp.worker import TOKEN_ENV
from aiserve_mcp.worker.bundle import WORKER_PORT

NAME = "ionet"
API = "/enterprise/v1/io-cloud/caas"
IMAGE = "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime"  # python3 and CUDA torch; the script adds the rest
ENTRYPOINT = ["/bin/sh", "-c"]  # the start-up script is the one argument

_FAILED = frozenset({"failed", "error"})
_GONE = frozenset({"completed", "termination requested", "terminated", "destroyed", "expired"})
_TOKENS = re.compile(r"[a-z0-9]+")


def _detail(response: httpx.Response) -> str:
    """io.net's own explanation: a business error's ``error``, FastAPI's ``detail`` string or validation
    list, else the raw text."""
    body = json_object(response)
    if body.get("status") == "failed" and body.get("error"):
        return str(body["error"])
    detail = body.get("detail")
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
        offer_id, hardware_id = str(row["id"]), row["hardware_id"]
    except (KeyError, TypeError, ValueError, InvalidOperation):
        return None
    if num_gpus < 1 or not name or not price.is_finite() or price <= 0:
        return None
    if not isinstance(hardware_id, int) or isinstance(hardware_id, bool):
        return None
    replicas = row.get("available_replicas")
    return Offer(
        provider=NAME,
        offer_id=offer_id,
        gpu_model=name,
        num_gpus=num_gpus,
        vram_gb=vram,
        price_per_hour=price,
        location=str(row.get("location") or ""),
        available=not row.get("sold_out", False) and replicas != 0,
        reliability=None,
        extras={
            "hardware_id": hardware_id,
            "brand_name": row.get("brand_name"),
            "supplier": row.get("supplier"),
            "vcpu": row.get("vcpu"),
            "memory_gb": row.get("memory"),
            "storage_gb": row.get("storage"),
            "interconnect": row.get("interconnect"),
            "nvlink": bool(row.get("nvlink", False)),
            "available_replicas": replicas if isinstance(replicas, int) else None,
        },
    )


def _never(_: httpx.Response) -> bool:
    return False


def _retry_only_429(response: httpx.Response) -> bool:
    """For ``deploy``: a 502/503/504 may have reached io.net, and a second deploy would be paid twice."""
    return response.status_code != 429


class IoNetProvider(HttpMarketplace):
    """io.net CaaS behind the ``Provider`` protocol. Prepaid: a rental pays ``duration_hours`` up front.

    A rental is one container of the offer's image running the ``launch`` start-up script (fetch the worker
    bundle from this platform, check its hash, install, start ``aiserve worker`` on port 8000, the traffic
    port), with ``RentRequest.env`` as its environment and the worker's token as a secret variable. It is
    running once io.net publishes the container's ``public_url``, which becomes the endpoint.

    ``search`` filters client-side: VRAM per card, whole-offer price, GPU model by whole words, location by
    case-insensitive substring."""

    name = NAME
    not_configured = "io.net is not configured: set AISERVE_IONET_API_KEY"
    billing: Billing = "prepaid"

    async def _send(
        self, method: str, path: str, *, final: Callable[[httpx.Response], bool] = _never, **kwargs: Any
    ) -> httpx.Response:
        self._require()
        headers = {"x-api-key": self._key or "", "accept": "application/json"}
        url = f"{self._base}{API}{path}"
        response = await send(self._client, NAME, method, url, headers=headers, final=final, **kwargs)
        if response.status_code in (401, 403):
            raise self._failed(response, "refused the API key")
        return response

    def _failed(self, response: httpx.Response, what: str) -> ProviderFailed:
        return ProviderFailed(
            f"io.net {what} (HTTP {response.status_code}): {_detail(response)}",
            {"provider": NAME, "upstream_status": response.status_code},
        )

    @staticmethod
    def _about(request: RentRequest) -> dict[str, Any]:
        return {"provider": NAME, "offer_id": request.offer.offer_id}

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        body = json_object(response)
        if not body:
            raise ProviderFailed("io.net answered with a body that is not a JSON object", {"provider": NAME})
        return body

    async def _hardware(self) -> list[Offer]:
        response = await self._send("GET", "/hardware")
        if response.status_code != 200:
            raise self._failed(response, "did not list hardware")
        data = self._json(response).get("data")
        rows = data.get("hardware") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise ProviderFailed("io.net hardware list has no data.hardware array", {"provider": NAME})
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

    async def _location_id(self, offer: Offer, request: RentRequest) -> int:
        """The id of the offer's location, where a container of it fits now; ``OfferUnavailable`` else."""
        params = {"hardware_id": offer.extras["hardware_id"], "hardware_qty": offer.num_gpus}
        response = await self._send("GET", "/available-replicas", params=params)
        if response.status_code != 200:
            raise self._failed(response, "did not report where the hardware is free")
        data = self._json(response).get("data")
        places = [p for p in data if isinstance(p, dict)] if isinstance(data, list) else []
        for place in places:
            iso2, free, place_id = place.get("iso2"), place.get("available_replicas"), place.get("id")
            if (
                str(iso2 or "").upper() == offer.location.upper()
                and isinstance(free, int)
                and free >= 1
                and isinstance(place_id, int)
            ):
                return place_id
        raise OfferUnavailable(
            f"io.net offer {offer.offer_id} is sold out in {offer.location or 'its location'}",
            self._about(request),
        )

    async def rent(self, request: RentRequest) -> Rental:
        """Deploy one container of the offer for ``duration_hours``, paid up front. Refusals (4xx, or
        ``{"status": "failed"}``) raise ``OfferUnavailable`` with io.net's reason; 5xx raise
        ``ProviderFailed`` and are never retried."""
        self._require()
        script = await self._start_script()
        offer = request.offer
        location_id = await self._location_id(offer, request)
        token = secrets.token_urlsafe(24)  # the worker answers only callers that present it
        body: dict[str, Any] = {
            "resource_private_name": request.label,
            "hardware_id": offer.extras["hardware_id"],
            "duration_hours": request.duration_hours,
            "gpus_per_container": offer.num_gpus,
            "location_ids": [location_id],
            "container_config": {
                "replica_count": 1,
                "traffic_port": WORKER_PORT,
                "env_variables": dict(request.env),
                "secret_env_variables": {TOKEN_ENV: token},
                "entrypoint": ENTRYPOINT,
                "args": [script],
            },
            "registry_config": {"image_url": IMAGE},
        }
        response = await self._send("POST", "/deploy", json=body, final=_retry_only_429, idempotent=False)
        answer = json_object(response)
        details = {**self._about(request), "upstream_status": response.status_code}
        if 400 <= response.status_code < 500 or (response.is_success and answer.get("status") == "failed"):
            raise OfferUnavailable(f"io.net refused the deployment: {_detail(response)}", details)
        if not response.is_success:
            raise self._failed(response, "failed to deploy")
        deployment_id = answer.get("deployment_id")
        if not isinstance(deployment_id, str) or not deployment_id:
            raise ProviderFailed(
                "io.net accepted the deployment but returned no deployment_id",
                {"provider": NAME, "upstream": response.text[:200]},
            )
        return Rental(
            instance_id=deployment_id,
            status="provisioning",
            price_per_hour=offer.price_per_hour,
            access_token=token,
        )

    async def status(self, instance_id: str) -> InstanceState:
        """The deployment's state: running once it runs and io.net has published a container's URL."""
        path = f"/deployment/{quote(instance_id, safe='')}"
        response = await self._send("GET", path)
        if response.status_code == 404:
            return InstanceState("destroyed", message="io.net no longer knows this deployment")
        if response.status_code != 200:
            raise self._failed(response, "did not report the deployment")
        data = self._json(response).get("data")
        status = str(data.get("status") or "").strip().lower() if isinstance(data, dict) else ""
        if status in _FAILED:
            return InstanceState("failed", message=f"io.net deployment status: {status}")
        if status in _GONE:
            return InstanceState("destroyed", message=f"io.net deployment status: {status}")
        if status != "running":
            return InstanceState("provisioning", message=f"io.net deployment status: {status or 'unknown'}")
        response = await self._send("GET", f"{path}/containers")
        if response.status_code != 200:
            raise self._failed(response, "did not list the deployment's containers")
        listed = self._json(response).get("data")
        workers = listed.get("workers") if isinstance(listed, dict) else None
        for worker in workers if isinstance(workers, list) else []:
            url = worker.get("public_url") if isinstance(worker, dict) else None
            running = isinstance(worker, dict) and str(worker.get("status") or "").lower() == "running"
            if running and isinstance(url, str) and url.startswith(("https://", "http://")):
                return InstanceState("running", endpoint=url.rstrip("/"))
        return InstanceState(
            "provisioning", message="running; waiting for io.net to publish the container URL"
        )

    async def destroy(self, instance_id: str) -> None:
        """Destroy the deployment (io.net refunds unused prepaid hours); an unknown one is already gone."""
        response = await self._send("DELETE", f"/deployment/{quote(instance_id, safe='')}")
        if response.status_code in (200, 202, 204, 404, 410):
            return
        raise self._failed(response, "did not destroy the deployment")
