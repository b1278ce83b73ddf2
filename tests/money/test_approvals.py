"""Approval policies and approvals in the money feature: which calls a policy catches, who may loosen one,
and an approval's life (pending, claimed once, executed or failed, denied, expired), on the running
app's database and event bus."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import pytest
from starlette.applications import Starlette

from aiserve_mcp.core.errors import ApprovalRequired, Forbidden, NotFound, error_body
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.money.approvals import NEVER, ApprovalService, Policy, Quote, dollars
from aiserve_mcp.money.guardrails import key_scope, user_scope
from tests.conftest import sign_up

RENT = Quote(Decimal("4.8"), "Rent 1x RTX 4090 on vastai at $1.60/h for 3 h ($4.80)")


def agent(user_id: str, key_id: str = "key-1") -> Principal:
    """A key made without naming scopes: every scope but guardrails:admin and admin."""
    scopes = frozenset({"gpu:write", "guardrails:read", "guardrails:write"})
    return Principal(user_id, "a@example.com", False, "api_key", scopes=scopes, api_key_id=key_id)


def person(user_id: str) -> Principal:
    return Principal(user_id, "a@example.com", False, "jwt", session_id="s-1")


def service_of(app: Starlette) -> ApprovalService:
    approvals = app.state.services.approvals
    assert isinstance(approvals, ApprovalService)
    return approvals


async def held(approvals: ApprovalService, principal: Principal, quote: Quote = RENT) -> ApprovalRequired:
    with pytest.raises(ApprovalRequired) as raised:
        await approvals.gate(
            principal, "rent_gpu_instance", {"provider": "vastai", "duration_hours": 3}, quote
        )
    return raised.value


def test_what_each_mode_catches_and_what_loosens() -> None:
    above = Policy("above", Decimal(5))
    assert not NEVER.catches(Decimal(1000)) and Policy("always").catches(Decimal(0))
    assert above.catches(Decimal("5.01")) and not above.catches(Decimal(5))
    assert NEVER.looser_than(above) and above.looser_than(Policy("always"))
    assert Policy("above", Decimal(6)).looser_than(above) and not Policy("above", Decimal(4)).looser_than(
        above
    )
    assert not Policy("always").looser_than(NEVER)
    assert [dollars(Decimal(x)) for x in ("4.8", "0.125", "1600")] == ["$4.80", "$0.125", "$1,600.00"]


async def test_loosening_needs_guardrails_admin_and_tightening_does_not(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    approvals = service_of(app)
    owner = await sign_up(client)
    scope = [user_scope(owner.user_id)]
    key = agent(owner.user_id)
    assert await approvals.set_policy(key, scope, Policy("above", Decimal(10))) == Policy(
        "above", Decimal(10)
    )
    await approvals.set_policy(key, scope, Policy("above", Decimal(5)))
    await approvals.set_policy(key, scope, Policy("always"))
    for looser in (Policy("above", Decimal(5)), NEVER):
        with pytest.raises(Forbidden) as refused:
            await approvals.set_policy(key, scope, looser)
        assert refused.value.details == {"required_scope": "guardrails:admin"}
    assert await approvals.policy(scope[0]) == Policy("always")
    assert await approvals.set_policy(person(owner.user_id), scope, NEVER) == NEVER  # a login holds it
    assert await approvals.policy(scope[0]) == NEVER and not await approvals.watches(key)


async def test_the_users_policy_and_the_credentials_own_both_apply(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    approvals = service_of(app)
    owner = await sign_up(client)
    key, login = agent(owner.user_id), person(owner.user_id)
    await approvals.gate(key, "rent_gpu_instance", {}, RENT)  # no policy: nothing held
    await approvals.set_policy(key, [key_scope("key-1")], Policy("above", Decimal(1)))
    await approvals.gate(login, "rent_gpu_instance", {}, RENT)  # the key's policy binds the key alone
    await approvals.gate(key, "record_spending", {"amount": 0.5}, Quote(Decimal("0.5"), "Record $0.50"))
    pending = await held(approvals, key)
    approval = error_body(pending)["approval"]
    assert approval == error_body(pending)["details"]["approval"] and pending.approval_id == approval["id"]
    assert approval["status"] == "pending" and approval["amount"] == 4.8
    assert approval["description"] == RENT.description and approval["action"] == "rent_gpu_instance"
    assert approval["url"].endswith(f"/console/approvals/{approval['id']}")
    assert "this credential's approval policy" in pending.message
    await approvals.set_policy(login, [user_scope(owner.user_id)], Policy("always"))
    assert "your account's" in (await held(approvals, login)).message
    record = await approvals.get(owner.user_id, approval["id"])
    assert record.requested_by["api_key_id"] == "key-1" and record.requester().api_key_id == "key-1"
    assert [r.status for r in await approvals.list(owner.user_id, None, 10, 0)] == ["pending", "pending"]


async def test_one_claim_of_many_concurrent_ones_wins_and_the_outcome_is_kept(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    approvals = service_of(app)
    owner = await sign_up(client)
    await approvals.set_policy(person(owner.user_id), [user_scope(owner.user_id)], Policy("always"))
    events = app.state.services.events.subscribe(owner.user_id, frozenset({"approvals"}))
    await app.state.services.events.ready()
    approval_id = (await held(approvals, agent(owner.user_id))).approval_id
    claims = await asyncio.gather(*(approvals.claim(owner.user_id, approval_id) for _ in range(5)))
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1 and winners[0].status == "executing"
    done = await approvals.finish(approval_id, result={"contract_id": "ctr_1"}, error=None)
    assert done.status == "executed" and done.result == {"contract_id": "ctr_1"} and done.decided_at
    assert await approvals.claim(owner.user_id, approval_id) is None
    assert (await approvals.deny(owner.user_id, approval_id)).status == "executed"
    seen = [await asyncio.wait_for(events.next(), 5) for _ in range(3)]
    assert [(e.type, e.data["status"]) for e in seen] == [
        ("approval.requested", "pending"),
        ("approval.decided", "executing"),
        ("approval.decided", "executed"),
    ]
    failing = (await held(approvals, agent(owner.user_id))).approval_id
    assert await approvals.claim(owner.user_id, failing) is not None
    failed = await approvals.finish(failing, result=None, error={"code": "CONFLICT", "error": "gone"})
    assert failed.status == "failed" and failed.error == {"code": "CONFLICT", "error": "gone"}


async def test_denied_expired_and_other_users_approvals(app: Starlette, client: httpx.AsyncClient) -> None:
    services = app.state.services
    approvals = ApprovalService(services.db, services.events, ttl_s=0.2, base_url="https://aiserve.test")
    owner, stranger = await sign_up(client), await sign_up(client)
    await approvals.set_policy(person(owner.user_id), [user_scope(owner.user_id)], Policy("always"))
    denied = (await held(approvals, agent(owner.user_id))).approval_id
    assert (await approvals.deny(owner.user_id, denied)).status == "denied"
    assert await approvals.claim(owner.user_id, denied) is None
    expiring = await held(approvals, agent(owner.user_id))
    assert (
        expiring.details["approval"]["url"]
        == f"https://aiserve.test/console/approvals/{expiring.approval_id}"
    )
    await asyncio.sleep(0.3)
    assert await approvals.claim(owner.user_id, expiring.approval_id) is None
    expired = await approvals.get(owner.user_id, expiring.approval_id)
    assert expired.status == "expired" and expired.result is None and expired.decided_at is not None
    assert (await approvals.deny(owner.user_id, expiring.approval_id)).status == "expired"
    assert [r.id for r in await approvals.list(owner.user_id, "expired", 10, 0)] == [expiring.approval_id]
    for attempt in (
        approvals.get(stranger.user_id, denied),
        approvals.claim(stranger.user_id, expiring.approval_id),
        approvals.deny(stranger.user_id, denied),
    ):
        with pytest.raises(NotFound):
            await attempt
