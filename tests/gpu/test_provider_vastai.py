"""The vast.ai client against a local server that answers as vast.ai's REST API does."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

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
from aiserve_mcp.gpu.providers.vastai import (
    DEFAULT_IMAGE,
    DISK_GB,
    VastAiProvider,
    seconds_to_utc_midnight,
    vram_gb,
)
from aiserve_mcp.worker.bundle import BundleInfo, WorkerBundle, WorkerLaunch
from tests.conftest import free_port, serve
from tests.fakes.vastai_server import API_KEY, HOURS_PER_MONTH, VastAiState, make_offers, vastai_app


def offer(offer_id: int, **fields: Any) -> dict[str, Any]:
    """One realistic vast offer with ``fields`` overriding; no storage cost unless given."""
    row = make_offers(1, seed=offer_id)[0]
    row.update(id=offer_id, storage_cost=0.0, verified=True, rentable=True, rented=False, external=False)
    row.update(fields)
    if "dph_base" in fields and "dph_total" not in fields:
        row["dph_total"] = fields["dph_base"]
    return row


@dataclass
class Fake:
    state: VastAiState
    url: str
    provider: VastAiProvider

    async def rent_request(
        self, offer_id: str = "101", hours: int = 1, label: str = "ct_1", env: dict[str, str] | None = None
    ) -> RentRequest:
        """A rent of ``offer_id`` as the market hands it over: the offer as vast.ai listed it a moment ago
        (one offer search)."""
        offer = await self.provider.get_offer(offer_id)
        assert offer is not None
        return RentRequest(offer, hours, label, env or {})


class FixedBundle(WorkerBundle):
    """A worker bundle that is already built: these tests are about the marketplace, not the wheel."""

    def __init__(self, where: Path) -> None:
        super().__init__(where)
        self._info = BundleInfo("aiserve", "0.0.0", "aiserve-0.0.0-py3-none-any.whl", "0" * 64, 1, where)

    async def info(self) -> BundleInfo:
        return self._info


@pytest.fixture
def launch(tmp_path: Path) -> WorkerLaunch:
    """The worker start-up of a server on loopback (the fake marketplace runs there too)."""
    return WorkerLaunch(None, FixedBundle(tmp_path), "http://127.0.0.1:8080")


@pytest.fixture
async def fake(launch: WorkerLaunch) -> AsyncIterator[Fake]:
    state = VastAiState(
        offers=[
            offer(
                101, gpu_name="RTX 4090", gpu_ram=24564, num_gpus=1, dph_base=0.35, geolocation="Texas, US"
            ),
            offer(
                102, gpu_name="RTX 4090", gpu_ram=24564, num_gpus=4, dph_base=1.2, geolocation="Quebec, CA"
            ),
            offer(103, gpu_name="L40S", gpu_ram=46068, num_gpus=2, dph_base=1.5, geolocation="Russia, RU"),
            offer(104, gpu_name="H100 SXM", gpu_ram=81559, num_gpus=8, dph_base=19.6, geolocation=None),
            offer(105, gpu_name="RTX 3090", gpu_ram=24576, num_gpus=1, dph_base=0.2, verified=False),
            offer(106, gpu_name="RTX 3090", gpu_ram=24576, num_gpus=1, dph_base=0.18, rented=True),
        ]
    )
    async with serve(vastai_app(state)) as url, httpx.AsyncClient(timeout=5) as client:
        yield Fake(state, url, VastAiProvider(client, url, API_KEY, launch))


def ids(offers: list[Any]) -> set[str]:
    return {o.offer_id for o in offers}


async def test_search_maps_units_and_applies_defaults(fake: Fake) -> None:
    offers = {o.offer_id: o for o in await fake.provider.search(OfferQuery())}
    assert set(offers) == {"101", "102", "103", "104"}  # unverified 105 and rented 106 are left out
    four = offers["102"]
    assert (four.provider, four.gpu_model, four.num_gpus, four.vram_gb) == ("vastai", "RTX 4090", 4, 24)
    assert four.price_per_hour == Decimal("1.2")  # the whole offer
    assert four.price_per_gpu_hour == Decimal("0.3")
    assert offers["103"].vram_gb == 48 and offers["104"].vram_gb == 80
    assert offers["101"].location == "Texas, US" and offers["104"].location == "unknown"
    assert offers["101"].available and offers["101"].reliability is not None
    assert offers["101"].extras["machine_id"] == fake.state.offers[0]["machine_id"]
    query = fake.state.queries[-1]
    assert query["verified"] == {"eq": True} and query["rented"] == {"eq": False}
    assert query["type"] == "on-demand" and query["order"] == [["score", "desc"]]
    assert query["allocated_storage"] == DISK_GB and query["limit"] >= 2000


async def test_min_vram_is_gb_per_gpu_against_mb(fake: Fake) -> None:
    assert ids(await fake.provider.search(OfferQuery(min_vram_gb=24))) == {"101", "102", "103", "104"}
    assert ids(await fake.provider.search(OfferQuery(min_vram_gb=48))) == {"103", "104"}
    assert ids(await fake.provider.search(OfferQuery(min_vram_gb=80))) == {"104"}
    assert fake.state.queries[-1]["gpu_ram"]["gte"] == pytest.approx(80 * 1024 * 0.93)


async def test_max_price_is_for_the_whole_offer(fake: Fake) -> None:
    # 102 costs 0.30 per GPU but 1.20 for its four GPUs: over a 1.00 budget
    assert ids(await fake.provider.search(OfferQuery(max_price_per_hour=Decimal("1.00")))) == {"101"}
    assert ids(await fake.provider.search(OfferQuery(max_price_per_hour=Decimal("1.5")))) == {
        "101",
        "102",
        "103",
    }


async def test_gpu_model_and_location_filters(fake: Fake) -> None:
    assert ids(await fake.provider.search(OfferQuery(gpu_model="RTX_4090"))) == {"101", "102"}
    assert ids(await fake.provider.search(OfferQuery(gpu_model="L40S"))) == {"103"}
    # "us" is inside "Russia, RU" but a two-letter code matches the country only
    assert ids(await fake.provider.search(OfferQuery(location="US"))) == {"101"}
    assert ids(await fake.provider.search(OfferQuery(location="ca"))) == {"102"}
    assert ids(await fake.provider.search(OfferQuery(location="quebec"))) == {"102"}


async def test_price_includes_the_storage_the_search_allocates(fake: Fake) -> None:
    fake.state.offers[0]["storage_cost"] = 0.18  # USD per GB-month
    (found,) = [o for o in await fake.provider.search(OfferQuery()) if o.offer_id == "101"]
    expected = round(0.35 + 0.18 * DISK_GB / HOURS_PER_MONTH, 6)
    assert found.price_per_hour == Decimal(str(expected)) and found.price_per_hour > Decimal("0.35")


async def test_malformed_rows_are_skipped(fake: Fake) -> None:
    fake.state.offers[0].pop("storage_cost")
    fake.state.offers[0]["dph_total"] = "n/a"
    fake.state.offers[1]["gpu_name"] = None
    fake.state.offers[2].pop("gpu_ram")
    fake.state.offers.append(offer(107, num_gpus=0))
    fake.state.offers.append(offer(108, dph_base=-0.5))
    assert ids(await fake.provider.search(OfferQuery())) == {"104"}


async def test_every_request_carries_the_bearer_key(fake: Fake) -> None:
    await fake.provider.search(OfferQuery())
    rental = await fake.provider.rent(await fake.rent_request())
    await fake.provider.status(rental.instance_id)
    await fake.provider.destroy(rental.instance_id)
    assert len(fake.state.authorizations) == 5  # search, the offer, create, status, destroy
    assert set(fake.state.authorizations) == {f"Bearer {API_KEY}"}


async def test_wrong_key_is_a_provider_failure(fake: Fake, launch: WorkerLaunch) -> None:
    request = await fake.rent_request()
    async with httpx.AsyncClient() as client:
        wrong = VastAiProvider(client, fake.url, "not-the-key", launch)
        with pytest.raises(ProviderFailed):
            await wrong.rent(request)
    assert fake.state.instances == {} and not fake.state.offers[0]["rented"]


async def test_not_configured_refuses_every_call_without_a_request(fake: Fake) -> None:
    request = await fake.rent_request()
    fake.state.requests.clear()
    async with httpx.AsyncClient() as client:
        provider = VastAiProvider(client, fake.url, None)
        assert not provider.configured and fake.provider.configured
        calls = [
            provider.search(OfferQuery()),
            provider.get_offer("101"),
            provider.get_offer("abc"),
            provider.rent(request),
            provider.status("1"),
            provider.destroy("1"),
        ]
        for call in calls:
            with pytest.raises(ProviderNotConfigured, match="AISERVE_VASTAI_API_KEY"):
                await call
    assert fake.state.requests == []
    assert provider.name == "vastai" and provider.billing == "metered"


async def test_get_offer(fake: Fake) -> None:
    found = await fake.provider.get_offer("103")
    assert found is not None and found.gpu_model == "L40S" and found.num_gpus == 2
    assert fake.state.queries[-1]["id"] == {"eq": 103}
    assert await fake.provider.get_offer("106") is None  # rented
    assert await fake.provider.get_offer("999") is None
    before = len(fake.state.requests)
    assert await fake.provider.get_offer("../bundles") is None
    assert len(fake.state.requests) == before


async def test_rent_then_status_goes_provisioning_to_running(fake: Fake) -> None:
    rental = await fake.provider.rent(
        await fake.rent_request(hours=2, label="ct_abc", env={"AISERVE_TOKEN": "t0k"})
    )
    assert rental.status == "provisioning" and rental.price_per_hour == Decimal("0.35")
    contract = int(rental.instance_id)
    assert fake.state.instances[contract]["label"] == "ct_abc"
    assert fake.state.offers[0]["rented"]
    payload = fake.state.create_payloads["101"]
    assert rental.access_token and len(rental.access_token) >= 32
    worker_token = {"AISERVE_WORKER_TOKEN": rental.access_token}
    assert payload["env"] == {"AISERVE_TOKEN": "t0k", "-p 8000:8000": "1", **worker_token}
    assert payload["cancel_unavail"] is True and payload["price"] is None and payload["client_id"] == "me"
    assert payload["disk"] == DISK_GB and "worker --host" in payload["onstart"]

    first = await fake.provider.status(rental.instance_id)
    assert first.status == "provisioning" and first.endpoint is None
    second = await fake.provider.status(rental.instance_id)
    assert second.status == "running"
    assert second.endpoint == f"http://127.0.0.1:{fake.state.host_port}"


async def test_rent_refused_at_create(fake: Fake) -> None:
    fake.state.refuse_create.add("101")  # rented by someone else between lookup and create
    with pytest.raises(OfferUnavailable, match="not available") as caught:
        await fake.provider.rent(await fake.rent_request())
    assert caught.value.details["upstream_status"] == 404  # vast.ai: 404 invalid_args no_such_ask
    assert ("PUT", "/api/v0/asks/101/") in fake.state.requests and fake.state.instances == {}


async def test_rent_of_a_machine_that_cannot_start_now(fake: Fake) -> None:
    fake.state.cannot_start.add("101")  # cancel_unavail: vast.ai answers 410 rather than wait
    with pytest.raises(OfferUnavailable, match="no longer available") as caught:
        await fake.provider.rent(await fake.rent_request())
    assert caught.value.details["upstream_status"] == 410
    assert fake.state.instances == {} and not fake.state.offers[0]["rented"]


async def test_rent_keeps_the_port_mapping_in_the_instance_env(fake: Fake) -> None:
    rental = await fake.provider.rent(await fake.rent_request(env={"MODEL": "m"}))
    extra_env = fake.state.instances[int(rental.instance_id)]["extra_env"]
    assert ["-p 8000:8000", "1"] in extra_env and ["MODEL", "m"] in extra_env


@pytest.mark.parametrize(
    ("request_fields", "limit"),
    [({"env": {"HF_TOKEN": "x" * 257}}, "256"), ({"label": "c" * 257}, "256")],
)
async def test_rent_over_vast_limits_is_refused_and_creates_nothing(
    fake: Fake, request_fields: dict[str, Any], limit: str
) -> None:
    request = replace(await fake.rent_request(), **request_fields)
    with pytest.raises((OfferUnavailable, ProviderFailed), match=limit) as caught:
        await fake.provider.rent(request)
    assert caught.value.details["upstream_status"] == 400
    assert fake.state.instances == {} and not fake.state.offers[0]["rented"]


async def test_an_image_that_does_not_exist_never_runs(fake: Fake) -> None:
    fake.state.missing_images.add(DEFAULT_IMAGE)
    rental = await fake.provider.rent(await fake.rent_request())
    states = [await fake.provider.status(rental.instance_id) for _ in range(5)]
    assert all(state.status != "running" for state in states)
    assert states[-1].message is not None and "manifest unknown" in states[-1].message
    assert fake.state.instances[int(rental.instance_id)]["actual_status"] == "created"


async def test_an_image_that_does_not_exist_reads_as_failed(fake: Fake) -> None:
    fake.state.missing_images.add(DEFAULT_IMAGE)
    rental = await fake.provider.rent(await fake.rent_request())
    for _ in range(3):
        state = await fake.provider.status(rental.instance_id)
    assert state.status == "failed"


async def test_failed_create_destroys_the_contract_it_left(fake: Fake) -> None:
    fake.state.fail_create_with_contract.add("102")
    contract = fake.state.next_contract
    with pytest.raises(OfferUnavailable, match="could not schedule"):
        await fake.provider.rent(await fake.rent_request("102", label="ct_2"))
    assert fake.state.destroyed == [contract] and contract not in fake.state.instances


async def test_create_crash_cleans_up_by_label(fake: Fake) -> None:
    fake.state.crash_create.add("101")
    fake.state.instances[1] = {"id": 1, "label": "someone-else", "actual_status": "running"}
    with pytest.raises(ProviderFailed):
        await fake.provider.rent(await fake.rent_request(label="ct_3"))
    assert [i["label"] for i in fake.state.instances.values()] == ["someone-else"]
    assert len(fake.state.destroyed) == 1
    assert fake.state.requests.count(("PUT", "/api/v0/asks/101/")) == 1


async def test_destroy_is_idempotent(fake: Fake) -> None:
    rental = await fake.provider.rent(await fake.rent_request())
    await fake.provider.destroy(rental.instance_id)
    assert int(rental.instance_id) in fake.state.destroyed and not fake.state.offers[0]["rented"]
    await fake.provider.destroy(rental.instance_id)
    await fake.provider.destroy("777")
    assert (await fake.provider.status(rental.instance_id)).status == "destroyed"
    assert fake.state.requests.count(("DELETE", f"/api/v0/instances/{rental.instance_id}/")) == 2
    before = len(fake.state.requests)
    await fake.provider.destroy("../asks/101")
    assert (await fake.provider.status("../asks/101")).status == "destroyed"
    assert len(fake.state.requests) == before


@pytest.mark.parametrize(
    ("fields", "expected", "message"),
    [
        ({"actual_status": None}, "provisioning", None),
        ({"actual_status": "created"}, "provisioning", None),
        ({"actual_status": "created", "status_msg": "Error: OCI runtime create failed: x"}, "failed", "OCI"),
        ({"actual_status": "exited", "status_msg": "exit code 1"}, "failed", "exit code 1"),
        ({"actual_status": "offline"}, "failed", "offline"),
        ({"actual_status": "loading", "intended_status": "stopped", "cur_state": "stopped"}, "failed", None),
        ({"actual_status": "running", "public_ipaddr": "10.0.0.5", "ports": {}}, "running", None),
    ],
)
async def test_status_mapping(fake: Fake, fields: dict[str, Any], expected: str, message: str | None) -> None:
    fake.state.instances[55] = {"id": 55, "intended_status": "running", "cur_state": "running", **fields}
    state = await fake.provider.status("55")
    assert state.status == expected
    assert state.endpoint is None
    if message:
        assert state.message is not None and message in state.message


async def test_throttled_requests_are_retried(fake: Fake) -> None:
    fake.state.throttle_next = 2
    assert ids(await fake.provider.search(OfferQuery(gpu_model="L40S"))) == {"103"}
    assert fake.state.requests.count(("POST", "/api/v0/bundles/")) == 3


async def test_throttling_that_persists_is_rate_limited(fake: Fake) -> None:
    fake.state.throttle_next = 10
    with pytest.raises(ProviderRateLimited):
        await fake.provider.search(OfferQuery())
    assert fake.state.requests.count(("POST", "/api/v0/bundles/")) == 3


async def test_daily_search_quota_is_not_retried(fake: Fake) -> None:
    fake.state.quota_exhausted = True
    with pytest.raises(ProviderRateLimited, match="UTC midnight") as caught:
        await fake.provider.search(OfferQuery())
    assert fake.state.requests == [("POST", "/api/v0/bundles/")]
    assert abs(caught.value.retry_after_s - seconds_to_utc_midnight()) <= 5


def test_seconds_to_utc_midnight() -> None:
    assert seconds_to_utc_midnight(datetime(2026, 3, 1, 23, 59, 30, tzinfo=UTC)) == 30
    assert seconds_to_utc_midnight(datetime(2026, 3, 1, 0, 0, 0, tzinfo=UTC)) == 86_400


def test_vram_snaps_to_marketed_sizes() -> None:
    assert [vram_gb(mb) for mb in (24564, 24576, 46068, 49140, 81559, 16384, 11264, 143771)] == [
        24,
        24,
        48,
        48,
        80,
        16,
        11,
        141,
    ]
    assert vram_gb(300_000) == 293  # beyond the table: plain rounding


async def test_slow_answers_are_provider_failures(fake: Fake) -> None:
    fake.state.delay_s = 0.5
    async with httpx.AsyncClient(timeout=0.05) as client:
        slow = VastAiProvider(client, fake.url, API_KEY)
        started = time.monotonic()
        with pytest.raises(ProviderFailed, match="in time"):
            await slow.status("1")
    assert time.monotonic() - started < 2
    assert fake.state.requests.count(("GET", "/api/v0/instances/1/")) == 3


async def test_unreachable_host_is_a_provider_failure() -> None:
    async with httpx.AsyncClient(timeout=1) as client:
        provider = VastAiProvider(client, f"http://127.0.0.1:{free_port()}", API_KEY)
        with pytest.raises(ProviderFailed, match="cannot be reached"):
            await provider.search(OfferQuery())


async def test_fake_offers_are_realistic() -> None:
    offers = make_offers(2000, seed=7)
    assert len({o["id"] for o in offers}) == 2000
    assert {o["gpu_name"] for o in offers} >= {"RTX 4090", "H100 SXM", "L40S", "Tesla V100"}
    assert all(o["gpu_total_ram"] == o["gpu_ram"] * o["num_gpus"] for o in offers)
    state = VastAiState(offers=offers)
    async with serve(vastai_app(state)) as url, httpx.AsyncClient() as client:
        found = await VastAiProvider(client, url, API_KEY).search(OfferQuery(min_vram_gb=80))
    assert found and all(o.vram_gb >= 80 for o in found)
    assert len(found) == sum(1 for o in offers if o["gpu_ram"] >= 80 * 1024 * 0.93 and o["verified"])
    per_gpu = [o.price_per_gpu_hour for o in found]
    assert Decimal("0.5") < min(per_gpu) and max(per_gpu) < Decimal("3.5")


# The fake itself: it must refuse what vast.ai refuses, with vast.ai's body, so that a change that makes it
# kinder fails here.


async def test_the_fake_refuses_create_bodies_vast_refuses(fake: Fake) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    good = {"image": "ubuntu:22.04", "disk": 16, "runtype": "ssh_direct", "env": {"-p 8000:8000": "1"}}
    refusals: list[tuple[dict[str, Any], str]] = [
        ({**good, "env": "-e A=1 -p 8000:8000"}, "invalid_args"),
        ({**good, "image": "i" * 1025}, "invalid_args"),
        ({"disk": 16}, "invalid_args"),
        ({**good, "onstart": "o" * 4000, "args_str": "a" * 97}, "invalid_args"),
        ({**good, "label": "l" * 257}, "invalid_args"),
        ({**good, "env": {"A": "v" * 257}}, "invalid_args"),
        ({**good, "env": {f"K{i}": "v" * 250 for i in range(140)}}, "invalid_args"),
        ({**good, "disk": 7.5}, "invalid_args"),
        ({**good, "runtype": "docker"}, "invalid_args"),
        ({**good, "price": 500}, "invalid_price"),
    ]
    async with httpx.AsyncClient(base_url=fake.url, headers=auth) as http:
        for body, error in refusals:
            answer = await http.put("/api/v0/asks/101/", json=body)
            assert answer.status_code == 400, body
            assert answer.json()["success"] is False and answer.json()["error"] == error, body
        assert fake.state.instances == {}
        unknown = await http.put("/api/v0/asks/999/", json=good)
        assert unknown.status_code == 404 and unknown.json() == {
            "success": False,
            "error": "invalid_args",
            "msg": "error 404/3603: no_such_ask Instance type by id 999 is not available.",
            "ask_id": 999,
        }
        fake.state.cannot_start.add("101")
        gone = await http.put("/api/v0/asks/101/", json={**good, "cancel_unavail": True})
        assert gone.status_code == 410 and gone.json()["error"] == "no_such_ask"
        assert gone.json()["msg"] == "error 410/3907: no_such_ask Instance type 101 is no longer available."
        fake.state.cannot_start.clear()
        created = await http.put("/api/v0/asks/101/", json=good)
        assert created.status_code == 200 and created.json()["success"] is True
        contract = created.json()["new_contract"]
        assert fake.state.instances[contract]["extra_env"] == [["-p 8000:8000", "1"]]
        assert (await http.delete(f"/api/v0/instances/{contract}/")).json()["success"] is True
        missing = await http.delete(f"/api/v0/instances/{contract}/")
        assert missing.status_code == 404 and missing.json() == {
            "success": False,
            "error": "not_found",
            "msg": "Instance not found",
        }
        bad_id = await http.delete("/api/v0/instances/abc/")
        assert bad_id.status_code == 400 and bad_id.json()["msg"] == "invalid instance_id"
        unauthenticated = await http.put(
            "/api/v0/asks/101/", json=good, headers={"Authorization": "Bearer x"}
        )
        assert unauthenticated.status_code == 401 and unauthenticated.json() == {
            "success": False,
            "error": "auth_error",
            "msg": "Invalid user key",
        }
        fake.state.throttle_next = 2
        throttled = await http.put("/api/v0/asks/101/", json=good)
        assert throttled.status_code == 429
        assert throttled.json() == {"detail": "API requests too frequent endpoint threshold=4.5"}
        destroy_throttled = await http.delete("/api/v0/instances/1/")
        assert (
            destroy_throttled.status_code == 429
            and destroy_throttled.json()["error"] == "rate_limit_exceeded"
        )
