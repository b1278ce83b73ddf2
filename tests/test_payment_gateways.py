"""The Stripe gateway (official SDK) against a local Stripe API, and the development sandbox."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from aiserve_mcp.billing.gateways import (
    Charge,
    PaymentGateway,
    SandboxGateway,
    StripeGateway,
    WebhookRejected,
)
from aiserve_mcp.errors import (
    Conflict,
    NotFound,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
    ValidationFailed,
)
from tests.conftest import free_port, serve
from tests.fakes.stripe_server import API_KEY, StripeState, payment_intent_event, signed_event, stripe_app

WEBHOOK_SECRET = "whsec_test_aiserve_0123456789"
META = {"user": "u_1", "purpose": "credits"}


@dataclass
class Stripe:
    state: StripeState
    url: str
    gateway: StripeGateway


@pytest.fixture
async def stripe_api() -> AsyncIterator[Stripe]:
    state = StripeState()
    async with serve(stripe_app(state)) as url:
        gateway = StripeGateway(API_KEY, api_base=url, webhook_secret=WEBHOOK_SECRET)
        try:
            yield Stripe(state, url, gateway)
        finally:
            await gateway.aclose()


async def pay(gateway: PaymentGateway, payment_method: str, key: str, amount: int = 2500) -> Charge:
    return await gateway.charge(
        amount_minor=amount,
        currency="USD",
        payment_method=payment_method,
        idempotency_key=key,
        description="aiserve credits",
        metadata=META,
    )


async def test_successful_charge(stripe_api: Stripe) -> None:
    charge = await pay(stripe_api.gateway, "pm_card_visa", "k-success")
    assert charge.status == "succeeded"
    assert charge.provider_ref.startswith("pi_")
    assert (charge.amount_minor, charge.currency) == (2500, "usd")
    assert charge.failure_code is None and charge.next_action_url is None
    [intent] = stripe_api.state.created
    assert intent["id"] == charge.provider_ref
    assert intent["metadata"] == META
    assert intent["description"] == "aiserve credits"
    sent = stripe_api.state.requests[0].params
    assert sent["confirm"] == "true" and sent["currency"] == "usd" and sent["metadata[user]"] == "u_1"
    assert stripe_api.state.requests[0].idempotency_key == "k-success"
    again = await stripe_api.gateway.retrieve(charge.provider_ref)
    assert again == charge


async def test_declined_card_is_a_failed_charge(stripe_api: Stripe) -> None:
    charge = await pay(stripe_api.gateway, "pm_card_chargeDeclined", "k-decline")
    assert charge.status == "failed"
    assert charge.failure_code == "card_declined"
    assert charge.failure_message == "Your card was declined."
    [intent] = stripe_api.state.created
    assert charge.provider_ref == intent["id"]
    assert charge.amount_minor == 2500
    retrieved = await stripe_api.gateway.retrieve(charge.provider_ref)
    assert retrieved.status == "failed" and retrieved.failure_code == "card_declined"


async def test_three_d_secure_then_complete(stripe_api: Stripe) -> None:
    charge = await pay(stripe_api.gateway, "pm_card_threeDSecure2Required", "k-3ds")
    assert charge.status == "requires_action"
    assert charge.next_action_url is not None
    assert charge.next_action_url.startswith("https://hooks.stripe.com/3d_secure_2/hosted?")
    assert charge.provider_ref in charge.next_action_url
    assert stripe_api.state.requests[0].params["return_url"] == "https://aiserve.invalid/billing/return"
    assert (await stripe_api.gateway.retrieve(charge.provider_ref)).status == "requires_action"
    stripe_api.state.complete(charge.provider_ref)
    done = await stripe_api.gateway.retrieve(charge.provider_ref)
    assert done.status == "succeeded" and done.next_action_url is None


async def test_three_d_secure_failure_reads_as_failed(stripe_api: Stripe) -> None:
    charge = await pay(stripe_api.gateway, "pm_card_authenticationRequired", "k-3ds-fail")
    stripe_api.state.fail_authentication(charge.provider_ref)
    failed = await stripe_api.gateway.retrieve(charge.provider_ref)
    assert failed.status == "failed"
    assert failed.failure_code == "payment_intent_authentication_failure"


async def test_same_idempotency_key_charges_once(stripe_api: Stripe) -> None:
    first = await pay(stripe_api.gateway, "pm_card_visa", "k-once")
    second = await pay(stripe_api.gateway, "pm_card_visa", "k-once")
    assert second == first
    assert len(stripe_api.state.created) == 1
    assert [r.replayed for r in stripe_api.state.requests] == [False, True]
    declined = await pay(stripe_api.gateway, "pm_card_chargeDeclined", "k-decl-once")
    assert await pay(stripe_api.gateway, "pm_card_chargeDeclined", "k-decl-once") == declined
    assert len(stripe_api.state.created) == 2


async def test_reused_key_with_other_details_conflicts(stripe_api: Stripe) -> None:
    await pay(stripe_api.gateway, "pm_card_visa", "k-reuse", amount=1000)
    with pytest.raises(Conflict):
        await pay(stripe_api.gateway, "pm_card_visa", "k-reuse", amount=9000)
    assert len(stripe_api.state.created) == 1


async def test_wrong_api_key_is_misconfiguration(stripe_api: Stripe) -> None:
    bad_key = "sk_test_wrong_key_0123456789abcdef"
    gateway = StripeGateway(bad_key, api_base=stripe_api.url)
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            await pay(gateway, "pm_card_visa", "k-badkey")
    finally:
        await gateway.aclose()
    assert "misconfigured" in caught.value.message
    assert bad_key not in str(caught.value) and bad_key not in repr(caught.value.details)
    assert caught.value.details["http_status"] == 401
    assert stripe_api.state.created == []


async def test_server_errors_are_retried_then_upstream_failed(stripe_api: Stripe) -> None:
    stripe_api.state.fail_next = 3
    with pytest.raises(UpstreamFailed) as caught:
        await pay(stripe_api.gateway, "pm_card_visa", "k-500")
    assert caught.value.details["http_status"] == 500
    assert API_KEY not in str(caught.value)
    assert len(stripe_api.state.requests) == 3
    assert {r.idempotency_key for r in stripe_api.state.requests} == {"k-500"}
    assert stripe_api.state.created == []


async def test_one_server_error_is_retried_with_the_same_key(stripe_api: Stripe) -> None:
    stripe_api.state.fail_next = 1
    charge = await pay(stripe_api.gateway, "pm_card_visa", "k-retry")
    assert charge.status == "succeeded"
    assert [r.status_code for r in stripe_api.state.requests] == [500, 200]
    assert len(stripe_api.state.created) == 1


async def test_unreachable_and_slow_stripe() -> None:
    closed = StripeGateway(API_KEY, api_base=f"http://127.0.0.1:{free_port()}", max_network_retries=0)
    try:
        with pytest.raises(UpstreamFailed, match="cannot reach Stripe"):
            await pay(closed, "pm_card_visa", "k-unreachable")
    finally:
        await closed.aclose()
    state = StripeState(delay_s=1.0)
    async with serve(stripe_app(state)) as url:
        slow = StripeGateway(API_KEY, api_base=url, timeout_s=0.2, max_network_retries=0)
        try:
            with pytest.raises(UpstreamTimeout):
                await pay(slow, "pm_card_visa", "k-slow")
        finally:
            await slow.aclose()


async def test_unknown_payment_method_and_payment(stripe_api: Stripe) -> None:
    with pytest.raises(ValidationFailed) as caught:
        await pay(stripe_api.gateway, "pm_does_not_exist", "k-unknown-pm")
    assert caught.value.details["param"] == "payment_method"
    with pytest.raises(NotFound):
        await stripe_api.gateway.retrieve("pi_does_not_exist")
    with pytest.raises(ValidationFailed):
        await pay(stripe_api.gateway, "pm_card_visa", "k-zero", amount=0)
    assert stripe_api.state.requests[-1].path == "/v1/payment_intents/pi_does_not_exist"


async def test_webhook_valid_event_is_parsed(stripe_api: Stripe) -> None:
    charge = await pay(stripe_api.gateway, "pm_card_threeDSecure2Required", "k-wh")
    intent = stripe_api.state.complete(charge.provider_ref)
    payload, header = signed_event(WEBHOOK_SECRET, payment_intent_event(intent, "payment_intent.succeeded"))
    event = stripe_api.gateway.parse_webhook(payload, header)
    assert event.id.startswith("evt_")
    assert event.type == "payment_intent.succeeded"
    assert (event.provider_ref, event.status) == (charge.provider_ref, "succeeded")
    assert (event.amount_minor, event.currency) == (2500, "usd")
    assert stripe_api.gateway.parse_webhook(payload, header).id == event.id


async def test_webhook_failure_event(stripe_api: Stripe) -> None:
    charge = await pay(stripe_api.gateway, "pm_card_chargeDeclined", "k-wh-fail")
    intent = stripe_api.state.intents[charge.provider_ref]
    payload, header = signed_event(
        WEBHOOK_SECRET, payment_intent_event(intent, "payment_intent.payment_failed")
    )
    event = stripe_api.gateway.parse_webhook(payload, header)
    assert (event.status, event.failure_code) == ("failed", "card_declined")
    created = payment_intent_event(intent, "payment_intent.created")
    assert stripe_api.gateway.parse_webhook(*signed_event(WEBHOOK_SECRET, created)).status is None
    other = {
        "id": "evt_other",
        "object": "event",
        "type": "customer.created",
        "data": {"object": {"id": "cus_1"}},
    }
    unrelated = stripe_api.gateway.parse_webhook(*signed_event(WEBHOOK_SECRET, other))
    assert (unrelated.id, unrelated.provider_ref, unrelated.status) == ("evt_other", None, None)


async def test_webhook_rejections(stripe_api: Stripe) -> None:
    gateway = stripe_api.gateway
    event = payment_intent_event({"id": "pi_x", "object": "payment_intent", "amount": 5, "currency": "usd",
                                  "status": "succeeded"}, "payment_intent.succeeded")  # fmt: skip
    payload, header = signed_event(WEBHOOK_SECRET, event)
    tampered = payload.replace(b'"amount":5', b'"amount":500000')
    assert tampered != payload
    with pytest.raises(WebhookRejected, match="does not match"):
        gateway.parse_webhook(tampered, header)
    stale_payload, stale_header = signed_event(WEBHOOK_SECRET, event, timestamp=int(time.time()) - 301)
    with pytest.raises(WebhookRejected, match="too old"):
        gateway.parse_webhook(stale_payload, stale_header)
    with pytest.raises(WebhookRejected, match="missing"):
        gateway.parse_webhook(payload, None)
    with pytest.raises(WebhookRejected, match="does not match"):
        gateway.parse_webhook(payload, signed_event("whsec_someone_else", event)[1])
    with pytest.raises(WebhookRejected, match="malformed"):
        gateway.parse_webhook(payload, "garbage")
    with pytest.raises(WebhookRejected, match="not a Stripe event"):
        gateway.parse_webhook(*signed_event(WEBHOOK_SECRET, {"hello": "world"}))
    not_json = b"not json"
    mac_header = signed_event(WEBHOOK_SECRET, {})[1]
    with pytest.raises(WebhookRejected):
        gateway.parse_webhook(not_json, mac_header)
    unsigned = StripeGateway(API_KEY, api_base=stripe_api.url)
    try:
        with pytest.raises(WebhookRejected, match="no webhook signing secret"):
            unsigned.parse_webhook(payload, header)
    finally:
        await unsigned.aclose()
    fresh = signed_event(WEBHOOK_SECRET, event, timestamp=int(time.time()) - 200)
    assert gateway.parse_webhook(*fresh).provider_ref == "pi_x"


async def test_sandbox_outcomes() -> None:
    sandbox = SandboxGateway(webhook_secret=WEBHOOK_SECRET)
    ok = await pay(sandbox, "pm_card_visa", "s-1")
    assert (ok.status, ok.amount_minor, ok.currency) == ("succeeded", 2500, "usd")
    assert ok.provider_ref.startswith("sandbox_")
    assert (await pay(sandbox, "tok_visa", "s-tok")).status == "succeeded"
    assert (await pay(sandbox, "pm_card_mastercard", "s-mc")).status == "succeeded"
    declined = await pay(sandbox, "pm_card_chargeDeclined", "s-2")
    assert (declined.status, declined.failure_code) == ("failed", "card_declined")
    assert declined.provider_ref.startswith("sandbox_") and declined.failure_message
    assert (await pay(sandbox, "tok_chargeDeclined", "s-tokd")).status == "failed"
    pending = await pay(sandbox, "pm_card_threeDSecureRequired", "s-3")
    assert pending.status == "requires_action" and pending.next_action_url
    assert (await sandbox.retrieve(pending.provider_ref)).status == "requires_action"
    sandbox.complete(pending.provider_ref)
    assert (await sandbox.retrieve(pending.provider_ref)).status == "succeeded"
    assert await pay(sandbox, "pm_card_visa", "s-1") == ok
    with pytest.raises(Conflict):
        await pay(sandbox, "pm_card_visa", "s-1", amount=1)
    with pytest.raises(ValidationFailed):
        await pay(sandbox, "pm_real_card_123", "s-4")
    with pytest.raises(NotFound):
        await sandbox.retrieve("sandbox_nope")


async def test_sandbox_webhooks() -> None:
    sandbox = SandboxGateway(webhook_secret=WEBHOOK_SECRET)
    pending = await pay(sandbox, "pm_card_threeDSecure2Required", "s-wh")
    done = sandbox.complete(pending.provider_ref)
    payload, header = sandbox.signed_event(done)
    event = sandbox.parse_webhook(payload, header)
    assert (event.type, event.provider_ref, event.status) == (
        "payment_intent.succeeded",
        done.provider_ref,
        "succeeded",
    )
    assert event.amount_minor == 2500
    forged = payload.replace(b"succeeded", b"processing")
    with pytest.raises(WebhookRejected):
        sandbox.parse_webhook(forged, header)
    with pytest.raises(WebhookRejected):
        sandbox.parse_webhook(*sandbox.signed_event(done, timestamp=int(time.time()) - 1000))
    with pytest.raises(WebhookRejected):
        SandboxGateway(webhook_secret="whsec_other").parse_webhook(payload, header)
    fake_signed = signed_event(WEBHOOK_SECRET, json.loads(payload))
    assert sandbox.parse_webhook(*fake_signed).id == event.id
