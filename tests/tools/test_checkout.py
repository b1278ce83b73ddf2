"""``create_checkout_link`` through MCP against a served app and the local Stripe: the link an agent hands
to its person, the signed ``checkout.session.*`` webhooks that follow the payment (delivered by the local
Stripe over HTTP), and what is refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.rest_compat.endpoint import WEBHOOK_PATH
from tests.conftest import Account, api_key, free_port, serve, sign_up
from tests.fakes.stripe_api.checkout import pay_session, settle_async_payment
from tests.fakes.stripe_api.events import deliver, signed_event, stripe_event
from tests.fakes.stripe_api.server import stripe_app
from tests.fakes.stripe_api.state import API_KEY, StripeState
from tests.mcp_clients import mcp_client

WEBHOOK_SECRET = "whsec_test_checkout_0123456789"


@dataclass
class Shop:
    """The served app (its public address ``url``), the local Stripe it pays through, and a customer."""

    url: str
    stripe: StripeState
    stripe_url: str
    http: httpx.AsyncClient
    account: Account

    async def link(self, credential: str | None = None, **arguments: Any) -> tuple[bool, dict[str, Any]]:
        """Call ``create_checkout_link`` as an agent: (refused, its structured result or error body)."""
        async with mcp_client(self.url, credential or self.account.access_token) as client:
            answer = await client.call_tool("create_checkout_link", arguments)
        [content] = answer.content
        return bool(answer.is_error), json.loads(content.text)  # type: ignore[union-attr]

    async def ledger(self) -> dict[str, Any]:
        listed = await self.http.get("/api/v1/billing/transactions", headers=self.account.headers)
        assert listed.status_code == 200, listed.text
        body: dict[str, Any] = listed.json()
        return body


@pytest.fixture
async def shop(settings: Settings) -> AsyncIterator[Shop]:
    stripe = StripeState(webhook_secret=WEBHOOK_SECRET)
    async with serve(stripe_app(stripe)) as stripe_url:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        configured = settings.model_copy(
            update={
                "stripe_api_key": SecretStr(API_KEY),
                "stripe_api_base": stripe_url,
                "stripe_webhook_secret": SecretStr(WEBHOOK_SECRET),
                "public_url": url,
            }
        )
        async with serve(create_app(configured), port), httpx.AsyncClient(base_url=url, timeout=30) as http:
            stripe.webhook_url = url + WEBHOOK_PATH
            yield Shop(url, stripe, stripe_url, http, await sign_up(http))


async def test_an_agent_gets_a_link_its_person_pays_and_the_credits_arrive_once(shop: Shop) -> None:
    refused, link = await shop.link(amount_usd=25, idempotency_key="buy-1")
    assert not refused, link
    session_id = link["checkout_session_id"]
    assert link["url"] == f"https://checkout.stripe.com/c/pay/{session_id}" and link["url"] in link["message"]
    assert (link["amount"], link["currency"], link["sandbox"]) == (25.0, "USD", False)
    assert "give this link to your person" in link["message"].lower()
    session = shop.stripe.sessions[session_id]
    assert session["success_url"] == f"{shop.url}/console/credits?checkout=success"
    assert session["cancel_url"] == f"{shop.url}/console/credits?checkout=cancelled"
    assert session["metadata"] == {"user_id": shop.account.user_id}
    assert (session["client_reference_id"], session["customer_email"]) == (
        shop.account.user_id,
        shop.account.email,
    )
    pending = await shop.ledger()
    assert pending["credits"] == 0.0
    assert [(t["id"], t["status"]) for t in pending["transactions"]] == [
        (link["transaction_id"], "requires_action")
    ]

    _, again = await shop.link(amount_usd=25, idempotency_key="buy-1")
    assert again["checkout_session_id"] == session_id and len(shop.stripe.sessions) == 1

    delivered = await pay_session(shop.stripe, session_id)
    assert delivered is not None and delivered.status_code == 200, delivered and delivered.text
    assert delivered.json() == {"received": True, "duplicate": False, "settled": link["transaction_id"]}
    assert (await shop.ledger())["credits"] == 25.0

    completed = stripe_event(shop.stripe.sessions[session_id], "checkout.session.completed")
    replays = await asyncio.gather(*(deliver(shop.stripe, completed) for _ in range(8)))
    fresh = await asyncio.gather(
        *(
            deliver(shop.stripe, stripe_event(shop.stripe.sessions[session_id], completed["type"]))
            for _ in range(8)
        )
    )
    assert {r.status_code for r in [*replays, *fresh] if r is not None} == {200}
    assert sorted(r.json()["duplicate"] for r in replays if r is not None) == [False] + [True] * 7
    ledger = await shop.ledger()
    assert ledger["credits"] == 25.0
    assert [(t["status"], t["amount"]) for t in ledger["transactions"]] == [("succeeded", 25.0)]


async def test_a_payment_that_settles_later_is_credited_when_it_does(shop: Shop) -> None:
    _, bank = await shop.link(amount_usd=40)
    await pay_session(shop.stripe, bank["checkout_session_id"], settles_later=True)
    assert [t["status"] for t in (await shop.ledger())["transactions"]] == ["processing"]
    assert (await shop.ledger())["credits"] == 0.0
    await settle_async_payment(shop.stripe, bank["checkout_session_id"], succeeded=True)
    assert (await shop.ledger())["credits"] == 40.0

    _, bounced = await shop.link(amount_usd=10)
    await pay_session(shop.stripe, bounced["checkout_session_id"], settles_later=True)
    await settle_async_payment(shop.stripe, bounced["checkout_session_id"], succeeded=False)
    _, expiring = await shop.link(amount_usd=5)
    async with httpx.AsyncClient(base_url=shop.stripe_url) as stripe:
        expired = await stripe.post(
            f"/v1/checkout/sessions/{expiring['checkout_session_id']}/expire",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    assert expired.status_code == 200 and expired.json()["status"] == "expired"
    statuses = {t["id"]: t["status"] for t in (await shop.ledger())["transactions"]}
    assert statuses[bounced["transaction_id"]] == statuses[expiring["transaction_id"]] == "failed"
    assert (await shop.ledger())["credits"] == 40.0
    assert [kind for kind, status in shop.stripe.deliveries if status != 200] == []


async def test_links_stripe_or_the_limits_would_refuse_are_refused(shop: Shop) -> None:
    for amount in (0.49, 100_000.01, 0, -3, "25"):
        refused, error = await shop.link(amount_usd=amount)
        assert refused and error["code"] == "VALIDATION_ERROR", (amount, error)
    assert shop.stripe.sessions == {}
    await shop.link(amount_usd=12, idempotency_key="same")
    refused, conflict = await shop.link(amount_usd=13, idempotency_key="same")
    assert refused and conflict["code"] == "CONFLICT"
    reader = await api_key(shop.http, shop.account, scopes=["billing:read"])
    refused, forbidden = await shop.link(reader, amount_usd=12)
    assert refused and forbidden["code"] == "FORBIDDEN", forbidden
    buyer = await api_key(shop.http, shop.account, scopes=["billing:write"])
    refused, bought = await shop.link(buyer, amount_usd=12)
    assert not refused and bought["checkout_session_id"] in shop.stripe.sessions


async def test_foreign_and_forged_checkout_events_credit_nothing(shop: Shop) -> None:
    _, link = await shop.link(amount_usd=25)
    session = dict(
        shop.stripe.sessions[link["checkout_session_id"]], status="complete", payment_status="paid"
    )

    async def post(event: dict[str, Any], secret: str = WEBHOOK_SECRET) -> httpx.Response:
        body, header = signed_event(secret, event)
        return await shop.http.post(WEBHOOK_PATH, content=body, headers={"Stripe-Signature": header})

    foreign = {**session, "id": "cs_test_other", "metadata": {"user_id": "someone-elsewhere"}}
    answer = await post(stripe_event(foreign, "checkout.session.completed"))
    assert answer.status_code == 200 and answer.json()["settled"] is None
    unnamed = {**session, "id": "cs_test_link", "metadata": {}, "client_reference_id": None}
    assert (await post(stripe_event(unnamed, "checkout.session.completed"))).json()["settled"] is None
    too_much = {**session, "amount_total": 100_000 * 100 + 1}
    refused = await post(stripe_event(too_much, "checkout.session.completed"))
    assert refused.status_code == 400 and refused.json()["code"] == "VALIDATION_ERROR"
    euros = {**session, "currency": "eur"}
    assert (await post(stripe_event(euros, "checkout.session.completed"))).status_code == 400
    forged = await post(stripe_event(session, "checkout.session.completed"), secret="whsec_someone_else")
    assert forged.status_code == 400
    assert (await shop.ledger())["credits"] == 0.0
