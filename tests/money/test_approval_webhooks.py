"""The approval webhook: each new approval is POSTed to the person's URL, signed as Stripe signs its
webhooks (Stripe's own verifier accepts it), in the background; a receiver that fails is tried again, a
slow one delays nobody. URLs follow the egress rules: a loopback or private address is refused when it is
set unless the operator allows the host, and a delivery checks again (a host no longer allowed gets
nothing)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiserve_mcp.core.settings import Settings
from aiserve_mcp.money.approval_webhooks import ApprovalWebhookStore
from aiserve_mcp.storage.database import Database
from aiserve_mcp.traffic.approval_webhooks import ApprovalWebhooks
from aiserve_mcp.traffic.egress import isolated_client
from tests.conftest import Account, app_client, funded, serve
from tests.console.approving import agent_key, agent_rents, hold_everything
from tests.console.renting import renting


@dataclass
class Receiver:
    """A webhook receiver on loopback: keeps each POST, answers ``statuses`` in turn (then 200), and holds
    each answer until ``release`` is set when ``hold`` is true."""

    statuses: list[int] = field(default_factory=list)
    hold: bool = False
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def hook(self, request: Request) -> Response:
        self.posts.append((dict(request.headers), await request.body()))
        self.arrived.set()
        if self.hold:
            await self.release.wait()
        return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

    async def posted(self, count: int = 1) -> list[tuple[dict[str, str], bytes]]:
        async with asyncio.timeout(15):
            while len(self.posts) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.posts


@asynccontextmanager
async def receiving(**options: Any) -> AsyncIterator[Receiver]:
    receiver = Receiver(**options)
    async with serve(Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])) as url:
        receiver.url = f"{url}/hook"
        try:
            yield receiver
        finally:
            receiver.release.set()


def allowing_loopback(settings: Settings, **more: Any) -> Settings:
    return renting(settings, approval_webhook_allowed_hosts=["127.0.0.1"], **more)


async def set_webhook(http: httpx.AsyncClient, account: Account, url: str | None) -> httpx.Response:
    return await http.put("/api/v1/guardrails/approvals/webhook", json={"url": url}, headers=account.headers)


async def webhook_of(http: httpx.AsyncClient, account: Account) -> dict[str, Any]:
    answer = await http.get("/api/v1/guardrails/approvals/webhook", headers=account.headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert isinstance(body, dict)
    return body


async def last_outcome(http: httpx.AsyncClient, account: Account, other_than: str | None = None) -> str:
    """The outcome of the webhook's last delivery, once there is one (other than ``other_than``): polled
    for 15 s at most."""
    for _ in range(300):
        outcome = (await webhook_of(http, account))["last_outcome"]
        if outcome is not None and outcome != other_than:
            assert isinstance(outcome, str)
            return outcome
        await asyncio.sleep(0.05)
    raise TimeoutError("no delivery ended")


def verified(secret: str, body: bytes, header: str, tolerance_s: int = 300) -> bool:
    """The check a receiver makes (as in the README): the HMAC of "<t>.<body>" and a recent t."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) <= tolerance_s


