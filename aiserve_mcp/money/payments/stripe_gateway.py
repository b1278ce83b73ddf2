"""The Stripe gateway: PaymentIntents through the official SDK, with Stripe's errors translated to ours."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import httpx
import stripe
from stripe.params import PaymentIntentCreateParams, PaymentIntentCreateParamsPaymentMethodData
from stripe.params.checkout import SessionCreateParams

from aiserve_mcp.core.errors import (
    Conflict,
    NotFound,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
    ValidationFailed,
)
from aiserve_mcp.money.payments.base import (
    GENERIC_DECLINE_MESSAGE,
    Charge,
    CheckoutSession,
    WebhookEvent,
    check_charge_args,
)
from aiserve_mcp.money.payments.intents import charge_from_intent
from aiserve_mcp.money.payments.sessions import checkout_session_from
from aiserve_mcp.money.payments.webhooks import verify_and_parse

DEFAULT_RETURN_URL = "https://aiserve.invalid/billing/return"


class StripeGateway:
    """Stripe PaymentIntents and Checkout Sessions through the official SDK's async client (HTTPX).

    ``charge`` takes a PaymentMethod id (``pm_...``), sent as ``payment_method``, or a card token
    (``tok_...``), sent as ``payment_method_data[type]=card`` with ``payment_method_data[card][token]``:
    Stripe refuses a token passed as ``payment_method`` ("A token may not be passed in as a PaymentMethod").
    Anything else is refused here. It creates and confirms a PaymentIntent in one call (``confirm=true`` and
    ``allowed_payment_method_types=["card"]``, the SDK's pinned API version's name for
    ``payment_method_types``) under the caller's idempotency key, so Stripe replays the first answer to a
    retry. ``return_url`` is sent so that a card needing 3-D Secure answers ``next_action.redirect_to_url``
    (a page to send the payer to, who comes back to ``return_url``) rather than an in-browser SDK challenge.
    ``create_checkout_session`` opens a Checkout Session (Stripe's hosted payment page) instead, for a
    person to pay on with any payment method the account offers. The SDK retries connection errors, 409
    and 5xx ``max_network_retries`` times with the same idempotency key. Call ``aclose`` when done.
    """

    name = "stripe"

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        webhook_secret: str | None = None,
        timeout_s: float = 30.0,
        return_url: str = DEFAULT_RETURN_URL,
        max_network_retries: int = 2,
    ) -> None:
        if not api_key:
            raise ServiceUnavailable("payments are misconfigured: no Stripe API key is set")
        self._http = stripe.HTTPXClient(timeout=timeout_s)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            http_client=self._http,
            max_network_retries=max_network_retries,
        )
        self._webhook_secret = webhook_secret
        self._return_url = return_url

    def __repr__(self) -> str:
        return "StripeGateway()"

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def charge(
        self,
        *,
        amount_minor: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
        description: str,
        metadata: Mapping[str, str],
    ) -> Charge:
        """Create and confirm a PaymentIntent; a declined card gives a ``"failed"`` Charge, not an error."""
        code = check_charge_args(amount_minor, currency, idempotency_key)
        params: PaymentIntentCreateParams = {
            "amount": amount_minor,
            "currency": code,
            "allowed_payment_method_types": ["card"],
            "confirm": True,
            "return_url": self._return_url,
            "description": description,
            "metadata": dict(metadata),
        }
        if payment_method.startswith("pm_"):
            params["payment_method"] = payment_method
        elif payment_method.startswith("tok_"):
            # The SDK's TypedDict has no ``card`` key (stripe-node#1264): Stripe keeps raw card fields out
            # of its types; a token is the one card field a server sends.
            params["payment_method_data"] = cast(
                PaymentIntentCreateParamsPaymentMethodData,
                {"type": "card", "card": {"token": payment_method}},
            )
        else:
            raise ValidationFailed(
                "the payment reference must be a Stripe card token (tok_...) or PaymentMethod id (pm_...)",
                {"param": "payment_method"},
            )
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params, options={"idempotency_key": idempotency_key}
            )
        except stripe.CardError as exc:
            return self._declined(exc, amount_minor, code)
        except stripe.StripeError as exc:
            raise _translate(exc, "charge") from None
        return charge_from_intent(intent.to_dict())

    async def retrieve(self, provider_ref: str) -> Charge:
        """The current state of the PaymentIntent ``provider_ref`` (``pi_...``)."""
        if not provider_ref:
            raise ValidationFailed("a payment reference is required")
        try:
            intent = await self._client.v1.payment_intents.retrieve_async(provider_ref)
        except stripe.StripeError as exc:
            raise _translate(exc, "retrieve") from None
        return charge_from_intent(intent.to_dict())

    async def create_checkout_session(
        self,
        *,
        amount_minor: int,
        currency: str,
        user_id: str,
        customer_email: str | None,
        product_name: str,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
    ) -> CheckoutSession:
        """A ``payment``-mode Checkout Session of one line item (``price_data`` with ``product_data``,
        quantity 1) for ``amount_minor``; the user goes in ``metadata[user_id]`` and ``client_reference_id``,
        where the webhook finds it. It expires after Stripe's default 24 hours: an ``expires_at`` computed
        from the clock would differ on a retry, and Stripe refuses a reused idempotency key whose
        parameters differ. Without a webhook secret nobody could learn that the payer paid, so no session
        is opened then (``ServiceUnavailable``)."""
        code = check_charge_args(amount_minor, currency, idempotency_key)
        if not self._webhook_secret:
            raise ServiceUnavailable(
                "payments are misconfigured: checkout pages need AISERVE_STRIPE_WEBHOOK_SECRET, the secret "
                "that Stripe's confirmations of their payments are verified with"
            )
        params: SessionCreateParams = {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": code,
                        "unit_amount": amount_minor,
                        "product_data": {"name": product_name},
                    },
                    "quantity": 1,
                }
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": user_id,
            "metadata": {"user_id": user_id},
        }
        if customer_email:
            params["customer_email"] = customer_email
        try:
            session = await self._client.v1.checkout.sessions.create_async(
                params, options={"idempotency_key": idempotency_key}
            )
        except stripe.StripeError as exc:
            raise _translate(exc, "checkout") from None
        return checkout_session_from(session.to_dict())

    def parse_webhook(self, payload: bytes, signature_header: str | None) -> WebhookEvent:
        """Verify the ``Stripe-Signature`` header (HMAC-SHA256, at most 300 s old) and read the event."""
        return verify_and_parse(payload, signature_header, self._webhook_secret)

    @staticmethod
    def _declined(exc: stripe.CardError, amount_minor: int, currency: str) -> Charge:
        body = exc.json_body if isinstance(exc.json_body, Mapping) else {}
        error = body.get("error") if isinstance(body.get("error"), Mapping) else {}
        intent = error.get("payment_intent") if isinstance(error, Mapping) else None
        message = exc.user_message if isinstance(exc.user_message, str) and exc.user_message else None
        if isinstance(intent, Mapping) and intent.get("id"):
            return Charge(
                status="failed",
                provider_ref=str(intent["id"]),
                amount_minor=int(intent.get("amount") or amount_minor),
                currency=str(intent.get("currency") or currency).lower(),
                failure_code=exc.code or "card_declined",
                failure_message=message or GENERIC_DECLINE_MESSAGE,
            )
        return Charge(
            status="failed",
            provider_ref="",
            amount_minor=amount_minor,
            currency=currency,
            failure_code=exc.code or "card_declined",
            failure_message=message or GENERIC_DECLINE_MESSAGE,
        )


_PARAM_NAMES = {"payment_method": "payment method", "payment_method_data[card][token]": "card token"}


def _translate(exc: stripe.StripeError, action: str) -> Exception:
    """A safe error of our own for a Stripe SDK error (never carrying the key or the raw body)."""
    details: dict[str, Any] = {"provider": "stripe", "action": action}
    if exc.http_status is not None:
        details["http_status"] = exc.http_status
    if exc.request_id:
        details["request_id"] = exc.request_id
    if isinstance(exc, (stripe.AuthenticationError, stripe.PermissionError)):
        return ServiceUnavailable("payments are misconfigured: Stripe refused the API key", details)
    if isinstance(exc, stripe.IdempotencyError):
        return Conflict("this idempotency key was already used for a payment with different details", details)
    if isinstance(exc, stripe.InvalidRequestError):
        if exc.code:
            details["code"] = exc.code
        if exc.param:
            details["param"] = exc.param
        if exc.http_status == 404 or exc.code == "resource_missing":
            if action == "retrieve":
                return NotFound("no such payment", details)
            what = _PARAM_NAMES.get(exc.param or "", exc.param or "object")
            return ValidationFailed(f"Stripe does not know this {what}", details)
        if exc.code == "amount_too_small":
            return ValidationFailed("the amount is below Stripe's minimum charge for its currency", details)
        return ValidationFailed("Stripe rejected the payment request", details)
    if isinstance(exc, stripe.APIConnectionError):
        if isinstance(exc.__cause__, httpx.TimeoutException):
            return UpstreamTimeout("Stripe did not answer in time", details)
        return UpstreamFailed("cannot reach Stripe", details)
    if isinstance(exc, stripe.RateLimitError):
        return UpstreamFailed("Stripe is rate limiting payment requests; try again shortly", details)
    return UpstreamFailed("Stripe failed to process the request; try again later", details)
