"""This host as a provider, end to end: reserve local workers, reach them, destroy them, processes gone;
server processes sharing the slots; and the contracts whose server is gone: ended, with their leftover
workers (and only theirs) stopped."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from aiserve_mcp.bootstrap import Services
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.gpu.contracts import new_contract_id
from aiserve_mcp.gpu.market import GpuMarket
from aiserve_mcp.gpu.providers.base import Offer, OfferQuery, OfferUnavailable, Rental, RentRequest
from aiserve_mcp.gpu.providers.local import RENT_GRACE_S, LocalProvider
from aiserve_mcp.gpu.tables import GpuContract
from aiserve_mcp.worker.launch import WORKDIR_PREFIX, contract_workdirs, start_worker, stop_worker
from tests.conftest import Account, app_client, sign_up
from tests.worker.test_lifetime import running, worker_of_intermediate


def pid_of(instance_id: str) -> int:
    return int(instance_id.rsplit("-", 1)[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_reserve_two_local_workers_then_destroy_them(
    client: httpx.AsyncClient, account: Account
) -> None:
    offers = (await client.get("/api/v1/gpu/instances?provider=local", headers=account.headers)).json()
    assert offers["count"] == 2 and all(o["location"] == "local" for o in offers["instances"])

    answer = await client.post(
        "/api/v1/gpu/instances/reserve",
        json={"count": 2, "filters": {"provider": "local"}, "config": {"duration_hours": 1}},
        headers=account.headers,
    )
    assert answer.status_code == 201, answer.text
    reserved = answer.json()["reserved"]
    assert len(reserved) == 2 and {r["status"] for r in reserved} == {"running"}
    pids = [pid_of(r["instance_id"]) for r in reserved]
    assert all(alive(pid) for pid in pids)

    assert (await client.get("/stats")).json()["gpu_instances_active"] == 2
    listed = (await client.get("/api/v1/gpu/contracts", headers=account.headers)).json()
    assert {c["status"] for c in listed["contracts"]} == {"running"} and listed["count"] == 2
    async with httpx.AsyncClient(timeout=5) as http:
        for contract in listed["contracts"]:
            health = await http.get(contract["endpoint"] + "/health")
            assert health.status_code == 401  # a worker answers only the platform that holds its token
    full = (await client.get("/api/v1/gpu/instances?provider=local", headers=account.headers)).json()
    assert [o["available"] for o in full["instances"]] == [False, False]
    third = await client.post("/api/v1/gpu/instances/local/cpu0", json={}, headers=account.headers)
    assert third.status_code == 409

    for r in reserved:
        gone = await client.delete(f"/api/v1/gpu/instances/local/{r['contract_id']}", headers=account.headers)
        assert gone.status_code == 200 and gone.json()["status"] == "destroyed"
    assert not any(alive(pid) for pid in pids)
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(listed["contracts"][0]["endpoint"] + "/health")
    after = (await client.get("/api/v1/gpu/instances?provider=local", headers=account.headers)).json()
    assert [o["available"] for o in after["instances"]] == [True, True]


async def test_workers_stop_with_the_server(settings: Settings) -> None:
    async with app_client(settings) as (_, client):
        owner = await sign_up(client)
        rented = await client.post("/api/v1/gpu/instances/local/cpu1", json={}, headers=owner.headers)
        pid = pid_of(rented.json()["instance_id"])
        assert alive(pid)
    assert not alive(pid)


# -- server processes on one host -------------------------------------------------------------------

reads_proc = pytest.mark.skipif(sys.platform != "linux", reason="tells workers apart through /proc")


@pytest.fixture
async def two_servers(tmp_path: Path) -> AsyncIterator[tuple[LocalProvider, LocalProvider]]:
    """This host's provider as two server processes with one data directory see it (they share nothing
    else)."""
    servers = (LocalProvider(Decimal(0), 2, tmp_path), LocalProvider(Decimal(0), 2, tmp_path))
    try:
        yield servers
    finally:
        for server in servers:
            await server.aclose()


async def rent(provider: LocalProvider, offer: Offer) -> Rental:
    return await provider.rent(RentRequest(offer, 1, new_contract_id()))


async def free_slots(provider: LocalProvider) -> list[bool]:
    return [o.available for o in await provider.search(OfferQuery())]


@reads_proc
async def test_a_slot_rented_through_one_server_process_is_taken_for_the_others(
    two_servers: tuple[LocalProvider, LocalProvider],
) -> None:
    first, second = two_servers
    offer = await first.get_offer("cpu0")
    assert offer is not None and offer.available
    rental = await rent(first, offer)
    pid = pid_of(rental.instance_id)
    assert await free_slots(second) == [False, True]
    with pytest.raises(OfferUnavailable):
        await rent(second, offer)
    assert (await second.status(rental.instance_id)).status == "running"

    await second.destroy(rental.instance_id)  # as if the contract's expiry came through this process
    assert not running(pid)
    assert await free_slots(first) == [True, True] and await free_slots(second) == [True, True]
    again = await rent(second, offer)
    assert await free_slots(first) == [False, True]
    await first.destroy(again.instance_id)
    assert not running(pid_of(again.instance_id))


@reads_proc
async def test_two_server_processes_never_rent_one_slot_at_once(
    two_servers: tuple[LocalProvider, LocalProvider],
) -> None:
    offers = [await p.get_offer("cpu1") for p in two_servers]  # both have looked: each sees it free
    offer = offers[0]
    assert offer is not None and all(o == offer for o in offers)
    outcomes = await asyncio.gather(*(rent(p, offer) for p in two_servers), return_exceptions=True)
    assert sorted(type(o).__name__ for o in outcomes) == ["OfferUnavailable", "Rental"]


# -- contracts whose server is gone ------------------------------------------------------------------

SERVER_STOPPED = "the server that started this worker stopped"


def local_contract(
    user_id: str, instance_id: str | None, *, created_at: datetime | None = None, status: str = "running"
) -> GpuContract:
    """A contract as a server (maybe an earlier one) stored it for one of this host's workers."""
    created_at = created_at or datetime.now(UTC)
    return GpuContract(
        id=new_contract_id(),
        user_id=user_id,
        api_key_id=None,
        provider="local",
        offer_id="cpu0",
        instance_id=instance_id,
        gpu_model="CPU",
        pool="default",
        num_gpus=0,
        vram_gb=0,
        location="local",
        price_per_hour=Decimal(0),
        billing="metered",
        duration_hours=2,
        auto_renew=False,
        status=status,
        endpoint="http://127.0.0.1:9" if instance_id else None,
        created_at=created_at,
        updated_at=created_at,
        expires_at=created_at + timedelta(hours=2),
    )


