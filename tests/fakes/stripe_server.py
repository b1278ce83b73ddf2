"""A local Stripe API for what the payment gateway uses: create-and-confirm and retrieve a PaymentIntent.

It answers as ``api.stripe.com`` does: form-encoded bodies with bracketed nested keys (``metadata[user]``),
the secret key as Bearer or Basic credentials (401 with Stripe's error body otherwise), ``Idempotency-Key``
(the first answer to a key is stored and replayed with ``Idempotent-Replayed: true`` for the same
parameters; different parameters get 400 ``idempotency_error``), Stripe's test payment methods
(``pm_card_visa`` succeeds, ``pm_card_chargeDeclined`` is a 402 ``card_error`` carrying the PaymentIntent,
``pm_card_threeDSecure2Required``/``pm_card_authenticationRequired`` need 3-D Secure), and PaymentIntent
objects with Stripe's field names.

Knobs on ``StripeState``: ``fail_next`` (that many requests get 500 ``api_error``, answered in front of the
idempotency layer so a retry with the same key is processed), ``delay_s`` (every answer is that late),
``complete``/``fail_authentication`` (finish a 3-D Secure challenge), ``requests`` (what was asked).
``signed_event`` forges ``Stripe-Signature`` headers; ``payment_intent_event`` builds an event body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_KEY = "sk_test_fake51AiserveTestKey0000000000000000"

SUCCEEDS = frozenset(
    {"pm_card_visa", "pm_card_visa_debit", "pm_card_mastercard", "pm_card_amex", "tok_visa", "tok_mastercard"}
)
# payment method -> (code, decline_code, message)
DECLINES: dict[str, tuple[str, str, str]] = {
    "pm_card_chargeDeclined": ("card_declined", "generic_decline", "Your card was declined."),
    "tok_chargeDeclined": ("card_declined", "generic_decline", "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclinedExpiredCard": ("expired_card", "expired_card", "Your card has expired."),
}
NEEDS_3DS = frozenset(
    {"pm_card_threeDSecure2Required", "pm_card_authenticationRequired", "pm_card_threeDSecureRequired"}
)


@dataclass
class RecordedRequest:
    """One request as the fake saw it (``params`` flattened exactly as sent, e.g. ``metadata[user]``)."""

    method: str
    path: str
    params: dict[str, str]
    idempotency_key: str | None
    status_code: int = 0
    replayed: bool = False


@dataclass
class StripeState:
    """What the fake knows and how it misbehaves; tests read and change it directly."""

    api_key: str = API_KEY
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    idempotency: dict[str, tuple[str, int, bytes]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    fail_next: int = 0
    delay_s: float = 0.0

    @property
    def created(self) -> list[dict[str, Any]]:
        """The PaymentIntents created, oldest first."""
        return list(self.intents.values())

    def complete(self, pi_id: str) -> dict[str, Any]:
        """Move a ``requires_action`` or ``processing`` intent to ``succeeded`` (3-D Secure passed)."""
        intent = self.intents[pi_id]
        if intent["status"] not in ("requires_action", "processing"):
            raise ValueError(f"{pi_id} is {intent['status']}, not waiting")
        intent.update(
            status="succeeded",
            amount_received=intent["amount"],
            next_action=None,
            latest_charge=_new_id("ch"),
        )
        return intent

    def fail_authentication(self, pi_id: str) -> dict[str, Any]:
        """Move a ``requires_action`` intent back to ``requires_payment_method`` (3-D Secure failed)."""
        intent = self.intents[pi_id]
        if intent["status"] != "requires_action":
            raise ValueError(f"{pi_id} is {intent['status']}, not requires_action")
        intent.update(
            status="requires_payment_method",
            next_action=None,
            last_payment_error={
                "type": "invalid_request_error",
                "code": "payment_intent_authentication_failure",
                "message": "The provided PaymentMethod has failed authentication. You can provide "
                "payment_method_data or a new PaymentMethod to attempt to fulfill this PaymentIntent again.",
                "payment_method": _payment_method(intent["payment_method"]),
            },
        )
        return intent


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(18).replace('-', 'A').replace('_', 'B')}"


def _payment_method(pm: str | None) -> dict[str, Any]:
    return {"id": pm, "object": "payment_method", "type": "card", "livemode": False}


def _error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _mask(key: str) -> str:
    return key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else "*" * len(key)


def _unflatten(items: list[tuple[str, str]]) -> dict[str, Any]:
    """``metadata[user]=u`` -> ``{"metadata": {"user": "u"}}``; ``a[0]=x`` -> ``{"a": ["x"]}``."""
    out: dict[str, Any] = {}
    for key, value in items:
        parts = key.replace("]", "").split("[")
        node: dict[str, Any] = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def lists(value: Any) -> Any:
        if isinstance(value, dict):
            if value and all(k.isdigit() for k in value):
                return [lists(value[k]) for k in sorted(value, key=int)]
            return {k: lists(v) for k, v in value.items()}
        return value

    result: dict[str, Any] = lists(out)
    return result


def _authorized(request: Request, state: StripeState) -> JSONResponse | None:
    header = request.headers.get("authorization", "")
    key: str | None = None
    if header.startswith("Bearer "):
        key = header[len("Bearer ") :]
    elif header.startswith("Basic "):
        try:
            key = base64.b64decode(header[len("Basic ") :]).decode().split(":", 1)[0]
        except ValueError:
            key = None
    if not key:
        return _error(
            401,
            {
                "type": "invalid_request_error",
                "message": "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            },
        )
    if not hmac.compare_digest(key, state.api_key):
        return _error(
            401, {"type": "invalid_request_error", "message": f"Invalid API Key provided: {_mask(key)}"}
        )
    return None


def stripe_app(state: StripeState) -> Starlette:
    """A Starlette app answering ``POST /v1/payment_intents`` and ``GET /v1/payment_intents/{id}``."""

    async def guard(request: Request, params: dict[str, str]) -> tuple[RecordedRequest, Response | None]:
        record = RecordedRequest(
            request.method, request.url.path, params, request.headers.get("idempotency-key")
        )
        state.requests.append(record)
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.fail_next > 0:
            state.fail_next -= 1
            return record, _error(
                500,
                {"type": "api_error", "message": "An unknown error occurred"},
                {"Request-Id": _new_id("req")},
            )
        return record, _authorized(request, state)

    async def create(request: Request) -> Response:
        form = await request.form()
        items = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        record, refused = await guard(request, dict(items))
        if refused is not None:
            record.status_code = refused.status_code
            return refused
        key = record.idempotency_key
        fingerprint = hashlib.sha256(json.dumps(sorted(items)).encode()).hexdigest()
        if key is not None and key in state.idempotency:
            seen, status, body = state.idempotency[key]
            if seen != fingerprint:
                record.status_code = 400
                return _error(
                    400,
                    {
                        "type": "idempotency_error",
                        "message": "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with. Try using a key other than "
                        f"'{key}' if you meant to execute a different request.",
                    },
                )
            record.status_code, record.replayed = status, True
            return Response(
                body,
                status_code=status,
                media_type="application/json",
                headers={"Idempotent-Replayed": "true", "Idempotency-Key": key, "Request-Id": _new_id("req")},
            )
        status, payload = _create_intent(_unflatten(items), state)
        body = json.dumps(payload).encode()
        if key is not None and status != 400:
            state.idempotency[key] = (fingerprint, status, body)
        record.status_code = status
        headers = {"Request-Id": _new_id("req")}
        if key is not None:
            headers["Idempotency-Key"] = key
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    async def retrieve(request: Request) -> Response:
        record, refused = await guard(request, dict(request.query_params))
        if refused is not None:
            record.status_code = refused.status_code
            return refused
        pi_id = request.path_params["intent"]
        intent = state.intents.get(pi_id)
        if intent is None:
            record.status_code = 404
            return _error(
                404,
                {
                    "type": "invalid_request_error",
                    "code": "resource_missing",
                    "param": "intent",
                    "message": f"No such payment_intent: '{pi_id}'",
                },
            )
        record.status_code = 200
        return JSONResponse(intent, headers={"Request-Id": _new_id("req")})

    return Starlette(
        routes=[
            Route("/v1/payment_intents", create, methods=["POST"]),
            Route("/v1/payment_intents/{intent}", retrieve, methods=["GET"]),
        ]
    )


def _missing(param: str) -> tuple[int, dict[str, Any]]:
    return 400, {
        "error": {
            "type": "invalid_request_error",
            "code": "parameter_missing",
            "param": param,
            "message": f"Missing required param: {param}.",
        }
    }


def _create_intent(params: dict[str, Any], state: StripeState) -> tuple[int, dict[str, Any]]:
    """Stripe's create-PaymentIntent semantics for card test payment methods; returns (status, body)."""
    for required in ("amount", "currency"):
        if not params.get(required):
            return _missing(required)
    try:
        amount = int(params["amount"])
    except ValueError:
        amount = 0
    if amount < 1:
        return 400, {
            "error": {
                "type": "invalid_request_error",
                "code": "parameter_invalid_integer",
                "param": "amount",
                "message": "This value must be greater than or equal to 1.",
            }
        }
    pm = params.get("payment_method")
    if pm is not None and pm not in SUCCEEDS | NEEDS_3DS | DECLINES.keys():
        return 400, {
            "error": {
                "type": "invalid_request_error",
                "code": "resource_missing",
                "param": "payment_method",
                "message": f"No such PaymentMethod: '{pm}'",
            }
        }
    confirm = params.get("confirm") == "true"
    if confirm and pm is None:
        return _missing("payment_method")
    pi_id = _new_id("pi")
    types = params.get("allowed_payment_method_types") or params.get("payment_method_types") or ["card"]
    intent: dict[str, Any] = {
        "id": pi_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_received": 0,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic_async",
        "client_secret": f"{pi_id}_secret_{secrets.token_urlsafe(18)}",
        "confirmation_method": "automatic",
        "created": int(time.time()),
        "currency": str(params["currency"]).lower(),
        "customer": None,
        "description": params.get("description"),
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": params.get("metadata") or {},
        "next_action": None,
        "payment_method": pm,
        "payment_method_types": list(types),
        "status": "requires_payment_method" if pm is None else "requires_confirmation",
    }
    state.intents[pi_id] = intent
    if not confirm:
        return 200, intent
    if pm in SUCCEEDS:
        intent.update(status="succeeded", amount_received=amount, latest_charge=_new_id("ch"))
        return 200, intent
    if pm in NEEDS_3DS:
        return_url = params.get("return_url")
        if return_url:
            action: dict[str, Any] = {
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "return_url": return_url,
                    "url": f"https://hooks.stripe.com/3d_secure_2/hosted?payment_intent={pi_id}"
                    f"&payment_intent_client_secret={intent['client_secret']}",
                },
            }
        else:
            action = {
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {
                    "type": "stripe_3ds2_fingerprint",
                    "three_d_secure_2_source": _new_id("src"),
                },
            }
        intent.update(status="requires_action", next_action=action)
        return 200, intent
    code, decline_code, message = DECLINES[str(pm)]
    charge_id = _new_id("ch")
    error = {
        "type": "card_error",
        "code": code,
        "decline_code": decline_code,
        "message": message,
        "charge": charge_id,
        "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
        "payment_method": _payment_method(pm),
    }
    intent.update(status="requires_payment_method", latest_charge=charge_id, last_payment_error=dict(error))
    return 402, {"error": {**error, "payment_intent": intent}}


def payment_intent_event(
    intent: dict[str, Any], event_type: str, event_id: str | None = None
) -> dict[str, Any]:
    """A Stripe event of ``event_type`` whose ``data.object`` is a copy of ``intent``."""
    return {
        "id": event_id or _new_id("evt"),
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        "data": {"object": json.loads(json.dumps(intent))},
    }


def signed_event(secret: str, event: dict[str, Any], timestamp: int | None = None) -> tuple[bytes, str]:
    """``event`` as a webhook body and a valid ``Stripe-Signature`` header for it, signed at ``timestamp``.

    The header is ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by secret>``, as Stripe sends.
    """
    payload = json.dumps(event, separators=(",", ":")).encode()
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return payload, f"t={t},v1={mac}"
