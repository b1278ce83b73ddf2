"""The io.net client against a local server that answers as io.net's Container-as-a-Service API does."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest

from aiserve_mcp.gpu.providers.base import (
    OfferQuery,
    OfferUnavailable,
    ProviderFailed,
    ProviderNotConfigured,
    ProviderRateLimited,
    RentRequest,
)
from aiserve_mcp.gpu.providers.ionet import ENTRYPOINT, IMAGE, IoNetProvider
from aiserve_mcp.worker.bundle import BundleUnavailable, WorkerLaunch, worker_bundle
from tests.conftest import free_port, serve
from tests.fakes.ionet_api.hardware import make_hardware
from tests.fakes.ionet_api.server import API, ionet_app
from tests.fakes.ionet_api.state import IoNetState

KEY = "ionet-test-key"


@dataclass
class Harness:
    state: IoNetState
    url: str
    http: httpx.AsyncClient
    launch: WorkerLaunch

    def provider(self, key: str | None = KEY) -> IoNetProvider:
        return IoNetProvider(self.http, self.url, key, self.launch)

    def calls(self, method: str) -> list[str]:
        return [path for m, path in self.state.requests if m == method]

    async def rent_request(self, offer_id: str = "12__2", hours: int = 3) -> RentRequest:
        """A rent of ``offer_id`` as the market hands it over: the offer as io.net listed it a moment ago
        (one ``GET /hardware``)."""
        offer = await self.provider().get_offer(offer_id)
        assert offer is not None and offer.available
        return RentRequest(offer, duration_hours=hours, label="contract-123")


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> WorkerLaunch:
    """The worker start-up of a server on loopback (the fake marketplace runs there too)."""
    return WorkerLaunch(None, worker_bundle(tmp_path_factory.mktemp("data")), "http://127.0.0.1:8080")


@pytest.fixture
async def ionet(launch: WorkerLaunch) -> AsyncIterator[Harness]:
    state = IoNetState(api_key=KEY)
    async with serve(ionet_app(state)) as url, httpx.AsyncClient(timeout=5) as http:
        yield Harness(state, url, http, launch)


async def test_the_api_key_travels_in_x_api_key(ionet: Harness) -> None:
    offers = await ionet.provider().search(OfferQuery())
    assert offers

    with pytest.raises(ProviderFailed) as wrong:
        await ionet.provider("not-the-key").search(OfferQuery())
    assert wrong.value.details["upstream_status"] == 401
    assert "Invalid API key" in wrong.value.message

    answer = await ionet.http.get(f"{ionet.url}{API}/hardware")
    assert (answer.status_code, answer.json()) == (401, {"detail": "Not authenticated"})


async def test_without_a_key_nothing_is_sent(ionet: Harness) -> None:
    provider = ionet.provider(None)
    assert not provider.configured
    assert ionet.provider().configured
    request = await ionet.rent_request()
    ionet.state.requests.clear()
    for call in (
        provider.search(OfferQuery()),
        provider.get_offer("12__2"),
        provider.rent(request),
        provider.status("d"),
        provider.destroy("d"),
        provider.check_worker_start(),
    ):
        with pytest.raises(ProviderNotConfigured, match="AISERVE_IONET_API_KEY"):
            await call
    assert ionet.state.requests == []


async def test_search_maps_rows_to_offers_in_platform_units(ionet: Harness) -> None:
    provider = ionet.provider()
    assert (provider.name, provider.billing) == ("ionet", "prepaid")
    offers = {o.offer_id: o for o in await provider.search(OfferQuery())}

    assert "1CPU__US" not in offers  # CPU-only rows are not GPU offers
    two = offers["12__2"]
    assert (two.provider, two.gpu_model, two.num_gpus, two.vram_gb) == ("ionet", "GeForce RTX 4090", 2, 24)
    assert two.price_per_hour == Decimal("0.6")
    assert two.price_per_gpu_hour == Decimal("0.3")
    assert (two.location, two.available, two.reliability) == ("US", True, None)
    assert two.extras == {
        "hardware_id": 12,
        "brand_name": "NVIDIA",
        "supplier": "internal",
        "vcpu": 39,
        "memory_gb": 125,
        "storage_gb": 1000,
        "interconnect": None,
        "nvlink": False,
        "available_replicas": 3,
    }
    assert offers["B200_sxm6x8__US"].extras["hardware_id"] == 401
    assert offers["31__4"].available is False  # sold out, still listed

    assert await provider.get_offer("8H100.80S.176V__FI") == offers["8H100.80S.176V__FI"]
    assert await provider.get_offer("nope__1") is None


async def test_search_filters_on_whole_offer_price_vram_per_card_model_and_location(ionet: Harness) -> None:
    provider = ionet.provider()

    async def ids(query: OfferQuery) -> set[str]:
        return {o.offer_id for o in await provider.search(query)}

    assert await ids(OfferQuery(max_price_per_hour=Decimal("0.5"))) == {"12__1"}  # 12__2: 0.3/GPU, 0.6 whole
    assert await ids(OfferQuery(min_vram_gb=80)) == {"B200_sxm6x8__US", "8H100.80S.176V__FI", "31__4"}
    assert await ids(OfferQuery(min_vram_gb=100)) == {"B200_sxm6x8__US"}  # 192 GB per card
    assert await ids(OfferQuery(min_vram_gb=200)) == set()  # not 8 x 192
    assert await ids(OfferQuery(gpu_model="rtx_4090")) == {"12__1", "12__2"}
    assert await ids(OfferQuery(gpu_model="NVIDIA GeForce RTX 4090")) == {"12__1", "12__2"}
    assert await ids(OfferQuery(gpu_model="a100")) == {"31__4"}
    assert await ids(OfferQuery(gpu_model="A10")) == set()  # whole words: an A10 is not an A100
    assert await ids(OfferQuery(gpu_model="h100")) == {"8H100.80S.176V__FI"}
    assert await ids(OfferQuery(location="fi")) == {"8H100.80S.176V__FI"}
    both = OfferQuery(location="US", gpu_model="4090", max_price_per_hour=Decimal("0.6"))
    assert await ids(both) == {"12__1", "12__2"}


async def test_rent_deploys_a_container_that_starts_the_worker_from_the_bundle(ionet: Harness) -> None:
    provider = ionet.provider()
    rental = await provider.rent(await ionet.rent_request("12__2", hours=3))
    assert rental.status == "provisioning"
    assert rental.price_per_hour == Decimal("0.6")
    assert rental.endpoint is None
    assert rental.access_token
    assert ionet.state.requests == [
        ("GET", f"{API}/hardware"),
        ("GET", f"{API}/available-replicas"),
        ("POST", f"{API}/deploy"),
    ]

    deployment = ionet.state.deployments[rental.instance_id]
    script = deployment.body["container_config"]["args"][0]
    assert deployment.body == {
        "resource_private_name": "contract-123",
        "hardware_id": 12,
        "duration_hours": 3,
        "gpus_per_container": 2,
        "location_ids": [1],  # US, as io.net's available-replicas names it
        "container_config": {
            "replica_count": 1,
            "traffic_port": 8000,
            "env_variables": {},
            "secret_env_variables": {"AISERVE_WORKER_TOKEN": rental.access_token},
            "entrypoint": ENTRYPOINT,
            "args": [script],
        },
        "registry_config": {"image_url": IMAGE},
    }
    bundle = await ionet.launch.bundle.info()
    assert script == await ionet.launch.script(ionet.url)
    assert "U=http://127.0.0.1:8080/api/v1/worker/bundle\n" in script and f"H={bundle.sha256}\n" in script
    assert 'exec "$D/venv/bin/aiserve" worker' in script
    assert "pip install aiserve" not in script  # never the stranger's package of that name

    first = await provider.status(rental.instance_id)
    assert (first.status, first.endpoint) == ("provisioning", None)
    assert "deploying" in str(first.message)
    second = await provider.status(rental.instance_id)
    assert second.status == "running"
    assert second.endpoint == f"https://{rental.instance_id}.caas.ionet.test"


async def test_running_waits_for_the_container_url_io_net_publishes(ionet: Harness) -> None:
    ionet.state.polls_until_running, ionet.state.url_after_checks = 0, 2
    provider = ionet.provider()
    rental = await provider.rent(await ionet.rent_request())
    for _ in range(2):  # running, but io.net's own health check has not passed yet
        waiting = await provider.status(rental.instance_id)
        assert (waiting.status, waiting.endpoint) == ("provisioning", None)
        assert "container URL" in str(waiting.message)
    assert (await provider.status(rental.instance_id)).status == "running"


async def test_without_a_usable_public_url_nothing_is_rented(ionet: Harness) -> None:
    unwired = IoNetProvider(ionet.http, ionet.url, KEY)
    request = await ionet.rent_request()
    ionet.state.requests.clear()
    for call in (unwired.check_worker_start(), unwired.rent(request)):
        with pytest.raises(BundleUnavailable, match="AISERVE_PUBLIC_URL"):
            await call
    assert ionet.state.requests == []


async def test_a_large_configuration_deploys_with_its_hardware_id(ionet: Harness) -> None:
    rental = await ionet.provider().rent(await ionet.rent_request("B200_sxm6x8__US", hours=1))
    body = ionet.state.deployments[rental.instance_id].body
    assert (body["hardware_id"], body["gpus_per_container"], body["location_ids"]) == (401, 8, [1])
    assert rental.price_per_hour == Decimal("39.92")


async def test_a_failed_or_gone_deployment_is_reported(ionet: Harness) -> None:
    provider = ionet.provider()
    rental = await provider.rent(await ionet.rent_request())
    for status, ours in (("failed", "failed"), ("terminated", "destroyed"), ("completed", "destroyed")):
        ionet.state.deployments[rental.instance_id].status = status
        assert (await provider.status(rental.instance_id)).status == ours


async def test_an_offer_with_no_room_in_its_location_is_refused_before_deploying(ionet: Harness) -> None:
    ionet.state.hardware[0]["location"] = "XX"  # listed, but io.net has no room in any location for it
    request = await ionet.rent_request("12__1")
    with pytest.raises(OfferUnavailable, match="sold out in XX"):
        await ionet.provider().rent(request)
    assert ionet.calls("POST") == []


async def test_a_refused_deploy_carries_io_net_s_reason(ionet: Harness) -> None:
    ionet.state.stale.add("12__1")  # listed as available, sold out by the time it is deployed
    with pytest.raises(OfferUnavailable) as refused:
        await ionet.provider().rent(await ionet.rent_request("12__1"))
    assert "Not enough available hardware" in refused.value.message  # {"status": "failed", "error": ...}
    assert refused.value.details["upstream_status"] == 400
    assert ionet.state.deployments == {}


async def test_the_fake_enforces_the_closed_deploy_schema(ionet: Harness) -> None:
    headers = {"x-api-key": KEY}
    body = {
        "resource_private_name": "x",
        "hardware_id": 12,
        "duration_hours": 0,
        "gpus_per_container": 1,
        "location_ids": [1],
        "env": {"A": "1"},
        "container_config": {"replica_count": 1, "traffic_port": 8000, "command": "serve"},
        "registry_config": {"image_url": "a/b:c", "tag": "latest"},
    }
    answer = await ionet.http.post(f"{ionet.url}{API}/deploy", json=body, headers=headers)
    assert answer.status_code == 422
    problems = {(tuple(d["loc"]), d["type"]) for d in answer.json()["detail"]}
    assert problems == {
        (("body", "env"), "extra_forbidden"),
        (("body", "container_config", "command"), "extra_forbidden"),
        (("body", "registry_config", "tag"), "extra_forbidden"),
        (("body", "duration_hours"), "greater_than_equal"),
    }
    assert ionet.state.deployments == {}


async def test_destroy_is_idempotent(ionet: Harness) -> None:
    provider = ionet.provider()
    rental = await provider.rent(await ionet.rent_request())
    await provider.destroy(rental.instance_id)
    assert rental.instance_id not in ionet.state.deployments
    await provider.destroy(rental.instance_id)
    assert (await provider.status(rental.instance_id)).status == "destroyed"
    assert ionet.calls("DELETE") == [f"{API}/deployment/{rental.instance_id}"] * 2


async def test_rate_limits_are_retried_then_surface(ionet: Harness) -> None:
    provider = ionet.provider()
    ionet.state.throttle_next = 2
    assert len(await provider.search(OfferQuery())) == 5
    assert ionet.calls("GET") == [f"{API}/hardware"] * 3

    ionet.state.throttle_next = 10
    with pytest.raises(ProviderRateLimited):
        await provider.search(OfferQuery())


@pytest.mark.parametrize("status", [500, 503])
async def test_a_server_error_on_deploy_is_not_retried(ionet: Harness, status: int) -> None:
    ionet.state.deploy_failures = [status, status]
    with pytest.raises(ProviderFailed) as failed:
        await ionet.provider().rent(await ionet.rent_request())
    assert failed.value.details["upstream_status"] == status
    assert ionet.calls("POST") == [f"{API}/deploy"]  # a retried deploy could be paid twice
    assert ionet.state.deployments == {}


async def test_a_server_error_elsewhere_is_a_provider_failure(ionet: Harness) -> None:
    ionet.state.fail_next = 1
    with pytest.raises(ProviderFailed, match="Internal Server Error"):
        await ionet.provider().search(OfferQuery())


async def test_an_unreachable_server_is_a_provider_failure() -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        provider = IoNetProvider(http, f"http://127.0.0.1:{free_port()}", KEY)
        with pytest.raises(ProviderFailed, match="cannot be reached"):
            await provider.search(OfferQuery())


async def test_two_thousand_rows_search_quickly(ionet: Harness) -> None:
    ionet.state.hardware = make_hardware(2000, seed=7)
    assert len({row["id"] for row in ionet.state.hardware}) == 2000
    started = time.perf_counter()
    offers = await ionet.provider().search(OfferQuery(gpu_model="H100", max_price_per_hour=Decimal("10")))
    assert offers and all(o.gpu_model == "H100 80GB HBM3" and o.price_per_hour <= 10 for o in offers)
    assert time.perf_counter() - started < 2.0


async def test_an_id_io_net_cannot_parse_is_a_provider_failure(ionet: Harness) -> None:
    with pytest.raises(ProviderFailed) as failed:
        await ionet.provider().status("not-a-uuid")
    assert failed.value.details["upstream_status"] == 422
    assert "valid UUID" in failed.value.message