async def test_a_new_approval_is_posted_to_the_webhook_signed_like_stripe(settings: Settings) -> None:
    async with receiving() as receiver, app_client(allowing_loopback(settings)) as (_, http):
        account = await funded(http, 100)
        agent = await agent_key(http, account)
        refused = await http.put(
            "/api/v1/guardrails/approvals/webhook", json={"url": receiver.url}, headers=agent
        )
        assert refused.status_code == 403  # an agent's key cannot redirect its person's approvals
        set_ = await set_webhook(http, account, receiver.url)
        assert set_.status_code == 200, set_.text
        secret = set_.json()["signing_secret"]
        assert secret.startswith("whsec_")
        shown = await webhook_of(http, account)
        assert shown["url"] == receiver.url and "signing_secret" not in shown and secret not in str(shown)

        await hold_everything(http, account)
        approval = await agent_rents(http, agent)
        ((headers, body),) = await receiver.posted()
        assert headers["aiserve-event"] == "approval.requested"
        assert headers["content-type"] == "application/json"
        event = json.loads(body)
        assert event["type"] == "approval.requested"
        assert event["approval"] == approval
        header = headers["aiserve-signature"]
        assert verified(secret, body, header)
        assert stripe.WebhookSignature.verify_header(body.decode(), header, secret, tolerance=300)
        assert not verified(secret, body.replace(b"cpu0", b"cpu1"), header)
        assert not verified("whsec_another", body, header)
        assert await last_outcome(http, account) == "delivered: HTTP 200"

        removed = await set_webhook(http, account, None)
        assert (removed.status_code, removed.json()["url"]) == (200, None)
        await agent_rents(http, agent, "cpu1")
        await asyncio.sleep(0.5)
        assert len(receiver.posts) == 1


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("https://127.0.0.1/hook", 403),
        ("https://10.1.2.3/hook", 403),
        ("https://169.254.169.254/latest", 403),
        ("https://[::1]:8443/hook", 403),
        ("http://198.51.100.7/hook", 400),  # plain http is for allowed hosts only
        ("ftp://example.com/hook", 400),
        ("https://user:pw@example.com/hook", 400),
    ],
)
async def test_a_url_the_egress_rules_refuse_is_refused_when_it_is_set(
    settings: Settings, url: str, status: int
) -> None:
    async with app_client(renting(settings)) as (_, http):
        account = await funded(http, 10)
        answer = await set_webhook(http, account, url)
        assert answer.status_code == status, answer.text
        if status == 403:
            assert "AISERVE_APPROVAL_WEBHOOK_ALLOWED_HOSTS" in answer.json()["error"]
        assert (await webhook_of(http, account))["url"] is None


async def test_a_host_no_longer_allowed_gets_nothing(settings: Settings) -> None:
    async with receiving() as receiver, app_client(allowing_loopback(settings)) as (_, http):
        account = await funded(http, 10)
        assert (await set_webhook(http, account, receiver.url)).status_code == 200
        db = Database(settings.effective_database_url)
        unallowed = ApprovalWebhooks(ApprovalWebhookStore(db), isolated_client(), [], timeout_s=2, attempts=3)
        try:
            outcome = await unallowed.deliver(account.user_id, {"id": "apr_0"})
        finally:
            await unallowed.aclose()
            await db.dispose()
        assert outcome is not None and outcome.startswith("not sent: '127.0.0.1' is at a loopback")
        assert receiver.posts == []
        assert (await webhook_of(http, account))["last_outcome"] == outcome


async def test_a_slow_receiver_delays_no_call(settings: Settings) -> None:
    slow = allowing_loopback(settings, approval_webhook_timeout_s=1.5, approval_webhook_attempts=1)
    async with receiving(hold=True) as receiver, app_client(slow) as (_, http):
        account = await funded(http, 100)
        assert (await set_webhook(http, account, receiver.url)).status_code == 200
        await hold_everything(http, account)
        agent = await agent_key(http, account)
        started = time.perf_counter()
        await agent_rents(http, agent)
        assert time.perf_counter() - started < 1.0
        await receiver.posted()  # it is waiting on the receiver meanwhile
        assert await last_outcome(http, account) == "no answer within 1.5 s"


async def test_a_failing_receiver_is_tried_again_a_bounded_number_of_times(settings: Settings) -> None:
    retrying = allowing_loopback(settings, approval_webhook_attempts=2)
    async with receiving(statuses=[503, 500, 500]) as receiver, app_client(retrying) as (_, http):
        account = await funded(http, 100)
        assert (await set_webhook(http, account, receiver.url)).status_code == 200
        await hold_everything(http, account)
        agent = await agent_key(http, account)
        await agent_rents(http, agent)
        assert await last_outcome(http, account) == "answered HTTP 500"
        assert len(receiver.posts) == 2  # 503, then 500: two attempts, no more
        await agent_rents(http, agent, "cpu1")  # the receiver answers 500, then 200
        await receiver.posted(4)
        first, second = (json.loads(body)["approval"]["id"] for _, body in receiver.posts[2:])
        assert first == second
        assert await last_outcome(http, account, other_than="answered HTTP 500") == "delivered: HTTP 200"
