"""Approvals for the console's and the webhook's tests: an account whose policy holds every money-moving
call, and an agent (an API key with the default scopes) whose rent waits for its person."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Account, api_key


async def hold_everything(http: httpx.AsyncClient, account: Account) -> None:
    """Set ``account``'s approval policy to ``always``."""
    answer = await http.put(
        "/api/v1/guardrails/approvals/policy", json={"mode": "always"}, headers=account.headers
    )
    assert answer.status_code == 200, answer.text


async def agent_key(http: httpx.AsyncClient, account: Account) -> dict[str, str]:
    """Headers of a new API key of ``account`` named "agent" (default scopes: no guardrails:admin)."""
    return {"Authorization": f"Bearer {await api_key(http, account, name='agent')}"}


async def agent_rents(http: httpx.AsyncClient, agent: dict[str, str], offer: str = "cpu0") -> dict[str, Any]:
    """The agent asks to rent the local ``offer`` for an hour; the pending approval it is answered with."""
    asked = await http.post(f"/api/v1/gpu/instances/local/{offer}", json={"duration_hours": 1}, headers=agent)
    assert asked.status_code == 202, asked.text
    approval = asked.json()["approval"]
    assert approval["status"] == "pending"
    assert isinstance(approval, dict)
    return approval


async def active_contracts(http: httpx.AsyncClient, account: Account) -> list[dict[str, Any]]:
    listed = await http.get("/api/v1/gpu/contracts", params={"active": "true"}, headers=account.headers)
    assert listed.status_code == 200, listed.text
    contracts = listed.json()["contracts"]
    assert isinstance(contracts, list)
    return contracts
