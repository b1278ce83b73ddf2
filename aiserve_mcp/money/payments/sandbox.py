"""The sandbox gateway (for development): Stripe's test payment methods decide the outcome; no money moves.
Its checkout sessions are paid on a stand-in page of this server (``SANDBOX_CHECKOUT_PATH``)."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import replace

import stripe

from aiserve_mcp.core.errors import Conflict, NotFound, ServiceUnavailable, ValidationFailed
from aiserve_mcp.money.payments.base import Charge, CheckoutSession, WebhookEvent, check_charge_args
from aiserve_mcp.money.payments.webhooks import verify_and_parse

SANDBOX_CHECKOUT_PATH = "/console/checkout/sandbox/"  # + the session id: the stand-in for Stripe's page
CHECKOUT_LIFETIME_S = 24 * 3600  # Stripe's default for a Checkout Session

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

    ``create_checkout_session`` opens a session (id ``sandbox_cs_...``) whose ``url`` is the stand-in page
    ``<base_url>/console/checkout/sandbox/<id>``; ``pay_checkout`` is what that page's Pay button does. Keys
    replay as for ``charge``; a session expires after 24 hours, as Stripe's do by default.
    """

    name = "sandbox"

    def __init__(self, webhook_secret: str | None = None, *, base_url: str = "http://127.0.0.1:8080") -> None:
        self._webhook_secret = webhook_secret
        self._base_url = base_url.rstrip("/")
        self._charges: dict[str, Charge] = {}
        self._by_key: dict[str, tuple[str, Charge]] = {}
        self._sessions: dict[str, CheckoutSession] = {}
        self._sessions_by_key: dict[str, tuple[str, str]] = {}

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
        code = check_charge_args(amount_minor, currency, idempotency_key)
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
        """Open a session paid on the stand-in page; replays the first session for a repeated key."""
        code = check_charge_args(amount_minor, currency, idempotency_key)
        details = [amount_minor, code, user_id, customer_email, product_name, success_url, cancel_url]
        fingerprint = hashlib.sha256(json.dumps(details).encode()).hexdigest()
        previous = self._sessions_by_key.get(idempotency_key)
        if previous is not None:
            if previous[0] != fingerprint:
                raise Conflict("this idempotency key was already used for a payment with different details")
            return self.checkout_session(previous[1])
        session_id = f"sandbox_cs_{secrets.token_hex(12)}"
        self._sessions[session_id] = CheckoutSession(
            id=session_id,
            url=f"{self._base_url}{SANDBOX_CHECKOUT_PATH}{session_id}",
            status="open",
            payment_status="unpaid",
            amount_minor=amount_minor,
            currency=code,
            expires_at=int(time.time()) + CHECKOUT_LIFETIME_S,
            user_id=user_id,
            success_url=success_url,
            cancel_url=cancel_url,
        )
        self._sessions_by_key[idempotency_key] = (fingerprint, session_id)
        return self._sessions[session_id]

    def checkout_session(self, session_id: str) -> CheckoutSession:
        """The session as it stands (an open one past its ``expires_at`` is ``"expired"``)."""
        found = self._sessions.get(session_id)
        if found is None:
            raise NotFound("no such checkout session", {"provider": "sandbox"})
        if found.status == "open" and found.expires_at <= time.time():
            found = self._sessions[session_id] = replace(found, status="expired", url=None)
        return found

    def pay_checkout(self, session_id: str) -> CheckoutSession:
        """Pay an open session as a card would: ``"complete"`` and ``"paid"`` (a paid one stays as it is;
        an expired one is a ``Conflict``)."""
        found = self.checkout_session(session_id)
        if found.status == "complete":
            return found
        if found.status != "open":
            raise Conflict("this checkout session expired: start a new one", {"status": found.status})
        paid = replace(found, status="complete", payment_status="paid", url=None)
        self._sessions[session_id] = paid
        return paid

    def parse_webhook(self, payload: bytes, signature_header: str | None) -> WebhookEvent:
        """Verify the ``Stripe-Signature`` header with the sandbox's secret and read the event."""
        return verify_and_parse(payload, signature_header, self._webhook_secret)

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
