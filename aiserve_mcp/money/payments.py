"""Payment gateways: Stripe through its official SDK, and a sandbox that charges nothing (development only).

Both take one payment in one call (``charge``), look it up again (``retrieve``) and verify and read
Stripe-style webhooks (``parse_webhook``). A declined card is not an exception: it is a ``Charge`` with
status ``"failed"`` so the ledger can record it. Everything else that goes wrong raises:

* the gateway is unreachable, answers 5xx or is rate limiting us -> ``UpstreamFailed`` (``UpstreamTimeout``
  when it did not answer in time);
* the API key is wrong or lacks permissions -> ``ServiceUnavailable`` ("payments are misconfigured");
* the request itself is wrong (unknown payment method, bad amount) -> ``ValidationFailed``; so is an amount
  under Stripe's minimum charge for its currency (50 cents for USD), refused before any call;
* an idempotency key reused with different payment details -> ``Conflict``;
* ``retrieve`` of an unknown payment -> ``NotFound``.

No message carries the API key or the webhook secret.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, cast

import httpx
import stripe
from stripe.params import PaymentIntentCreateParams, PaymentIntentCreateParamsPaymentMethodData

from aiserve_mcp.core.errors import (
    Conflict,
    NotFound,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
    ValidationFailed,
)

PaymentStatus = Literal["succeeded", "processing", "requires_action", "failed"]

WEBHOOK_TOLERANCE_S = 300
DEFAULT_RETURN_URL = "https://aiserve.invalid/billing/return"
GENERIC_DECLINE_MESSAGE = "The payment was declined."

# Event types whose PaymentIntent snapshot settles the payment's state; other payment_intent.* events
# (created, amount_capturable_updated, partially_funded) carry no status.
_EVENT_STATUS: dict[str, PaymentStatus] = {
    "payment_intent.succeeded": "succeeded",
    "payment_intent.processing": "processing",
    "payment_intent.requires_action": "requires_action",
    "payment_intent.payment_failed": "failed",
    "payment_intent.canceled": "failed",
}


@dataclass(frozen=True)
class Charge:
    """The state of one payment as the gateway reports it.

    ``amount_minor`` is the PaymentIntent's ``amount`` (what the payment is for, in minor units); only a
    ``"succeeded"`` charge means the money was taken. ``failure_code``/``failure_message`` are set on
    ``"failed"``; ``next_action_url`` is the 3-D Secure page the payer must visit on ``"requires_action"``
    (``None`` when the gateway offers no redirect).
    """

    status: PaymentStatus
    provider_ref: str
    amount_minor: int
    currency: str
    failure_code: str | None = None
    failure_message: str | None = None
    next_action_url: str | None = None


@dataclass(frozen=True)
class WebhookEvent:
    """A verified webhook event.

    ``provider_ref``, ``amount_minor`` and ``currency`` are set when the event's object is a PaymentIntent;
    ``status`` only for the event types that settle a payment (succeeded, processing, requires_action,
    payment_failed, canceled -> failed). ``failure_code``/``failure_message`` come from the intent's
    ``last_payment_error`` on failure events.
    """

    id: str
    type: str
    provider_ref: str | None
    status: PaymentStatus | None
    amount_minor: int | None
    currency: str | None
    failure_code: str | None = None
    failure_message: str | None = None


class WebhookRejected(ValidationFailed):
    """A webhook whose signature is missing, wrong or stale, or whose body is not a Stripe event."""


class PaymentGateway(Protocol):
    """What the ledger needs from a payment provider."""

    name: str

    async def charge(
        self,
        *,
        amount_minor: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
        description: str,
        metadata: Mapping[str, str],
    ) -> Charge: ...

    async def retrieve(self, provider_ref: str) -> Charge: ...

    def parse_webhook(self, payload: bytes, signature_header: str | None) -> WebhookEvent: ...

    async def aclose(self) -> None: ...


# Stripe's minimum charge amounts in minor units (docs.stripe.com/currencies#minimum-and-maximum-charge-
# amounts): below them Stripe answers 400 amount_too_small ("Amount must be at least $0.50 usd").
MINIMUM_CHARGE_MINOR: dict[str, int] = {
    "usd": 50, "aed": 200, "aud": 50, "bgn": 100, "brl": 50, "cad": 50, "chf": 50, "czk": 1500, "dkk": 250,
    "eur": 50, "gbp": 30, "hkd": 400, "huf": 17500, "inr": 50, "jpy": 50, "mxn": 1000, "myr": 200,
    "nok": 300, "nzd": 50, "pln": 200, "ron": 200, "sek": 300, "sgd": 50, "thb": 1000,
}  # fmt: skip
_ZERO_DECIMAL = frozenset({"jpy"})  # of the currencies above, those without minor units


def _check_charge_args(amount_minor: int, currency: str, idempotency_key: str) -> str:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise ValidationFailed("the amount must be a positive whole number of minor units")
    code = currency.strip().lower()
    if len(code) != 3 or not code.isalpha():
        raise ValidationFailed("the currency must be a three-letter ISO code", {"currency": currency})
    minimum = MINIMUM_CHARGE_MINOR.get(code)
    if minimum is not None and amount_minor < minimum:
        shown = str(minimum) if code in _ZERO_DECIMAL else f"{minimum // 100}.{minimum % 100:02d}"
        raise ValidationFailed(
            f"the amount is below the card payment minimum of {shown} {code.upper()}",
            {"minimum": shown, "currency": code.upper()},
        )
    if not idempotency_key or len(idempotency_key) > 255:
        raise ValidationFailed("the idempotency key must be 1 to 255 characters")
    return code


def _failure_of(intent: Mapping[str, Any]) -> tuple[str | None, str | None]:
    error = intent.get("last_payment_error")
    if not isinstance(error, Mapping):
        return None, None
    code = error.get("code")
    message = error.get("message")
    return (code if isinstance(code, str) else None, message if isinstance(message, str) else None)


def _next_action_url(intent: Mapping[str, Any]) -> str | None:
    action = intent.get("next_action")
    if not isinstance(action, Mapping):
        return None
    redirect = action.get("redirect_to_url")
    if not isinstance(redirect, Mapping):
        return None
    url = redirect.get("url")
    return url if isinstance(url, str) else None


def charge_from_intent(intent: Mapping[str, Any]) -> Charge:
    """Map a PaymentIntent (as a plain dict) to a ``Charge``.

    succeeded -> succeeded; processing and requires_capture -> processing; requires_action and
    requires_confirmation -> requires_action; requires_payment_method after a failed attempt (it has a
    ``last_payment_error``) and canceled -> failed; requires_payment_method with no attempt yet ->
    requires_action.
    """
    status = intent.get("status")
    code, message = _failure_of(intent)
    mapped: PaymentStatus
    if status == "succeeded":
        mapped = "succeeded"
    elif status in ("processing", "requires_capture"):
        mapped = "processing"
    elif status == "canceled":
        mapped = "failed"
        reason = intent.get("cancellation_reason")
        code = code or "canceled"
        message = message or ("The payment was canceled" + (f" ({reason})." if reason else "."))
    elif status == "requires_payment_method" and code is not None:
        mapped = "failed"
    elif status in ("requires_action", "requires_confirmation", "requires_payment_method"):
        mapped = "requires_action"
    else:
        raise UpstreamFailed(
            "the payment gateway answered with an unknown payment status", {"status": status}
        )
    if mapped == "failed" and message is None:
        message = GENERIC_DECLINE_MESSAGE
    return Charge(
        status=mapped,
        provider_ref=str(intent.get("id") or ""),
        amount_minor=int(intent.get("amount") or 0),
        currency=str(intent.get("currency") or "").lower(),
        failure_code=code if mapped == "failed" else None,
        failure_message=message if mapped == "failed" else None,
        next_action_url=_next_action_url(intent) if mapped == "requires_action" else None,
    )


def _verify_and_parse(payload: bytes, signature_header: str | None, secret: str | None) -> WebhookEvent:
    if not secret:
        raise WebhookRejected("webhooks are not accepted: no webhook signing secret is configured")
    if not signature_header:
        raise WebhookRejected("the Stripe-Signature header is missing")
    try:
        event = stripe.Webhook.construct_event(
            payload, signature_header, secret, tolerance=WEBHOOK_TOLERANCE_S
        )
        data = event.to_dict()
    except stripe.SignatureVerificationError as exc:
        text = str(exc)
        if "tolerance" in text:
            raise WebhookRejected("the webhook's signature timestamp is too old") from None
        if "extract timestamp" in text or "expected scheme" in text:
            raise WebhookRejected("the Stripe-Signature header is malformed") from None
        raise WebhookRejected("the webhook's signature does not match its body") from None
    except (ValueError, TypeError, KeyError, AttributeError):
        raise WebhookRejected("the webhook body is not a Stripe event") from None
    return _event_from_dict(data)


def _event_from_dict(data: Mapping[str, Any]) -> WebhookEvent:
    event_id, event_type = data.get("id"), data.get("type")
    if not isinstance(event_id, str) or not isinstance(event_type, str):
        raise WebhookRejected("the webhook body is not a Stripe event: it lacks an id or a type")
    body = data.get("data")
    obj = body.get("object") if isinstance(body, Mapping) else None
    if not isinstance(obj, Mapping) or obj.get("object") != "payment_intent":
        return WebhookEvent(event_id, event_type, None, None, None, None)
    amount = obj.get("amount")
    currency = obj.get("currency")
    status = _EVENT_STATUS.get(event_type)
    code, message = _failure_of(obj) if status == "failed" else (None, None)
    if status == "failed" and code is None and event_type == "payment_intent.canceled":
        code = "canceled"
    return WebhookEvent(
        id=event_id,
        type=event_type,
        provider_ref=str(obj.get("id")) if obj.get("id") else None,
        status=status,
        amount_minor=amount if isinstance(amount, int) else None,
        currency=currency.lower() if isinstance(currency, str) else None,
        failure_code=code,
        failure_message=(message or GENERIC_DECLINE_MESSAGE) if status == "failed" else None,
    )


class StripeGateway:
    """Stripe PaymentIntents through the official SDK's async client (HTTPX).

    ``charge`` takes a PaymentMethod id (``pm_...``), sent as ``payment_method``, or a card token
    (``tok_...``), sent as ``payment_method_data[type]=card`` with ``payment_method_data[card][token]``:
    Stripe refuses a token passed as ``payment_method`` ("A token may not be passed in as a PaymentMethod").
    Anything else is refused here. It creates and confirms a PaymentIntent in one call (``confirm=true`` and
    ``allowed_payment_method_types=["card"]``, the SDK's pinned API version's name for
    ``payment_method_types``) under the caller's idempotency key, so Stripe replays the first answer to a
    retry. ``return_url`` is sent so that a card needing 3-D Secure answers ``next_action.redirect_to_url``
    (a page to send the payer to, who comes back to ``return_url``) rather than an in-browser SDK challenge.
    The SDK retries connection errors, 409 and 5xx ``max_network_retries`` times with the same idempotency
    key. Call ``aclose`` when done.
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
        code = _check_charge_args(amount_minor, currency, idempotency_key)
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

    def parse_webhook(self, payload: bytes, signature_header: str | None) -> WebhookEvent:
        """Verify the ``Stripe-Signature`` header (HMAC-SHA256, at most 300 s old) and read the event."""
        return _verify_and_parse(payload, signature_header, self._webhook_secret)

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


