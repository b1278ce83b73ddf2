"""A server for the console's GPU pages: this host's provider rents two CPU workers at ``PRICE`` USD per
hour, paid with credits bought through the sandbox gateway (``tests.conftest.funded``)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx

from aiserve_mcp.core.settings import Settings
from tests.conftest import Account

PRICE = Decimal("0.5")


def renting(settings: Settings, **more: Any) -> Settings:
    """``settings`` with sandbox payments and two local workers at ``PRICE`` an hour."""
    return settings.model_copy(
        update={"billing_sandbox": True, "local_cpu_slots": 2, "local_price_per_hour": PRICE, **more}
    )


async def rent_by_api(http: httpx.AsyncClient, account: Account, offer: str = "cpu0", hours: int = 1) -> str:
    """Rent the local ``offer`` through the REST API; its contract id."""
    rented = await http.post(
        f"/api/v1/gpu/instances/local/{offer}", json={"duration_hours": hours}, headers=account.headers
    )
    assert rented.status_code == 201, rented.text
    contract_id = rented.json()["contract_id"]
    assert isinstance(contract_id, str)
    return contract_id


async def contract_status(http: httpx.AsyncClient, account: Account, contract_id: str) -> str:
    answer = await http.get(f"/api/v1/gpu/contracts/{contract_id}", headers=account.headers)
    assert answer.status_code == 200, answer.text
    status = answer.json()["status"]
    assert isinstance(status, str)
    return status
