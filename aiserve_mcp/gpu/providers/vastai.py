"""vast.ai marketplace client over its REST API (``/api/v0``), metered per second while an instance exists.

vast.ai reports VRAM in MB per GPU and prices (``dph_total``) in USD/hour for the whole offer, including the
storage for the ``allocated_storage`` the search asks about; this module converts at the edge.
"""

from __future__ import annotations

import logging
import math
import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from aiserve_mcp.gpu.catalog import normalise_name
from aiserve_mcp.gpu.providers.base import (
    Billing,
    InstanceState,
    Offer,
    OfferQuery,
    OfferUnavailable,
    ProviderFailed,
    ProviderRateLimited,
    Rental,
    RentRequest,
)
from aiserve_mcp.gpu.providers.http import HttpMarketplace, json_object, send
from aiserve_mcp.worker import TOKEN_ENV
from aiserve_mcp.worker.bundle import WORKER_PORT, BundleUnavailable

log = logging.getLogger(__name__)

NAME = "vastai"
NOT_CONFIGURED = "vast.ai is not configured: set AISERVE_VASTAI_API_KEY"
DISK_GB = 20  # disk rented with each instance; also the allocated_storage searches price in
SEARCH_LIMIT = 3000
VRAM_SLACK = 0.93  # providers report a "24 GB" card as anything from ~22.5 to 24.5 GiB
KNOWN_VRAM_GB = (4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 141, 180, 192)
DEFAULT_IMAGE = "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime"
MAX_COMMAND_CHARS = 4096  # vast.ai: "max_length: 4096 - Combined length of args, args_str and onstart"
EXTRA_FIELDS = ("machine_id", "host_id", "cuda_max_good", "inet_down", "dlperf", "verified", "disk_space")
AVAILABLE = {"rentable": {"eq": True}, "rented": {"eq": False}}
SEARCH_DEFAULTS = {"verified": {"eq": True}, "external": {"eq": False}, **AVAILABLE}
# The SDK's create-instance fields this client does not vary; cancel_unavail: fail rather than leave a
# stopped (storage-billed) instance when the machine cannot schedule it.
CREATE_DEFAULTS: dict[str, Any] = {
    "client_id": "me", "price": None, "extra": None, "image_login": None, "python_utf8": False,
    "lang_utf8": False, "use_jupyter_lab": False, "jupyter_dir": None, "force": False,
    "cancel_unavail": True, "template_hash_id": None, "user": None, "runtype": "ssh_direct",
}  # fmt: skip
FAILED_STATES = frozenset({"exited", "offline", "stopped"})
# status_msg texts that mean the container can never start: Docker's refusals to create it or pull its image.
START_FAILURES = ("OCI runtime create failed", "Error response from daemon")


def vram_gb(gpu_ram_mb: float) -> int:
    """GB per GPU from vast's MB figure, snapped to the nearest marketed size within 7% (46068 MB -> 48)."""
    gib = gpu_ram_mb / 1024
    nearest = min(KNOWN_VRAM_GB, key=lambda size: abs(size - gib))
    return nearest if abs(nearest - gib) <= nearest * (1 - VRAM_SLACK) else round(gib)


def seconds_to_utc_midnight(now: datetime | None = None) -> int:
    now = now or datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((midnight - now).total_seconds()))


def _is_quota(response: httpx.Response) -> bool:
    return response.status_code == 429 and json_object(response).get("error") == "search_quota_exceeded"


def _matches_location(geolocation: str | None, wanted: str) -> bool:
    """``"US"`` matches ``"Texas, US"`` by its country code; longer strings match as substrings."""
    wanted = wanted.strip().lower()
    geo = (geolocation or "").lower()
    country = geo.rsplit(",", 1)[-1].strip()
    if len(wanted) == 2 and wanted.isalpha():
        return country == wanted
    return wanted == country or wanted in geo


def _offer(row: dict[str, Any]) -> Offer:
    if not isinstance(row.get("gpu_name"), str) or not row["gpu_name"]:
        raise ValueError("offer without a GPU name")
    price, gpus = Decimal(str(row["dph_total"])), int(row["num_gpus"])
    if not price.is_finite() or price < 0 or gpus < 1:
        raise ValueError("offer with an impossible price or GPU count")
    reliability = row.get("reliability", row.get("reliability2"))
    extras = {k: row[k] for k in EXTRA_FIELDS if isinstance(row.get(k), str | int | float | bool)}
    return Offer(
        provider=NAME,
        offer_id=str(int(row["id"])),
        gpu_model=row["gpu_name"],
        num_gpus=gpus,
        vram_gb=vram_gb(float(row["gpu_ram"])),
        price_per_hour=price,
        location=str(row.get("geolocation") or "unknown"),
        available=bool(row.get("rentable", True)) and not row.get("rented", False),
        reliability=float(reliability) if reliability is not None else None,
        extras=extras,
    )