def replace_id(contract: GpuContract, instance_id: str) -> GpuContract:
    """``contract`` (not stored yet) with ``instance_id``, once its worker has started."""
    row = local_contract(contract.user_id, instance_id, created_at=contract.created_at)
    row.id = contract.id
    return row


@pytest.fixture
def market(app: Starlette) -> GpuMarket:
    services: Services = app.state.services
    return services.market


async def stored(market: GpuMarket, user_id: str, contract_id: str) -> GpuContract:
    return await market.contracts.owned(user_id, contract_id)


@reads_proc
async def test_a_leftover_worker_is_stopped_only_when_it_is_the_orphan_of_that_contract(
    market: GpuMarket, account: Account, tmp_path: Path
) -> None:
    orphan_of = local_contract(account.user_id, None)
    checks_hourly = {"AISERVE_WORKER_PARENT_CHECK_S": "3600"}  # so that it waits for us
    async with worker_of_intermediate("thread", checks_hourly, tmp_path, orphan_of.id) as (parent, pid):
        parent.kill()  # no parent-death signal (started from a thread): an orphan that still runs
        parent.wait(10)
        other = await market.contracts.add(local_contract(account.user_id, f"cpu1-{pid}"))
        assert [c.id for c in await market.end_leftover_local()] == [other.id]
        assert running(pid), "a worker of another contract was stopped"

        mine = await market.contracts.add(replace_id(orphan_of, f"cpu0-{pid}"))
        started = datetime.now(UTC)
        assert [c.id for c in await market.end_leftover_local()] == [mine.id]
        assert not running(pid)
        ended = await stored(market, account.user_id, mine.id)
        assert ended.status == "destroyed" and ended.destroyed_at is not None
        assert ended.destroyed_at >= started  # it ran until it was stopped here
        assert ended.endpoint is None and SERVER_STOPPED in (ended.status_message or "")


