"""A local Stripe API for what the payment gateway uses: create-and-confirm and retrieve a PaymentIntent.

It is as strict as ``api.stripe.com``: whatever the real API refuses, this refuses with the real status and
error body, so a client that passes here has not been let off by a kind fake. Each behaviour and its source:

* Requests: form-encoded bodies with bracketed nested keys (``metadata[user]``), the secret key as Bearer
  or Basic credentials. No key: 401 "You did not provide an API key. ..."; a wrong key: 401 "Invalid API
  Key provided: sk_test_****abcd" (docs.stripe.com/api/authentication, docs.stripe.com/api/errors).
* ``Idempotency-Key`` (docs.stripe.com/api/idempotent_requests): the first answer of a request that began
  executing is stored and replayed with ``Idempotent-Replayed: true`` for the same parameters; parameters
  that fail validation store nothing ("no idempotent result is saved"), so a corrected retry goes through;
  different parameters get 400 ``idempotency_error`` "Keys for idempotent requests can only be used with
  the same parameters they were first used with. Try using a key other than 'K' if you meant to execute a
  different request."
* ``amount``: missing is 400 ``parameter_missing`` "Missing required param: amount." (the body quoted in
  our issue from the live API, with ``doc_url``); not a positive integer is 400
  ``parameter_invalid_integer`` "This value must be greater than or equal to 1."; under the currency's
  minimum charge amount (docs.stripe.com/currencies#minimum-and-maximum-charge-amounts; 50 for usd) is 400
  ``amount_too_small`` "Amount must be at least $0.50 usd" (the live body quoted in our issue; the text
  for currencies other than usd is not sourced and follows the same pattern).
* ``currency``: missing is 400 ``parameter_missing``; unknown is 400 ``invalid_request_error``, param
  ``currency``, "Invalid currency: xyz. Stripe currently supports these currencies: usd, aed, ..." (the
  list as live Stripe answers it, quoted by several public test suites); upper case is accepted
  (Stripe lower-cases it; the intent shows lower case).
* ``payment_method``: a PaymentMethod id. A card token there is refused with 400 "A token may not be passed
  in as a PaymentMethod. Instead, use payment_method_data with type=card and card[token]=tok_visa.", param
  ``payment_method`` (live bodies quoted in saleor/saleor#4741, stripe/stripe-node#1264,
  stripe/stripe-dotnet#1766). An unknown id is 400 ``resource_missing`` "No such PaymentMethod: 'X'; It's
  possible this PaymentMethod exists on one of your connected accounts, in which case you should retry
  this request on that connected account. Learn more at https://stripe.com/docs/connect/authentication".
* ``payment_method_data[type]=card`` with ``payment_method_data[card][token]=tok_...`` is how a token is
  charged (Stripe staff in stripe/stripe-node#1310 and stripe/stripe-dotnet#2329); it makes a new
  ``pm_...`` PaymentMethod for the intent. An unknown token is 400 ``resource_missing`` "No such token:
  'tok_x'" (that text is what Stripe answers for an unknown token elsewhere, e.g. Charges ``source``; its
  ``param`` here, ``payment_method_data[card][token]``, is our assumption, not sourced). A missing
  ``payment_method_data[type]`` or token is ``parameter_missing``; a type other than card is refused (the
  fake knows only card tokens). Both ``payment_method`` and ``payment_method_data`` is 400
  ``parameters_exclusive`` "You may only specify one of these parameters: payment_method,
  payment_method_data." (Stripe's wording for exclusive parameters; not sourced for this pair).
* ``confirm=true`` with neither is 400 ``payment_intent_unexpected_state`` "You cannot confirm this
  PaymentIntent because it's missing a payment method. ..." with ``error.payment_intent`` (the intent is
  created, in ``requires_payment_method``).
* Stripe's test cards (docs.stripe.com/testing): ``pm_card_visa``, ``pm_card_visa_debit``,
  ``pm_card_mastercard``, ``pm_card_amex`` and ``tok_visa``, ``tok_visa_debit``, ``tok_mastercard``,
  ``tok_amex`` succeed; ``pm_card_chargeDeclined``, ``pm_card_visa_chargeDeclined``,
  ``tok_chargeDeclined``, ``tok_visa_chargeDeclined`` are a 402 ``card_error`` ``card_declined``
  (``decline_code`` ``generic_decline``, "Your card was declined."), the ``...InsufficientFunds`` ones
  likewise with ``insufficient_funds`` ("Your card has insufficient funds."), ``...ExpiredCard`` with
  ``expired_card``; the error carries ``payment_intent``, ``payment_method``, ``charge`` and ``doc_url``
  (docs.stripe.com/api/errors). ``pm_card_threeDSecure2Required``, ``pm_card_threeDSecureRequired``,
  ``pm_card_authenticationRequired`` and their ``tok_`` twins answer 200 ``requires_action`` with
  ``next_action.redirect_to_url`` ``{url, return_url}`` when a ``return_url`` was sent
  (``use_stripe_sdk`` otherwise).
* Retrieve of an unknown intent: 404 ``resource_missing`` "No such payment_intent: 'pi_x'", param
  ``intent``.

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

_GENERIC = ("card_declined", "generic_decline", "Your card was declined.")
_NO_FUNDS = ("card_declined", "insufficient_funds", "Your card has insufficient funds.")
_EXPIRED = ("expired_card", "expired_card", "Your card has expired.")
# Stripe's test PaymentMethods and tokens (docs.stripe.com/testing) -> what confirming them does:
# "succeeds", "3ds", or a decline as (code, decline_code, message).
Outcome = str | tuple[str, str, str]
PAYMENT_METHODS: dict[str, Outcome] = {
    "pm_card_visa": "succeeds",
    "pm_card_visa_debit": "succeeds",
    "pm_card_mastercard": "succeeds",
    "pm_card_amex": "succeeds",
    "pm_card_chargeDeclined": _GENERIC,
    "pm_card_visa_chargeDeclined": _GENERIC,
    "pm_card_chargeDeclinedInsufficientFunds": _NO_FUNDS,
    "pm_card_visa_chargeDeclinedInsufficientFunds": _NO_FUNDS,
    "pm_card_chargeDeclinedExpiredCard": _EXPIRED,
    "pm_card_threeDSecure2Required": "3ds",
    "pm_card_threeDSecureRequired": "3ds",
    "pm_card_authenticationRequired": "3ds",
}
TOKENS: dict[str, Outcome] = {
    "tok_visa": "succeeds",
    "tok_visa_debit": "succeeds",
    "tok_mastercard": "succeeds",
    "tok_amex": "succeeds",
    "tok_chargeDeclined": _GENERIC,
    "tok_visa_chargeDeclined": _GENERIC,
    "tok_chargeDeclinedInsufficientFunds": _NO_FUNDS,
    "tok_visa_chargeDeclinedInsufficientFunds": _NO_FUNDS,
    "tok_chargeDeclinedExpiredCard": _EXPIRED,
    "tok_threeDSecure2Required": "3ds",
    "tok_threeDSecureRequired": "3ds",
    "tok_authenticationRequired": "3ds",
}
# As live Stripe lists them in its "Invalid currency" message.
CURRENCIES = (
    "usd, aed, afn, all, amd, ang, aoa, ars, aud, awg, azn, bam, bbd, bdt, bgn, bhd, bif, bmd, bnd, bob, "
    "brl, bsd, bwp, byn, bzd, cad, cdf, chf, clp, cny, cop, crc, cve, czk, djf, dkk, dop, dzd, egp, etb, "
    "eur, fjd, fkp, gbp, gel, gip, gmd, gnf, gtq, gyd, hkd, hnl, hrk, htg, huf, idr, ils, inr, isk, jmd, "
    "jod, jpy, kes, kgs, khr, kmf, krw, kwd, kyd, kzt, lak, lbp, lkr, lrd, lsl, mad, mdl, mga, mkd, mmk, "
    "mnt, mop, mro, mur, mvr, mwk, mxn, myr, mzn, nad, ngn, nio, nok, npr, nzd, omr, pab, pen, pgk, php, "
    "pkr, pln, pyg, qar, ron, rsd, rub, rwf, sar, sbd, scr, sek, sgd, shp, sle, sll, sos, srd, std, szl, "
    "thb, tjs, tnd, top, try, ttd, twd, tzs, uah, ugx, uyu, uzs, vnd, vuv, wst, xaf, xcd, xof, xpf, yer, "
    "zar, zmw, usdc, btn, ghs, eek, lvl, svc, vef, ltl"
)
SUPPORTED_CURRENCIES = frozenset(CURRENCIES.split(", "))
# Minimum charge amounts in minor units (docs.stripe.com/currencies#minimum-and-maximum-charge-amounts) and
# how Stripe writes them; currencies not listed must convert to at least 50 US cents, which the fake does
# not check.
MINIMUM_AMOUNTS: dict[str, tuple[int, str]] = {
    "usd": (50, "$0.50"),
    "aud": (50, "$0.50"),
    "cad": (50, "$0.50"),
    "eur": (50, "\u20ac0.50"),
    "gbp": (30, "\u00a30.30"),
    "jpy": (50, "\u00a550"),
}


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
        status, payload, executed = _create_intent(_unflatten(items), state)
        body = json.dumps(payload).encode()
        if key is not None and executed:
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
                    "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
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


Refusal = tuple[int, dict[str, Any]]


def _invalid(message: str, param: str, code: str | None = None, **extra: Any) -> Refusal:
    error: dict[str, Any] = {"type": "invalid_request_error", "message": message, "param": param}
    if code is not None:
        error.update(code=code, doc_url=f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}")
    return 400, {"error": {**error, **extra}}


def _missing(param: str) -> Refusal:
    return _invalid(f"Missing required param: {param}.", param, "parameter_missing")


def _no_such_payment_method(pm: str) -> Refusal:
    return _invalid(
        f"No such PaymentMethod: '{pm}'; It's possible this PaymentMethod exists on one of your connected "
        "accounts, in which case you should retry this request on that connected account. Learn more at "
        "https://stripe.com/docs/connect/authentication",
        "payment_method",
        "resource_missing",
    )


def _check_amount(params: dict[str, Any]) -> Refusal | int:
    """The amount in minor units, or Stripe's refusal of it (checked before the currency, as Stripe does)."""
    if not params.get("amount"):
        return _missing("amount")
    raw = params["amount"]
    if not isinstance(raw, str) or not raw.lstrip("-").isdigit():
        return _invalid(f"Invalid integer: {raw}", "amount", "parameter_invalid_integer")
    amount = int(raw)
    if amount < 1:
        return _invalid(
            "This value must be greater than or equal to 1.", "amount", "parameter_invalid_integer"
        )
    return amount