_SANDBOX_SUCCEEDS = frozenset(
    {
        "pm_card_visa",
        "pm_card_visa_debit",
        "pm_card_mastercard",
        "pm_card_amex",
        "tok_visa",
        "tok_visa_debit",
        "tok_mastercard",
        "tok_amex",
    }
)
_SANDBOX_DECLINES: dict[str, tuple[str, str]] = {
    "pm_card_chargeDeclined": ("card_declined", "Your card was declined."),
    "tok_chargeDeclined": ("card_declined", "Your card was declined."),
    "pm_card_visa_chargeDeclined": ("card_declined", "Your card was declined."),
    "tok_visa_chargeDeclined": ("card_declined", "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": ("card_declined", "Your card has insufficient funds."),
    "tok_chargeDeclinedInsufficientFunds": ("card_declined", "Your card has insufficient funds."),
    "pm_card_visa_chargeDeclinedInsufficientFunds": ("card_declined", "Your card has insufficient funds."),
    "tok_visa_chargeDeclinedInsufficientFunds": ("card_declined", "Your card has insufficient funds."),
    "pm_card_chargeDeclinedExpiredCard": ("expired_card", "Your card has expired."),
    "tok_chargeDeclinedExpiredCard": ("expired_card", "Your card has expired."),
}
_SANDBOX_3DS = frozenset(
    {
        "pm_card_threeDSecureRequired",
        "pm_card_threeDSecure2Required",
        "pm_card_authenticationRequired",
        "tok_threeDSecureRequired",
        "tok_threeDSecure2Required",
        "tok_authenticationRequired",
    }
)


class SandboxGateway:
    """A gateway for development that moves no money and makes no network call.

    Stripe's test payment methods decide the outcome: ``pm_card_visa``, ``pm_card_mastercard``, ``tok_visa``
    (and the other success ids above) succeed; ``pm_card_chargeDeclined``/``tok_chargeDeclined`` fail with
    ``card_declined`` (``...InsufficientFunds`` likewise, ``...ExpiredCard`` with ``expired_card``);
    ``pm_card_threeDSecureRequired``, ``pm_card_threeDSecure2Required`` and ``pm_card_authenticationRequired``
    give ``requires_action`` until ``complete`` is called. Any other payment method is a ``ValidationFailed``,
    and so is an amount under Stripe's minimum charge, as with ``StripeGateway``.
    Idempotency keys behave as Stripe's: the same key with the same details returns the first answer again,
    with different details raises ``Conflict``. Every ``provider_ref`` starts with ``sandbox_``. State lives
    in memory.

    ``parse_webhook`` verifies the ``Stripe-Signature`` header exactly as ``StripeGateway`` does, with
    ``webhook_secret``; ``signed_event`` builds such a webhook for a sandbox payment.
    """

    name = "sandbox"

    def __init__(self, webhook_secret: str | None = None) -> None:
        self._webhook_secret = webhook_secret
        self._charges: dict[str, Charge] = {}
        self._by_key: dict[str, tuple[str, Charge]] = {}

    async def aclose(self) -> None:
        """Nothing to release; present so both gateways close the same way."""

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
        """Decide the outcome from the test payment method; replays the first Charge for a repeated key."""
        code = _check_charge_args(amount_minor, currency, idempotency_key)
        fingerprint = hashlib.sha256(
            json.dumps([amount_minor, code, payment_method, description, sorted(metadata.items())]).encode()
        ).hexdigest()
        previous = self._by_key.get(idempotency_key)
        if previous is not None:
            if previous[0] != fingerprint:
                raise Conflict("this idempotency key was already used for a payment with different details")
            return previous[1]
        ref = f"sandbox_pi_{secrets.token_hex(12)}"
        if payment_method in _SANDBOX_SUCCEEDS:
            result = Charge("succeeded", ref, amount_minor, code)
        elif payment_method in _SANDBOX_DECLINES:
            failure, message = _SANDBOX_DECLINES[payment_method]
            result = Charge("failed", ref, amount_minor, code, failure, message)
        elif payment_method in _SANDBOX_3DS:
            url = f"https://sandbox.aiserve.invalid/3d_secure/{ref}"
            result = Charge("requires_action", ref, amount_minor, code, next_action_url=url)
        else:
            raise ValidationFailed(
                "the sandbox accepts only Stripe's test payment methods (e.g. pm_card_visa)",
                {"param": "payment_method"},
            )
        self._charges[ref] = result
        self._by_key[idempotency_key] = (fingerprint, result)
        return result

    async def retrieve(self, provider_ref: str) -> Charge:
        """The current state of a sandbox payment."""
        found = self._charges.get(provider_ref)
        if found is None:
            raise NotFound("no such payment", {"provider": "sandbox"})
        return found

    def complete(self, provider_ref: str, *, succeed: bool = True) -> Charge:
        """Finish a ``requires_action`` payment as if the payer passed (or failed) 3-D Secure."""
        found = self._charges.get(provider_ref)
        if found is None:
            raise NotFound("no such payment", {"provider": "sandbox"})
        if found.status != "requires_action":
            raise Conflict("the payment is not waiting for authentication", {"status": found.status})
        if succeed:
            done = replace(found, status="succeeded", next_action_url=None)
        else:
            done = replace(
                found,
                status="failed",
                next_action_url=None,
                failure_code="payment_intent_authentication_failure",
                failure_message="The payer did not complete authentication.",
            )
        self._charges[provider_ref] = done
        return done

    def parse_webhook(self, payload: bytes, signature_header: str | None) -> WebhookEvent:
        """Verify the ``Stripe-Signature`` header with the sandbox's secret and read the event."""
        return _verify_and_parse(payload, signature_header, self._webhook_secret)

    def signed_event(self, charge: Charge, *, timestamp: int | None = None) -> tuple[bytes, str]:
        """A webhook body and ``Stripe-Signature`` header announcing ``charge``'s current state.

        The event type is ``payment_intent.succeeded``/``processing``/``requires_action``/``payment_failed``.
        """
        if not self._webhook_secret:
            raise ServiceUnavailable("the sandbox has no webhook secret to sign with")
        event_type = {
            "succeeded": "payment_intent.succeeded",
            "processing": "payment_intent.processing",
            "requires_action": "payment_intent.requires_action",
            "failed": "payment_intent.payment_failed",
        }[charge.status]
        stripe_status = {
            "succeeded": "succeeded",
            "processing": "processing",
            "requires_action": "requires_action",
            "failed": "requires_payment_method",
        }[charge.status]
        error = (
            {"type": "card_error", "code": charge.failure_code, "message": charge.failure_message}
            if charge.status == "failed"
            else None
        )
        event = {
            "id": f"evt_sandbox_{secrets.token_hex(12)}",
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "livemode": False,
            "data": {
                "object": {
                    "id": charge.provider_ref,
                    "object": "payment_intent",
                    "amount": charge.amount_minor,
                    "currency": charge.currency,
                    "status": stripe_status,
                    "last_payment_error": error,
                }
            },
        }
        payload = json.dumps(event).encode()
        ts = int(time.time()) if timestamp is None else timestamp
        header = stripe.WebhookSignature.generate_signature_header(payload.decode(), self._webhook_secret, ts)
        return payload, header
