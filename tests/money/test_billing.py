"""Money through the API: Stripe payments and webhooks, spending guardrails (including the race), the
ledger's invariants, and what renting GPUs costs."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlalchemy import func, select

from aiserve_mcp.accounts.tables import User
from aiserve_mcp.core.errors import InsufficientCredits
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.money.ledger import Ledger
from aiserve_mcp.money.tables import LedgerAccount, LedgerEntry
from aiserve_mcp.storage.database import Database
from aiserve_mcp.storage.migrate import upgrade
from tests.conftest import Account, api_key, app_client, serve, sign_up
from tests.fakes.stripe_api.events import signed_event, stripe_event
from tests.fakes.stripe_api.server import stripe_app
from tests.fakes.stripe_api.state import API_KEY, StripeState
from tests.fakes.vastai_server import API_KEY as VAST_KEY
from tests.fakes.vastai_server import VastAiState, make_offers, vastai_app

WEBHOOK_SECRET = "whsec_test_secret"


@dataclass
class Billing:
    stripe: StripeState
    vast: VastAiState
    client: httpx.AsyncClient


@pytest.fixture
async def billing(settings: Settings) -> AsyncIterator[Billing]:
    stripe, vast = StripeState(), VastAiState(offers=make_offers(4, seed=5), shows_until_running=0)
    for offer in vast.offers:
        offer.update(
            verified=True,
            rentable=True,
            rented=False,
            external=False,
            dph_base=0.5,
            dph_total=0.5,
            storage_cost=0.0,
        )
    async with serve(stripe_app(stripe)) as stripe_url, serve(vastai_app(vast)) as vast_url:
        configured = settings.model_copy(
            update={
                "stripe_api_key": SecretStr(API_KEY),
                "stripe_api_base": stripe_url,
                "stripe_webhook_secret": SecretStr(WEBHOOK_SECRET),
                "vastai_url": vast_url,
                "vastai_api_key": SecretStr(VAST_KEY),
                "rate_limit": 100_000,
            }
        )
        async with app_client(configured) as (_, client):
            yield Billing(stripe, vast, client)


async def pay(
    client: httpx.AsyncClient, account: Account, amount: float, method: str, **headers: str
) -> httpx.Response:
    return await client.post(
        "/api/v1/billing/payment",
        json={
            "amount": amount,
            "currency": "USD",
            "payment_preference": {"type": "card", "payment_method": method},
        },
        headers=account.headers | headers,
    )


async def credits(client: httpx.AsyncClient, account: Account) -> tuple[float, float]:
    body = (await client.get("/api/v1/billing/transactions", headers=account.headers)).json()
    return body["credits"], body["held"]


async def test_a_stripe_payment_adds_credits_once_per_idempotency_key(billing: Billing) -> None:
    owner = await sign_up(billing.client)
    first = await pay(billing.client, owner, 25, "pm_card_visa", **{"Idempotency-Key": "order-7"})
    assert first.status_code == 201, first.text
    tx = first.json()["transaction"]
    assert tx["status"] == "succeeded" and tx["amount"] == 25.0 and tx["currency"] == "USD"
    assert tx["sandbox"] is False and tx["id"].startswith("txn_")
    again = await pay(billing.client, owner, 25, "pm_card_visa", **{"Idempotency-Key": "order-7"})
    assert again.json()["transaction"]["id"] == tx["id"]
    assert len(billing.stripe.created) == 1
    assert billing.stripe.created[0]["amount"] == 2500 and billing.stripe.created[0]["currency"] == "usd"
    assert await credits(billing.client, owner) == (25.0, 0.0)
    export = (await billing.client.get("/api/v1/user/export", headers=owner.headers)).json()
    assert export["credits"] == [{"currency": "USD", "available": 25.0, "held": 0.0}]
    assert [t["id"] for t in export["transactions"]] == [tx["id"]]


async def test_a_payment_cannot_take_the_idempotency_key_of_a_checkout_payment(billing: Billing) -> None:
    owner = await sign_up(billing.client)
    taken = await pay(billing.client, owner, 25, "pm_card_visa", **{"Idempotency-Key": "checkout:cs_test_1"})
    assert taken.status_code == 400, taken.text
    assert taken.json()["code"] == "VALIDATION_ERROR" and "idempotency_key" in taken.text
    assert billing.stripe.created == [] and await credits(billing.client, owner) == (0.0, 0.0)


async def test_the_api_references_card_token_body_pays_through_stripe(billing: Billing) -> None:
    owner = await sign_up(billing.client)
    answer = await billing.client.post(
        "/api/v1/billing/payment",
        json={
            "amount": 100.00,
            "currency": "USD",
            "provider": "stripe",
            "payment_preference": {"type": "card", "card_token": "tok_visa"},
        },
        headers=owner.headers | {"X-Preferred-Payment": "card", "X-Billing": "stripe"},
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["transaction"]["status"] == "succeeded"
    [sent] = [r.params for r in billing.stripe.requests]
    assert sent["payment_method_data[type]"] == "card"
    assert sent["payment_method_data[card][token]"] == "tok_visa"
    assert "payment_method" not in sent  # Stripe refuses a token there with 400
    assert await credits(billing.client, owner) == (100.0, 0.0)


async def test_payments_stripe_would_refuse_are_refused_before_it(billing: Billing) -> None:
    owner = await sign_up(billing.client)
    small = await pay(billing.client, owner, 0.49, "pm_card_visa")
    assert small.status_code == 400 and small.json()["code"] == "VALIDATION_ERROR", small.text
    assert "0.50 USD" in small.json()["error"]
    for field, reference in (("payment_method", "card_1AbC"), ("card_token", "src_1AbC")):
        odd = await billing.client.post(
            "/api/v1/billing/payment",
            json={"amount": 5, "payment_preference": {field: reference}},
            headers=owner.headers,
        )
        assert odd.status_code == 400 and odd.json()["code"] == "VALIDATION_ERROR", odd.text
    assert billing.stripe.requests == []
    assert await credits(billing.client, owner) == (0.0, 0.0)
    assert (await pay(billing.client, owner, 0.5, "pm_card_visa")).status_code == 201


async def test_a_declined_card_adds_nothing(billing: Billing) -> None:
    owner = await sign_up(billing.client)
    declined = await pay(billing.client, owner, 25, "pm_card_chargeDeclined")
    assert declined.status_code == 402 and declined.json()["code"] == "PAYMENT_DECLINED"
    listed = (await billing.client.get("/api/v1/billing/transactions", headers=owner.headers)).json()
    assert [t["status"] for t in listed["transactions"]] == ["failed"] and listed["credits"] == 0.0


async def test_card_numbers_never_reach_the_server(billing: Billing) -> None:
    owner = await sign_up(billing.client)
    for field in ("card_token", "payment_method"):
        answer = await billing.client.post(
            "/api/v1/billing/payment",
            json={"amount": 5, "payment_preference": {field: "4242 4242 4242 4242"}},
            headers=owner.headers,
        )
        assert answer.status_code == 400 and "card numbers" in answer.text
    number = await billing.client.post(
        "/api/v1/billing/payment",
        json={"amount": 5, "payment_preference": {"card_number": "4242424242424242"}},
        headers=owner.headers,
    )
    assert number.status_code == 400
    for amount in (-5, 0, 10**9, "NaN"):
        bad = await billing.client.post(
            "/api/v1/billing/payment",
            json={"amount": amount, "payment_preference": {"payment_method": "pm_card_visa"}},
            headers=owner.headers,
        )
        assert bad.status_code == 400, amount
    assert billing.stripe.created == []


async def test_3d_secure_payments_are_settled_by_the_signed_webhook(billing: Billing) -> None:
    owner = await sign_up(billing.client)
    pending = await pay(billing.client, owner, 40, "pm_card_threeDSecure2Required")
    assert pending.status_code == 201, pending.text
    tx = pending.json()["transaction"]
    assert tx["status"] == "requires_action" and tx["next_action_url"]
    assert await credits(billing.client, owner) == (0.0, 0.0)

    intent = billing.stripe.complete(billing.stripe.created[0]["id"])
    payload, signature = signed_event(WEBHOOK_SECRET, stripe_event(intent, "payment_intent.succeeded"))

    async def deliver(body: bytes, header: str) -> httpx.Response:
        return await billing.client.post(
            "/api/v1/billing/webhook", content=body, headers={"Stripe-Signature": header}
        )

    tampered = payload.replace(b'"succeeded"', b'"succeeded" ', 1)
    assert (await deliver(tampered, signature)).status_code == 400
    stale_body, stale = signed_event(
        WEBHOOK_SECRET, stripe_event(intent, "payment_intent.succeeded"), int(time.time()) - 3600
    )
    assert (await deliver(stale_body, stale)).status_code == 400
    assert (await billing.client.post("/api/v1/billing/webhook", content=payload)).status_code == 400
    assert await credits(billing.client, owner) == (0.0, 0.0)

    settled = await deliver(payload, signature)
    assert settled.status_code == 200 and settled.json() == {
        "received": True,
        "duplicate": False,
        "settled": tx["id"],
    }
    duplicate = await deliver(payload, signature)
    assert duplicate.json()["duplicate"] is True
    assert await credits(billing.client, owner) == (40.0, 0.0)


async def test_payments_need_a_gateway(settings: Settings) -> None:
    async with app_client(settings) as (_, client):
        owner = await sign_up(client)
        answer = await pay(client, owner, 5, "pm_card_visa")
        assert answer.status_code == 503 and "AISERVE_STRIPE_API_KEY" in answer.json()["error"]


async def set_limits(
    client: httpx.AsyncClient, account: Account, limits: Mapping[str, object], **extra: object
) -> httpx.Response:
    return await client.put(
        "/api/v1/guardrails/limits", json={"limits": limits, **extra}, headers=account.headers
    )


async def test_concurrent_spends_never_overrun_a_limit(billing: Billing) -> None:
    owner = await sign_up(billing.client)
    assert (await set_limits(billing.client, owner, {"hourly": 10})).status_code == 200

    async def record() -> int:
        answer = await billing.client.post(
            "/api/v1/guardrails/spending/record", json={"amount": 0.02}, headers=owner.headers
        )
        return answer.status_code

    statuses = await asyncio.gather(*(record() for _ in range(1000)))
    assert statuses.count(200) == 500 and statuses.count(402) == 500
    spending = (await billing.client.get("/api/v1/guardrails/spending", headers=owner.headers)).json()
    hourly = next(w for w in spending["windows"] if w["window"] == "hourly")
    assert Decimal(str(hourly["spent"])) == Decimal("10.00")


async def test_a_spend_over_any_window_is_refused_and_recorded_nowhere(billing: Billing) -> None:
    owner = await sign_up(billing.client)
    await set_limits(billing.client, owner, {"hourly": 100, "daily": 50})
    refused = await billing.client.post(
        "/api/v1/guardrails/spending/record", json={"amount": 60}, headers=owner.headers
    )
    assert refused.status_code == 402
    body = refused.json()
    assert body["code"] == "SPENDING_LIMIT" and body["allowed"] is False
    assert [(v["window"], v["spent"], v["limit"]) for v in body["violations"]] == [("daily", 60.0, 50.0)]
    spending = (await billing.client.get("/api/v1/guardrails/spending", headers=owner.headers)).json()
    assert all(w["spent"] == 0 for w in spending["windows"])

    check = await billing.client.post(
        "/api/v1/guardrails/spending/check", json={"estimated_cost": 20}, headers=owner.headers
    )
    assert check.status_code == 200 and check.json()["allowed"] is True
    recorded = await billing.client.post(
        "/api/v1/guardrails/spending/record",
        json={"amount": 20, "idempotency_key": "r1"},
        headers=owner.headers,
    )
    assert (
        recorded.json()["message"] == "Spending recorded successfully" and recorded.json()["new_total"] == 20
    )
    repeat = await billing.client.post(
        "/api/v1/guardrails/spending/record",
        json={"amount": 20, "idempotency_key": "r1"},
        headers=owner.headers,
    )
    assert repeat.json()["duplicate"] is True
    over = await billing.client.post(
        "/api/v1/guardrails/spending/check", json={"estimated_cost": 40}, headers=owner.headers
    )
    assert over.status_code == 402 and over.json()["violations"][0]["spent"] == 60
    spending = (await billing.client.get("/api/v1/guardrails/spending", headers=owner.headers)).json()
    assert spending["window_name"] == "daily" and spending["percentage_used"] == 40.0


async def test_an_agent_key_cannot_lift_its_own_limits(billing: Billing) -> None:
    owner = await sign_up(billing.client)
    key = await api_key(billing.client, owner, scopes=["guardrails:read", "guardrails:write", "account:read"])
    agent = Account(owner.email, owner.user_id, key, "")
    key_id = (await billing.client.get("/api/v1/auth/apikeys", headers=owner.headers)).json()["api_keys"][0][
        "id"
    ]

    budget = await set_limits(billing.client, agent, {"hourly": 1}, api_key_id=key_id)
    assert budget.status_code == 200 and budget.json()["limits"] == [
        {"window": "hourly", "seconds": 3600, "limit": 1.0}
    ]
    spent = await billing.client.post(
        "/api/v1/guardrails/spending/record", json={"amount": 2}, headers=agent.headers
    )
    assert spent.status_code == 402 and spent.json()["violations"][0]["scope"] == "api_key"
    by_owner = await billing.client.post(
        "/api/v1/guardrails/spending/record", json={"amount": 2}, headers=owner.headers
    )
    assert by_owner.status_code == 200  # the key's budget binds the key, not its owner

    budgeted = await billing.client.post(
        "/api/v1/auth/apikey", json={"name": "agent-2", "budget": {"daily": 3}}, headers=owner.headers
    )
    second = Account(owner.email, owner.user_id, budgeted.json()["api_key"], "")
    over = await billing.client.post(
        "/api/v1/guardrails/spending/record", json={"amount": 4}, headers=second.headers
    )
    assert over.status_code == 402 and over.json()["violations"][0]["window"] == "daily"

    for limits, extra in (
        ({"hourly": 1000}, {}),
        ({"hourly": 5}, {"api_key_id": key_id}),
        ({"hourly": None}, {}),
    ):
        refused = await set_limits(billing.client, agent, limits, **extra)
        assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN", limits
    lower = await set_limits(billing.client, agent, {"hourly": 50})
    assert lower.status_code == 200
    reset = await billing.client.post("/api/v1/guardrails/spending/reset", json={}, headers=agent.headers)
    assert reset.status_code == 403
    by_login = await billing.client.post(
        "/api/v1/guardrails/spending/reset", json={"window_name": "hourly"}, headers=owner.headers
    )
    assert by_login.json() == {"message": "Spending reset successfully"}
    assert (await set_limits(billing.client, owner, {"72h": 300, "5m": 2})).status_code == 200
    bad = await set_limits(billing.client, owner, {"fortnightly": 3})
    assert bad.status_code == 400


async def test_renting_holds_the_cost_and_charges_only_what_ran(billing: Billing) -> None:
    owner = await sign_up(billing.client)
    await pay(billing.client, owner, 10, "pm_card_visa")
    cheap = sorted(billing.vast.offers, key=lambda o: o["id"])
    billing.vast.refuse_create.add(str(cheap[1]["id"]))
    refused = await billing.client.post(
        f"/api/v1/gpu/instances/vastai/{cheap[1]['id']}", json={"duration_hours": 2}, headers=owner.headers
    )
    assert refused.status_code == 409
    assert await credits(billing.client, owner) == (10.0, 0.0)  # held, then released: nothing charged

    rented = await billing.client.post(
        f"/api/v1/gpu/instances/vastai/{cheap[0]['id']}", json={"duration_hours": 2}, headers=owner.headers
    )
    assert rented.status_code == 201, rented.text
    assert await credits(billing.client, owner) == (9.0, 1.0)
    destroyed = await billing.client.delete(
        f"/api/v1/gpu/instances/vastai/{rented.json()['contract_id']}", headers=owner.headers
    )
    assert destroyed.status_code == 200
    available, held = await credits(billing.client, owner)
    assert held == 0.0 and 9.99 < available <= 10.0  # seconds of use, metered
    kinds = [
        t["kind"]
        for t in (await billing.client.get("/api/v1/billing/transactions", headers=owner.headers)).json()[
            "transactions"
        ]
    ]
    assert sorted(kinds) == sorted(["payment", "hold", "release", "hold", "charge", "release"]) or sorted(
        kinds
    ) == sorted(["payment", "hold", "release", "hold", "release"])

    billing.vast.refuse_create.add(str(cheap[2]["id"]))
    batch = await billing.client.post(
        "/api/v1/gpu/instances/batch",
        json={"vastai_count": 2, "config": {"duration_hours": 2}},
        headers=owner.headers,
    )
    body = batch.json()
    assert len(body["vastai_instances"]) == 2 and [e["offer_id"] for e in body["errors"]] == [
        str(cheap[2]["id"])
    ]
    available_after, held_after = await credits(billing.client, owner)
    assert held_after == 2.0 and available_after == pytest.approx(available - 2.0)  # only what runs is held

    too_long = await billing.client.post(
        f"/api/v1/gpu/instances/vastai/{cheap[2]['id']}", json={"duration_hours": 100}, headers=owner.headers
    )
    assert too_long.status_code == 402 and too_long.json()["code"] == "INSUFFICIENT_CREDITS"


@pytest.fixture(scope="module")
def ledger_db() -> str:
    path = Path(tempfile.mkdtemp()) / "ledger.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    return url


Op = tuple[str, int]
OPS = st.lists(
    st.tuples(
        st.sampled_from(["top_up", "hold", "settle", "release"]), st.integers(min_value=1, max_value=5000)
    ),
    max_size=25,
)


@hypothesis_settings(max_examples=25, deadline=None)
@given(ops=OPS)
def test_the_ledger_always_balances_and_never_goes_negative(ledger_db: str, ops: list[Op]) -> None:
    async def run() -> None:
        db = Database(ledger_db)
        ledger = Ledger(db)
        async with db.session() as session:
            user = User(email=f"{time.time_ns()}@example.com", password_hash="x")
            session.add(user)
        holds: list[str] = []
        for op, cents in ops:
            amount = Decimal(cents) / 100
            if op == "top_up":
                await ledger.payment(
                    user.id,
                    amount,
                    currency="USD",
                    gateway="sandbox",
                    provider_ref=f"p{time.time_ns()}",
                    status="succeeded",
                    idempotency_key=str(time.time_ns()),
                    description="t",
                )
            elif op == "hold":
                with contextlib.suppress(InsufficientCredits):
                    holds.append((await ledger.hold(user.id, amount, f"r{len(holds)}", "h")).id)
            elif holds:
                hold_id = holds.pop(0)
                await ledger.settle_hold(hold_id, amount if op == "settle" else Decimal(0), "s")
        async with db.session() as session:
            unbalanced = await session.scalar(
                select(func.count()).select_from(
                    select(LedgerEntry.transaction_id)
                    .group_by(LedgerEntry.transaction_id)
                    .having(func.sum(LedgerEntry.amount) != 0)
                    .subquery()
                )
            )
            negative = await session.scalar(
                select(func.count()).where(LedgerAccount.id.like("user:%"), LedgerAccount.balance < 0)
            )
            total = await session.scalar(select(func.sum(LedgerAccount.balance)))
        await db.dispose()
        assert unbalanced == 0 and negative == 0 and (total or 0) == 0

    anyio.run(run)


async def test_a_default_install_says_how_to_try_payments(
    client: httpx.AsyncClient, account: Account
) -> None:
    """No Stripe key and no sandbox: the 503 names both ways to turn payments on."""
    body = {"amount": 20, "payment_preference": {"type": "card", "card_token": "tok_visa"}}
    refused = await client.post("/api/v1/billing/payment", json=body, headers=account.headers)
    assert refused.status_code == 503 and refused.json()["code"] == "SERVICE_UNAVAILABLE"
    assert "AISERVE_STRIPE_API_KEY" in refused.text and "AISERVE_BILLING_SANDBOX=true" in refused.text
