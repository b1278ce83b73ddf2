"""Checkout Sessions: the Stripe gateway (official SDK) against the local Stripe, its webhooks, the sandbox's
sessions, and the local Stripe itself refusing what api.stripe.com refuses."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from aiserve_mcp.core.errors import Conflict, NotFound, ServiceUnavailable, ValidationFailed
from aiserve_mcp.money.payments.base import CheckoutSession, PaymentGateway
from aiserve_mcp.money.payments.sandbox import SandboxGateway
from aiserve_mcp.money.payments.stripe_gateway import StripeGateway
from tests.fakes.stripe_api.events import signed_event, stripe_event
from tests.fakes.stripe_api.state import API_KEY
from tests.money.conftest import WEBHOOK_SECRET, Stripe

SUCCESS, CANCEL = "http://127.0.0.1:8080/console/credits?checkout=success", "http://127.0.0.1:8080/x"


async def open_session(
    gateway: PaymentGateway, key: str, amount: int = 2500, user: str = "u_1"
) -> CheckoutSession:
    return await gateway.create_checkout_session(
        amount_minor=amount,
        currency="USD",
        user_id=user,
        customer_email="payer@example.com",
        product_name="aiserve credits",
        success_url=SUCCESS,
        cancel_url=CANCEL,
        idempotency_key=key,
    )


async def test_a_checkout_session_is_one_priced_line_item_for_our_user(stripe_api: Stripe) -> None:
    session = await open_session(stripe_api.gateway, "cs-1")
    assert (
        session.id.startswith("cs_test_") and session.url == f"https://checkout.stripe.com/c/pay/{session.id}"
    )
    assert (session.status, session.payment_status) == ("open", "unpaid")
    assert (session.amount_minor, session.currency, session.user_id) == (2500, "usd", "u_1")
    assert abs(session.expires_at - (time.time() + 24 * 3600)) < 60
    [request] = stripe_api.state.requests
    assert request.path == "/v1/checkout/sessions" and request.idempotency_key == "cs-1"
    assert request.params == {
        "mode": "payment",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "2500",
        "line_items[0][price_data][product_data][name]": "aiserve credits",
        "line_items[0][quantity]": "1",
        "success_url": SUCCESS,
        "cancel_url": CANCEL,
        "client_reference_id": "u_1",
        "metadata[user_id]": "u_1",
        "customer_email": "payer@example.com",
    }
    stored = stripe_api.state.sessions[session.id]
    assert stored["payment_intent"] is None and stored["metadata"] == {"user_id": "u_1"}


async def test_a_repeated_key_opens_one_session(stripe_api: Stripe) -> None:
    first = await open_session(stripe_api.gateway, "cs-again")
    assert await open_session(stripe_api.gateway, "cs-again") == first
    assert len(stripe_api.state.sessions) == 1 and stripe_api.state.requests[1].replayed
    with pytest.raises(Conflict):
        await open_session(stripe_api.gateway, "cs-again", amount=9000)
    assert len(stripe_api.state.sessions) == 1


async def test_sessions_stripe_would_refuse_never_reach_it(stripe_api: Stripe) -> None:
    with pytest.raises(ValidationFailed, match=r"minimum of 0\.50 USD"):
        await open_session(stripe_api.gateway, "cs-small", amount=49)
    with pytest.raises(ValidationFailed):
        await open_session(stripe_api.gateway, "", amount=500)
    assert stripe_api.state.requests == []
    unsigned = StripeGateway(API_KEY, api_base=stripe_api.url)
    wrong = StripeGateway("sk_test_wrong_0123456789abcdef", api_base=stripe_api.url, webhook_secret="whsec_x")
    try:
        with pytest.raises(ServiceUnavailable, match="AISERVE_STRIPE_WEBHOOK_SECRET"):
            await open_session(unsigned, "cs-unsigned")
        assert stripe_api.state.requests == []
        with pytest.raises(ServiceUnavailable, match="refused the API key"):
            await open_session(wrong, "cs-key")
    finally:
        await unsigned.aclose()
        await wrong.aclose()


def session_event(session: dict[str, Any], event_type: str) -> tuple[bytes, str]:
    return signed_event(WEBHOOK_SECRET, stripe_event(session, event_type))


async def test_checkout_events_read_as_payment_outcomes(stripe_api: Stripe) -> None:
    opened = await open_session(stripe_api.gateway, "cs-events")
    session = dict(stripe_api.state.sessions[opened.id])
    parse = stripe_api.gateway.parse_webhook
    outcomes = {
        ("checkout.session.completed", "paid"): ("succeeded", None),
        ("checkout.session.completed", "unpaid"): ("processing", None),
        ("checkout.session.async_payment_succeeded", "paid"): ("succeeded", None),
        ("checkout.session.async_payment_failed", "unpaid"): ("failed", "async_payment_failed"),
        ("checkout.session.expired", "unpaid"): ("failed", "expired"),
        ("checkout.session.completed", "no_payment_required"): (None, None),
    }
    for (event_type, paid), (status, failure) in outcomes.items():
        status_of_session = "expired" if event_type.endswith("expired") else "complete"
        body = {**session, "status": status_of_session, "payment_status": paid, "url": None}
        event = parse(*session_event(body, event_type))
        assert (event.status, event.failure_code, event.provider_ref) == (status, failure, opened.id), (
            event_type
        )
        assert event.checkout is not None and event.checkout.user_id == "u_1"
        assert (event.amount_minor, event.currency) == (2500, "usd")
    anonymous = {**session, "metadata": {}, "client_reference_id": "u_ref"}
    event = parse(*session_event(anonymous, "checkout.session.completed"))
    assert event.checkout is not None and event.checkout.user_id == "u_ref"
    tampered, header = session_event(session, "checkout.session.completed")
    with pytest.raises(ValidationFailed, match="does not match"):
        parse(tampered.replace(b'"amount_total":2500', b'"amount_total":9999'), header)


async def test_sandbox_sessions_are_paid_on_this_servers_page() -> None:
    sandbox = SandboxGateway(WEBHOOK_SECRET, base_url="https://aiserve.example/")
    session = await open_session(sandbox, "sb-1")
    assert session.id.startswith("sandbox_cs_")
    assert session.url == f"https://aiserve.example/console/checkout/sandbox/{session.id}"
    assert (session.status, session.success_url, session.cancel_url) == ("open", SUCCESS, CANCEL)
    assert await open_session(sandbox, "sb-1") == session
    with pytest.raises(Conflict):
        await open_session(sandbox, "sb-1", amount=700)
    with pytest.raises(ValidationFailed, match="minimum"):
        await open_session(sandbox, "sb-small", amount=10)
    paid = sandbox.pay_checkout(session.id)
    assert (paid.status, paid.payment_status, paid.url) == ("complete", "paid", None)
    assert sandbox.pay_checkout(session.id) == paid == sandbox.checkout_session(session.id)
    with pytest.raises(NotFound):
        sandbox.checkout_session("sandbox_cs_nope")


async def test_a_sandbox_session_expires_after_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = SandboxGateway()
    session = await open_session(sandbox, "sb-old")
    later = time.time() + 24 * 3600 + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert sandbox.checkout_session(session.id).status == "expired"
    with pytest.raises(Conflict, match="expired"):
        sandbox.pay_checkout(session.id)


# The fake itself: what api.stripe.com refuses on create, retrieve and expire.

CREATE: dict[str, str] = {
    "mode": "payment",
    "success_url": "https://example.com/ok",
    "line_items[0][price_data][currency]": "usd",
    "line_items[0][price_data][unit_amount]": "2500",
    "line_items[0][price_data][product_data][name]": "credits",
    "line_items[0][quantity]": "1",
}


DESCRIPTION = "line_items[0][price_data][product_data][description]"


async def post(url: str, path: str, form: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        return await http.post(path, data=form)


async def refusal(url: str, form: dict[str, str]) -> dict[str, Any]:
    answer = await post(url, "/v1/checkout/sessions", form)
    assert answer.status_code == 400, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def without(*names: str) -> dict[str, str]:
    return {k: v for k, v in CREATE.items() if k not in names}


async def test_the_fake_requires_mode_line_items_and_success_url(stripe_api: Stripe) -> None:
    url = stripe_api.url
    for name, param in (
        ("mode", "mode"),
        ("success_url", "success_url"),
        ("line_items[0][price_data][unit_amount]", "line_items[0][price_data][unit_amount]"),
        ("line_items[0][price_data][currency]", "line_items[0][price_data][currency]"),
    ):
        error = await refusal(url, without(name))
        assert (error["code"], error["param"]) == ("parameter_missing", param)
        assert error["message"] == f"Missing required param: {param}."
    nameless = {**without("line_items[0][price_data][product_data][name]"), DESCRIPTION: "credits"}
    assert (await refusal(url, nameless))["message"] == (
        "Missing required param: line_items[0][price_data][product_data][name]."
    )
    productless = without("line_items[0][price_data][product_data][name]")
    assert (await refusal(url, productless))["message"] == (
        "You must specify either `product` or `product_data` when creating a price."
    )
    no_items = {k: v for k, v in CREATE.items() if not k.startswith("line_items")}
    assert (await refusal(url, no_items))["param"] == "line_items"
    quantity = await refusal(url, without("line_items[0][quantity]"))
    assert quantity["message"] == "Quantity is required. Add `quantity` to `line_items[0]`"
    setup = await refusal(url, {**CREATE, "mode": "setup"})
    assert setup["message"] == "You can not pass `line_items` in `setup` mode."
    assert (await refusal(url, {**CREATE, "mode": "pay"}))["param"] == "mode"
    assert stripe_api.state.sessions == {}


async def test_the_fake_refuses_old_and_unknown_parameters(stripe_api: Stripe) -> None:
    url = stripe_api.url
    legacy = await refusal(url, {**CREATE, "line_items[0][amount]": "2500"})
    assert legacy["message"].startswith("You cannot use `line_items.amount`, `line_items.currency`")
    unknown = await refusal(url, {**CREATE, "colour": "blue"})
    assert (unknown["code"], unknown["message"]) == (
        "parameter_unknown",
        "Received unknown parameter: colour",
    )
    nested = await refusal(url, {**CREATE, "line_items[0][price_data][flavour]": "x"})
    assert nested["param"] == "line_items[0][price_data][flavour]"
    for old in ("hosted", "embedded", "custom"):
        assert (await refusal(url, {**CREATE, "ui_mode": old}))["message"].startswith("Invalid ui_mode")
    embedded = await refusal(url, {**CREATE, "ui_mode": "embedded_page"})
    assert embedded["message"] == (
        "The following parameters are not supported with 'ui_mode: embedded_page': cancel_url, success_url."
    )
    price = without(*[k for k in CREATE if "price_data" in k])
    assert (await refusal(url, price))["message"] == (
        "You must provide either price or price_data for each line item when using prices."
    )
    known_price = (await refusal(url, {**price, "line_items[0][price]": "price_123"}))["code"]
    assert known_price == "resource_missing"
    assert stripe_api.state.sessions == {}


async def test_the_fake_checks_urls_amounts_and_expiry(stripe_api: Stripe) -> None:
    url = stripe_api.url
    for bad in ("example.com/ok", "ftp://example.com/ok", "https://"):
        error = await refusal(url, {**CREATE, "success_url": bad})
        assert (error["code"], error["message"], error["param"]) == (
            "url_invalid",
            "Not a valid URL",
            "success_url",
        )
    long = await refusal(url, {**CREATE, "cancel_url": "https://example.com/" + "a" * 5000})
    assert long["message"] == "Invalid URL: URL must be 5000 characters or less."
    for field, value, code in (
        ("line_items[0][price_data][unit_amount]", "-1", "parameter_invalid_integer"),
        ("line_items[0][price_data][unit_amount]", "12.5", "parameter_invalid_integer"),
        ("line_items[0][quantity]", "0", "parameter_invalid_integer"),
    ):
        assert (await refusal(url, {**CREATE, field: value}))["code"] == code, value
    small = await refusal(url, {**CREATE, "line_items[0][price_data][unit_amount]": "49"})
    assert small["message"] == "The Checkout Session's total amount due must add up to at least $0.50 usd"
    upper = await refusal(url, {**CREATE, "line_items[0][price_data][currency]": "xyz"})
    assert upper["message"].startswith("Invalid currency: xyz.")
    now = int(time.time())
    soon = await refusal(url, {**CREATE, "expires_at": str(now + 60)})
    assert soon["message"] == (
        "The `expires_at` timestamp must be at least 30 minutes from Checkout Session creation."
    )
    # a minute past the limit: the fake's clock may have moved on from this test's ``now`` on a busy machine
    late = await refusal(url, {**CREATE, "expires_at": str(now + 24 * 3600 + 60)})
    assert (
        late["message"]
        == "The `expires_at` timestamp must be less than 24 hours from Checkout Session creation."
    )
    assert stripe_api.state.sessions == {}
    kept = await post(url, "/v1/checkout/sessions", {**CREATE, "expires_at": str(now + 3600)})
    assert kept.status_code == 200 and kept.json()["expires_at"] == now + 3600
    two = {**CREATE, "line_items[0][quantity]": "3", "line_items[1][price_data][currency]": "USD",
           "line_items[1][price_data][unit_amount]": "0", "line_items[1][quantity]": "1",
           "line_items[1][price_data][product_data][name]": "free"}  # fmt: skip
    assert (await post(url, "/v1/checkout/sessions", two)).json()["amount_total"] == 7500


async def test_the_fake_retrieves_and_expires_open_sessions_only(stripe_api: Stripe) -> None:
    url = stripe_api.url
    created = (await post(url, "/v1/checkout/sessions", CREATE)).json()
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        assert (await http.get(f"/v1/checkout/sessions/{created['id']}")).json() == created
        missing = await http.get("/v1/checkout/sessions/cs_test_nope")
        assert missing.status_code == 404 and missing.json()["error"]["message"] == (
            "No such checkout.session: 'cs_test_nope'"
        )
        anonymous = await httpx.AsyncClient(base_url=url).get(f"/v1/checkout/sessions/{created['id']}")
        assert anonymous.status_code == 401
    expired = await post(url, f"/v1/checkout/sessions/{created['id']}/expire", {})
    assert expired.status_code == 200 and (expired.json()["status"], expired.json()["url"]) == (
        "expired",
        None,
    )
    again = await post(url, f"/v1/checkout/sessions/{created['id']}/expire", {})
    assert again.status_code == 400 and again.json()["error"]["message"] == (
        'Only Checkout Sessions with a status in ["open"] can be expired. This Checkout Session has a status '
        "of `expired`."
    )