def _check_currency(params: dict[str, Any], amount: int) -> Refusal | str:
    if not params.get("currency"):
        return _missing("currency")
    raw = params["currency"]
    currency = raw.lower() if isinstance(raw, str) else ""
    if currency not in SUPPORTED_CURRENCIES:
        return _invalid(
            f"Invalid currency: {raw}. Stripe currently supports these currencies: {CURRENCIES}", "currency"
        )
    minimum = MINIMUM_AMOUNTS.get(currency)
    if minimum is not None and amount < minimum[0]:
        return _invalid(f"Amount must be at least {minimum[1]} {currency}", "amount", "amount_too_small")
    return currency


def _payment_method_of(
    params: dict[str, Any],
) -> tuple[int, dict[str, Any]] | tuple[str | None, Outcome | None]:
    """``(PaymentMethod id, outcome)`` from ``payment_method`` or ``payment_method_data``, ``(None, None)``
    when neither was sent, or Stripe's refusal."""
    pm, data = params.get("payment_method"), params.get("payment_method_data")
    if pm is not None and data is not None:
        return _invalid(
            "You may only specify one of these parameters: payment_method, payment_method_data.",
            "payment_method_data",
            "parameters_exclusive",
        )
    if pm is not None:
        pm = str(pm)
        if pm.startswith("tok_"):
            return _invalid(
                "A token may not be passed in as a PaymentMethod. Instead, use payment_method_data with "
                f"type=card and card[token]={pm}.",
                "payment_method",
            )
        if pm not in PAYMENT_METHODS:
            return _no_such_payment_method(pm)
        return pm, PAYMENT_METHODS[pm]
    if data is None:
        return None, None
    if not isinstance(data, dict) or not data.get("type"):
        return _missing("payment_method_data[type]")
    if data["type"] != "card":
        return _invalid(
            "This local Stripe knows only card PaymentMethods made from test tokens.",
            "payment_method_data[type]",
        )
    card = data.get("card")
    token = card.get("token") if isinstance(card, dict) else None
    if not token:
        return _missing("payment_method_data[card][token]")
    if token not in TOKENS:
        return _invalid(f"No such token: '{token}'", "payment_method_data[card][token]", "resource_missing")
    return _new_id("pm"), TOKENS[str(token)]


