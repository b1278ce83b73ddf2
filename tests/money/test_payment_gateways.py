"""The Stripe gateway (official SDK) against a local Stripe API, and the development sandbox."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from aiserve_mcp.core.errors import (
    Conflict,
    NotFound,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
    ValidationFailed,
)
from aiserve_mcp.money.payments.base import Charge, PaymentGateway
from aiserve_mcp.money.payments.sandbox import SandboxGateway
from aiserve_mcp.money.payments.stripe_gateway import StripeGateway
from aiserve_mcp.money.payments.webhooks import WebhookRejected
from tests.conftest import free_port, serve
from tests.fakes.stripe_api.events import signed_event, stripe_event
from tests.fakes.stripe_api.server import stripe_app
from tests.fakes.stripe_api.state import API_KEY, StripeState
from tests.money.conftest import WEBHOOK_SECRET, Stripe

META = {"user": "u_1", "purpose": "credits"}


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


async def test_a_card_token_goes_as_payment_method_data(stripe_api: Stripe) -> None:
    charge = await pay(stripe_api.gateway, "tok_visa", "k-token")
    assert charge.status == "succeeded"
    sent = stripe_api.state.requests[0].params
    assert sent["payment_method_data[type]"] == "card"
    assert sent["payment_method_data[card][token]"] == "tok_visa"
    assert "payment_method" not in sent
    [intent] = stripe_api.state.created
    assert intent["payment_method"].startswith("pm_")  # Stripe makes a PaymentMethod of the token


async def test_a_payment_method_id_goes_as_payment_method(stripe_api: Stripe) -> None:
    await pay(stripe_api.gateway, "pm_card_mastercard", "k-pm")
    sent = stripe_api.state.requests[0].params
    assert sent["payment_method"] == "pm_card_mastercard"
    assert not [name for name in sent if name.startswith("payment_method_data")]


async def test_card_token_outcomes(stripe_api: Stripe) -> None:
    no_funds = await pay(stripe_api.gateway, "tok_visa_chargeDeclinedInsufficientFunds", "k-t1")
    assert (no_funds.status, no_funds.failure_code) == ("failed", "card_declined")
    assert no_funds.failure_message == "Your card has insufficient funds."
    declined = await pay(stripe_api.gateway, "tok_chargeDeclined", "k-t2")
    assert (declined.status, declined.failure_message) == ("failed", "Your card was declined.")
    challenge = await pay(stripe_api.gateway, "tok_threeDSecure2Required", "k-t3")
    assert challenge.status == "requires_action" and challenge.next_action_url
    with pytest.raises(ValidationFailed, match="card token") as caught:
        await pay(stripe_api.gateway, "tok_nonexistent", "k-t4")
    assert caught.value.details["param"] == "payment_method_data[card][token]"


async def test_references_that_are_neither_token_nor_payment_method_never_reach_stripe(
    stripe_api: Stripe,
) -> None:
    for reference in ("card_1AbC", "src_123", "visa", " tok_visa", ""):
        with pytest.raises(ValidationFailed, match="tok_"):
            await pay(stripe_api.gateway, reference, f"k-{reference}")
    assert stripe_api.state.requests == []


async def test_amounts_under_stripes_minimum_never_reach_stripe(stripe_api: Stripe) -> None:
    with pytest.raises(ValidationFailed, match=r"minimum of 0\.50 USD") as caught:
        await pay(stripe_api.gateway, "pm_card_visa", "k-49", amount=49)
    assert caught.value.details == {"minimum": "0.50", "currency": "USD"}
    assert stripe_api.state.requests == []
    assert (await pay(stripe_api.gateway, "pm_card_visa", "k-50", amount=50)).status == "succeeded"


# The fake itself: it must refuse what api.stripe.com refuses, with Stripe's body, so that a change that
# makes it kinder fails here.


async def create(
    url: str, form: dict[str, str], *, key: str | None = API_KEY, **headers: str
) -> httpx.Response:
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=url) as http:
        return await http.post("/v1/payment_intents", data=form, headers={**auth, **headers})


CONFIRMED = {
    "amount": "2500",
    "currency": "usd",
    "confirm": "true",
    "allowed_payment_method_types[0]": "card",
}


async def test_the_fake_refuses_a_token_passed_as_payment_method(stripe_api: Stripe) -> None:
    answer = await create(stripe_api.url, {**CONFIRMED, "payment_method": "tok_visa"})
    assert answer.status_code == 400
    assert answer.json() == {
        "error": {
            "message": "A token may not be passed in as a PaymentMethod. Instead, use payment_method_data "
            "with type=card and card[token]=tok_visa.",
            "param": "payment_method",
            "type": "invalid_request_error",
        }
    }
    assert stripe_api.state.created == []
    token = {"payment_method_data[type]": "card", "payment_method_data[card][token]": "tok_visa"}
    accepted = await create(stripe_api.url, {**CONFIRMED, **token})
    assert accepted.status_code == 200 and accepted.json()["status"] == "succeeded"


async def test_the_fake_refuses_unknown_payment_methods_and_tokens(stripe_api: Stripe) -> None:
    unknown = (await create(stripe_api.url, {**CONFIRMED, "payment_method": "pm_nope"})).json()["error"]
    assert (unknown["code"], unknown["param"], unknown["type"]) == (
        "resource_missing",
        "payment_method",
        "invalid_request_error",
    )
    assert unknown["message"].startswith("No such PaymentMethod: 'pm_nope'; It's possible this PaymentMethod")
    token = {"payment_method_data[type]": "card", "payment_method_data[card][token]": "tok_nope"}
    answer = await create(stripe_api.url, {**CONFIRMED, **token})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["code"], error["param"], error["message"]) == (
        "resource_missing",
        "payment_method_data[card][token]",
        "No such token: 'tok_nope'",
    )
    both = await create(stripe_api.url, {**CONFIRMED, **token, "payment_method": "pm_card_visa"})
    assert both.status_code == 400 and both.json()["error"]["code"] == "parameters_exclusive"
    assert stripe_api.state.created == []


async def test_the_fake_checks_amount_and_currency_as_stripe_does(stripe_api: Stripe) -> None:
    pm = {"payment_method": "pm_card_visa"}
    missing = await create(stripe_api.url, {"currency": "usd", **pm})
    assert missing.status_code == 400 and missing.json() == {
        "error": {
            "code": "parameter_missing",
            "doc_url": "https://stripe.com/docs/error-codes/parameter-missing",
            "message": "Missing required param: amount.",
            "param": "amount",
            "type": "invalid_request_error",
        }
    }
    small = await create(stripe_api.url, {**CONFIRMED, **pm, "amount": "49"})
    assert small.status_code == 400 and small.json() == {
        "error": {
            "code": "amount_too_small",
            "doc_url": "https://stripe.com/docs/error-codes/amount-too-small",
            "message": "Amount must be at least $0.50 usd",
            "param": "amount",
            "type": "invalid_request_error",
        }
    }
    zero = (await create(stripe_api.url, {**CONFIRMED, **pm, "amount": "0"})).json()["error"]
    assert zero["code"] == "parameter_invalid_integer"
    bogus = await create(stripe_api.url, {**CONFIRMED, **pm, "currency": "xyz"})
    error = bogus.json()["error"]
    assert bogus.status_code == 400 and (error["param"], error["type"]) == (
        "currency",
        "invalid_request_error",
    )
    assert error["message"].startswith(
        "Invalid currency: xyz. Stripe currently supports these currencies: usd, "
    )
    assert stripe_api.state.created == []
    upper = await create(stripe_api.url, {**CONFIRMED, **pm, "currency": "USD"})
    assert upper.status_code == 200 and upper.json()["currency"] == "usd"


async def test_the_fake_refuses_to_confirm_without_a_payment_method(stripe_api: Stripe) -> None:
    answer = await create(stripe_api.url, CONFIRMED)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "payment_intent_unexpected_state" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("You cannot confirm this PaymentIntent because it's missing a payment")
    assert error["payment_intent"]["status"] == "requires_payment_method"


async def test_the_fake_declines_with_stripes_card_error(stripe_api: Stripe) -> None:
    token = {
        "payment_method_data[type]": "card",
        "payment_method_data[card][token]": "tok_visa_chargeDeclined",
    }
    answer = await create(stripe_api.url, {**CONFIRMED, **token})
    assert answer.status_code == 402
    error = answer.json()["error"]
    assert (error["type"], error["code"], error["decline_code"], error["message"]) == (
        "card_error",
        "card_declined",
        "generic_decline",
        "Your card was declined.",
    )
    assert error["payment_intent"]["id"].startswith("pi_") and error["payment_method"]["id"].startswith("pm_")
    challenge = await create(
        stripe_api.url,
        {**CONFIRMED, "payment_method": "pm_card_threeDSecure2Required", "return_url": "https://x.test/r"},
    )
    action = challenge.json()["next_action"]
    assert challenge.status_code == 200 and challenge.json()["status"] == "requires_action"
    assert (
        action["type"] == "redirect_to_url" and action["redirect_to_url"]["return_url"] == "https://x.test/r"
    )


async def test_the_fake_idempotency_and_keys(stripe_api: Stripe) -> None:
    pm = {**CONFIRMED, "payment_method": "pm_card_visa"}
    first = await create(stripe_api.url, pm, **{"Idempotency-Key": "K1"})
    again = await create(stripe_api.url, pm, **{"Idempotency-Key": "K1"})
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    other = await create(stripe_api.url, {**pm, "amount": "9000"}, **{"Idempotency-Key": "K1"})
    assert other.status_code == 400 and other.json() == {
        "error": {
            "type": "idempotency_error",
            "message": "Keys for idempotent requests can only be used with the same parameters they were "
            "first used with. Try using a key other than 'K1' if you meant to execute a different request.",
        }
    }
    refused = await create(stripe_api.url, {**pm, "amount": "10"}, **{"Idempotency-Key": "K2"})
    assert refused.status_code == 400  # failed validation: nothing is stored under K2
    fixed = await create(stripe_api.url, pm, **{"Idempotency-Key": "K2"})
    assert fixed.status_code == 200 and "Idempotent-Replayed" not in fixed.headers
    nokey = await create(stripe_api.url, pm, key=None)
    assert nokey.status_code == 401 and nokey.json()["error"]["message"].startswith(
        "You did not provide an API key."
    )
    wrong = await create(stripe_api.url, pm, key="sk_test_0123456789abcdefWXYZ")
    assert wrong.status_code == 401 and wrong.json() == {
        "error": {
            "type": "invalid_request_error",
            "message": "Invalid API Key provided: sk_test_****************WXYZ",
        }
    }


async def test_webhook_valid_event_is_parsed(stripe_api: Stripe) -> None:
    charge = await pay(stripe_api.gateway, "pm_card_threeDSecure2Required", "k-wh")
    intent = stripe_api.state.complete(charge.provider_ref)
    payload, header = signed_event(WEBHOOK_SECRET, stripe_event(intent, "payment_intent.succeeded"))
    event = stripe_api.gateway.parse_webhook(payload, header)
    assert event.id.startswith("evt_")
    assert event.type == "payment_intent.succeeded"
    assert (event.provider_ref, event.status) == (charge.provider_ref, "succeeded")
    assert (event.amount_minor, event.currency) == (2500, "usd")
    assert stripe_api.gateway.parse_webhook(payload, header).id == event.id


async def test_webhook_failure_event(stripe_api: Stripe) -> None:
    charge = await pay(stripe_api.gateway, "pm_card_chargeDeclined", "k-wh-fail")
    intent = stripe_api.state.intents[charge.provider_ref]
    payload, header = signed_event(WEBHOOK_SECRET, stripe_event(intent, "payment_intent.payment_failed"))
    event = stripe_api.gateway.parse_webhook(payload, header)
    assert (event.status, event.failure_code) == ("failed", "card_declined")
    created = stripe_event(intent, "payment_intent.created")
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
    event = stripe_event({"id": "pi_x", "object": "payment_intent", "amount": 5, "currency": "usd",
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
        await pay(sandbox, "pm_card_visa", "s-1", amount=9000)
    with pytest.raises(ValidationFailed, match="minimum"):
        await pay(sandbox, "pm_card_visa", "s-small", amount=49)
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