@reads_proc
async def test_a_worker_held_by_a_live_server_process_is_left_alone(
    market: GpuMarket, client: httpx.AsyncClient, account: Account
) -> None:
    """Its parent (this process, like another server on the same database) is alive: not a leftover,
    neither at start-up nor when the contract is read."""
    contract = local_contract(account.user_id, None)
    worker = await start_worker(visible_devices="", contract_id=contract.id)
    try:
        contract = await market.contracts.add(replace_id(contract, f"cpu0-{worker.process.pid}"))
        assert await market.end_leftover_local() == []
        read = await client.get(f"/api/v1/gpu/contracts/{contract.id}", headers=account.headers)
        assert read.json()["status"] == "running" and worker.process.returncode is None
    finally:
        await stop_worker(worker.process)
    assert [c.id for c in await market.end_leftover_local()] == [contract.id]


async def test_an_unrelated_process_that_reused_the_pid_is_never_signalled(
    market: GpuMarket, account: Account
) -> None:
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        contract = await market.contracts.add(local_contract(account.user_id, f"cpu0-{unrelated.pid}"))
        assert [c.id for c in await market.end_leftover_local()] == [contract.id]
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()
    assert (await stored(market, account.user_id, contract.id)).status == "destroyed"


async def test_a_gone_worker_is_charged_until_its_last_heartbeat(market: GpuMarket, account: Account) -> None:
    started_at = datetime.now(UTC) - timedelta(hours=1)
    exited = subprocess.Popen(["true"])  # a pid that no process has any more
    exited.wait()
    contract = await market.contracts.add(
        local_contract(account.user_id, f"cpu0-{exited.pid}", created_at=started_at)
    )
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{contract.id}-"))
    last_beat = started_at + timedelta(minutes=10)
    os.utime(workdir, (last_beat.timestamp(), last_beat.timestamp()))
    assert [c.id for c in await market.end_leftover_local()] == [contract.id]
    ended = await stored(market, account.user_id, contract.id)
    assert ended.status == "destroyed" and ended.destroyed_at is not None
    assert abs(ended.destroyed_at - last_beat) < timedelta(milliseconds=1)  # not until this restart
    assert contract_workdirs(contract.id) == []


async def test_a_contract_without_a_worker_ends_failed_once_no_rent_can_be_under_way(
    market: GpuMarket, account: Account
) -> None:
    young = await market.contracts.add(local_contract(account.user_id, None, status="provisioning"))
    old = await market.contracts.add(
        local_contract(
            account.user_id,
            None,
            created_at=datetime.now(UTC) - timedelta(seconds=RENT_GRACE_S + 1),
            status="provisioning",
        )
    )
    assert [c.id for c in await market.end_leftover_local()] == [old.id]
    assert (await stored(market, account.user_id, young.id)).status == "provisioning"
    ended = await stored(market, account.user_id, old.id)
    assert ended.status == "failed" and "nothing is charged" in (ended.status_message or "")


async def test_a_server_that_stops_ends_the_contracts_of_its_workers(settings: Settings) -> None:
    async with app_client(settings) as (_, client):
        owner = await sign_up(client)
        rented = await client.post("/api/v1/gpu/instances/local/cpu0", json={}, headers=owner.headers)
        assert rented.status_code == 201, rented.text
        contract_id = rented.json()["contract_id"]
        stopping = datetime.now(UTC)
    stopped = datetime.now(UTC)
    assert contract_workdirs(contract_id) == []
    services = Services.create(settings)  # no lifespan: reads what the stopped server stored
    try:
        ended = await services.market.contracts.owned(owner.user_id, contract_id)
    finally:
        await services.close()
    assert ended.status == "destroyed" and SERVER_STOPPED in (ended.status_message or "")
    assert ended.destroyed_at is not None and stopping <= ended.destroyed_at <= stopped