def _create_intent(params: dict[str, Any], state: StripeState) -> tuple[int, dict[str, Any], bool]:
    """Stripe's create-PaymentIntent semantics for card test payment methods.

    Returns (status, body, executed): ``executed`` is false when the parameters were refused before any
    object was made, and Stripe's idempotency layer then stores nothing.
    """
    amount = _check_amount(params)
    if isinstance(amount, tuple):
        return (*amount, False)
    currency = _check_currency(params, amount)
    if isinstance(currency, tuple):
        return (*currency, False)
    found = _payment_method_of(params)
    if isinstance(found[0], int):
        return (found[0], found[1], False)
    pm, outcome = found
    confirm = params.get("confirm") == "true"
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
        "currency": currency,
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
        return 200, intent, True
    if pm is None:
        status, body = _invalid(
            "You cannot confirm this PaymentIntent because it's missing a payment method. You can either "
            "update the PaymentIntent with a payment method and then confirm it again, or confirm it again "
            "directly with a payment method.",
            "payment_method",
            "payment_intent_unexpected_state",
            payment_intent=intent,
        )
        return status, body, True
    if outcome == "succeeds":
        intent.update(status="succeeded", amount_received=amount, latest_charge=_new_id("ch"))
        return 200, intent, True
    if outcome == "3ds":
        return 200, _needs_authentication(intent, params.get("return_url")), True
    assert isinstance(outcome, tuple)
    code, decline_code, message = outcome
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
    return 402, {"error": {**error, "payment_intent": intent}}, True


def _needs_authentication(intent: dict[str, Any], return_url: Any) -> dict[str, Any]:
    pi_id = intent["id"]
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
            "use_stripe_sdk": {"type": "stripe_3ds2_fingerprint", "three_d_secure_2_source": _new_id("src")},
        }
    intent.update(status="requires_action", next_action=action)
    return intent


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
