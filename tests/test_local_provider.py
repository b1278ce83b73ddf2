"""This host as a provider, end to end: reserve local workers, reach them, destroy them, processes gone."""

from __future__ import annotations

import os

import httpx
import pytest

from aiserve_mcp.settings import Settings
from tests.conftest import Account, app_client, sign_up


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