class VastAiProvider(HttpMarketplace):
    """The vast.ai marketplace. ``client`` belongs to the caller, who closes it. A rented instance runs the
    ``launch`` start-up script as its ``onstart`` (fetch the worker bundle from this platform, check its
    hash, install, start ``aiserve worker``); without ``launch`` nothing can be rented."""

    name = NAME
    not_configured = NOT_CONFIGURED
    billing: Billing = "metered"

    async def _onstart(self) -> str:
        script = await self._start_script()
        if len(script) > MAX_COMMAND_CHARS:
            raise BundleUnavailable(
                f"the worker start-up command is {len(script)} characters, over vast.ai's "
                f"{MAX_COMMAND_CHARS}: shorten AISERVE_PUBLIC_URL",
                {"setting": "AISERVE_PUBLIC_URL", "provider": NAME},
            )
        return script

    async def check_worker_start(self) -> None:
        self._require()
        await self._onstart()

    async def _request(
        self, method: str, path: str, *, final_5xx: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """``send`` with auth. The daily search quota is never retried, nor a 5xx when ``final_5xx``
        (a create that may have happened must not be sent twice)."""
        self._require()
        quota = False

        def final(response: httpx.Response) -> bool:
            nonlocal quota
            quota = _is_quota(response)
            return quota or (final_5xx and response.status_code >= 500)

        headers = {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}
        try:
            return await send(
                self._client, NAME, method, self._base + path, final=final, headers=headers, **kwargs
            )
        except ProviderRateLimited as exc:
            if not quota:
                raise
            raise ProviderRateLimited(
                "vast.ai daily search quota is exhausted; it resets at UTC midnight",
                retry_after_s=seconds_to_utc_midnight(),
                details={"provider": NAME, "upstream": exc.details.get("upstream")},
            ) from None

    async def _search(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        query = {
            **filters,
            "order": [["score", "desc"]],
            "type": "on-demand",
            "allocated_storage": DISK_GB,
            "limit": SEARCH_LIMIT,
        }
        response = await self._request("POST", "/api/v0/bundles/", json=query)
        offers = json_object(response).get("offers")
        if not response.is_success or not isinstance(offers, list):
            raise ProviderFailed(
                f"vast.ai offer search failed (HTTP {response.status_code})",
                {"provider": NAME, "upstream_status": response.status_code},
            )
        return [row for row in offers if isinstance(row, dict)]

    def _parse(self, rows: list[dict[str, Any]]) -> list[Offer]:
        offers = []
        for row in rows:
            try:
                offers.append(_offer(row))
            except (KeyError, TypeError, ValueError, InvalidOperation):
                log.debug("vast.ai: skipping malformed offer %r", row.get("id"))
        return offers

    async def search(self, query: OfferQuery) -> list[Offer]:
        filters: dict[str, Any] = dict(SEARCH_DEFAULTS)
        if query.min_vram_gb is not None:
            filters["gpu_ram"] = {"gte": round(query.min_vram_gb * 1024 * VRAM_SLACK, 1)}
        if query.max_price_per_hour is not None:
            filters["dph_total"] = {"lte": float(query.max_price_per_hour)}
        offers = self._parse(await self._search(filters))
        # vast.ai's gpu_name filter is exact ("H100 SXM"), so models are matched here, loosely.
        model = normalise_name(query.gpu_model) if query.gpu_model else None
        return [
            o
            for o in offers
            if (model is None or model in normalise_name(o.gpu_model))
            and (not query.location or _matches_location(o.location, query.location))
        ]

    async def get_offer(self, offer_id: str) -> Offer | None:
        self._require()
        if not offer_id.isdigit():
            return None
        offers = self._parse(await self._search({"id": {"eq": int(offer_id)}, **AVAILABLE}))
        return next((o for o in offers if o.offer_id == offer_id), None)

    async def rent(self, request: RentRequest) -> Rental:
        self._require()
        onstart = await self._onstart()
        offer = request.offer
        token = secrets.token_urlsafe(24)  # the worker answers only callers that present it
        payload = {
            **CREATE_DEFAULTS,
            "image": DEFAULT_IMAGE,
            "env": {**request.env, f"-p {WORKER_PORT}:{WORKER_PORT}": "1", TOKEN_ENV: token},
            "disk": DISK_GB,
            "label": request.label,
            "onstart": onstart,
        }
        path = f"/api/v0/asks/{offer.offer_id}/"
        try:
            response = await self._request("PUT", path, json=payload, final_5xx=True, idempotent=False)
        except ProviderFailed:
            await self._sweep(request.label)
            raise
        body = json_object(response)
        contract = body.get("new_contract")
        if response.is_success and body.get("success") is not False and contract:
            return Rental(
                instance_id=str(contract),
                status="provisioning",
                price_per_hour=offer.price_per_hour,
                access_token=token,
            )
        if contract:
            await self._discard(str(contract))
        reason = str(body.get("msg") or body.get("error") or response.text[:200] or "refused")
        status = response.status_code
        details = {"provider": NAME, "offer_id": offer.offer_id, "upstream_status": status}
        if (
            status >= 500
            or status in (401, 402, 403)
            or (response.is_success and body.get("success") is not False)
        ):
            if not contract and status not in (401, 402, 403):
                await self._sweep(request.label)
            raise ProviderFailed(f"vast.ai could not create the instance: {reason}", details)
        raise OfferUnavailable(f"vast.ai refused offer {offer.offer_id}: {reason}", details)

    async def _discard(self, instance_id: str) -> None:
        """Best-effort destroy of an instance a failed create left behind."""
        try:
            await self.destroy(instance_id)
        except (ProviderFailed, ProviderRateLimited) as exc:
            log.warning("vast.ai: could not destroy leftover instance %s: %s", instance_id, exc.message)

    async def _sweep(self, label: str) -> None:
        """After a create that may or may not have happened, destroy whatever carries its label."""
        try:
            response = await self._request("GET", "/api/v0/instances/", params={"owner": "me"})
        except (ProviderFailed, ProviderRateLimited) as exc:
            log.warning("vast.ai: cannot list instances to clean up %s: %s", label, exc.message)
            return
        listed = json_object(response).get("instances")
        for instance in listed if isinstance(listed, list) else []:
            if isinstance(instance, dict) and instance.get("label") == label and instance.get("id"):
                await self._discard(str(instance["id"]))

    async def status(self, instance_id: str) -> InstanceState:
        self._require()
        if not instance_id.isdigit():  # not an id vast ever issued
            return InstanceState("destroyed")
        response = await self._request("GET", f"/api/v0/instances/{instance_id}/", params={"owner": "me"})
        if response.status_code == 404:
            return InstanceState("destroyed")
        if not response.is_success:
            raise ProviderFailed(
                f"vast.ai instance lookup failed (HTTP {response.status_code})",
                {"provider": NAME, "upstream_status": response.status_code},
            )
        instance = json_object(response).get("instances")
        if not isinstance(instance, dict):
            return InstanceState("destroyed")
        actual = instance.get("actual_status")
        message = str(instance.get("status_msg") or "").strip() or None
        stopped = instance.get("intended_status") == "stopped" and instance.get("cur_state") == "stopped"
        if actual in FAILED_STATES or stopped or any(text in (message or "") for text in START_FAILURES):
            return InstanceState("failed", message=message or f"instance is {actual}")
        if actual == "running":
            return InstanceState("running", endpoint=_endpoint(instance), message=message)
        return InstanceState("provisioning", message=message)

    async def destroy(self, instance_id: str) -> None:
        self._require()
        if not instance_id.isdigit():
            return
        response = await self._request("DELETE", f"/api/v0/instances/{instance_id}/", json={})
        body = json_object(response)
        if response.status_code == 404 or body.get("error") == "no_such_instance":
            return
        if not response.is_success or body.get("success") is False:
            reason = body.get("msg") or body.get("error") or f"HTTP {response.status_code}"
            raise ProviderFailed(
                f"vast.ai could not destroy instance {instance_id}: {reason}",
                {"provider": NAME, "instance_id": instance_id, "upstream_status": response.status_code},
            )


def _endpoint(instance: dict[str, Any]) -> str | None:
    """``http://ip:port`` of the worker port's public mapping, once vast has assigned one."""
    try:
        host = str(instance["public_ipaddr"]).strip()
        port = instance["ports"][f"{WORKER_PORT}/tcp"][0]["HostPort"]
    except (KeyError, IndexError, TypeError):
        return None
    return f"http://{host}:{port}" if host and port else None
