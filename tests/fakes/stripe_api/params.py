"""Stripe's checks of the create-PaymentIntent parameters: each refusal with the real status and body.

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
"""

from __future__ import annotations

from typing import Any

from tests.fakes.stripe_api.cards import (
    CURRENCIES,
    MINIMUM_AMOUNTS,
    PAYMENT_METHODS,
    SUPPORTED_CURRENCIES,
    TOKENS,
    Outcome,
)
from tests.fakes.stripe_api.state import new_id

Refusal = tuple[int, dict[str, Any]]


def invalid(message: str, param: str, code: str | None = None, **extra: Any) -> Refusal:
    """A 400 ``invalid_request_error`` about ``param`` (with ``code`` and its ``doc_url`` when given)."""
    error: dict[str, Any] = {"type": "invalid_request_error", "message": message, "param": param}
    if code is not None:
        error.update(code=code, doc_url=f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}")
    return 400, {"error": {**error, **extra}}


def missing(param: str) -> Refusal:
    """400 ``parameter_missing``: "Missing required param: <param>." """
    return invalid(f"Missing required param: {param}.", param, "parameter_missing")


def _no_such_payment_method(pm: str) -> Refusal:
    return invalid(
        f"No such PaymentMethod: '{pm}'; It's possible this PaymentMethod exists on one of your connected "
        "accounts, in which case you should retry this request on that connected account. Learn more at "
        "https://stripe.com/docs/connect/authentication",
        "payment_method",
        "resource_missing",
    )


def check_amount(params: dict[str, Any]) -> Refusal | int:
    """The amount in minor units, or Stripe's refusal of it (checked before the currency, as Stripe does)."""
    if not params.get("amount"):
        return missing("amount")
    raw = params["amount"]
    if not isinstance(raw, str) or not raw.lstrip("-").isdigit():
        return invalid(f"Invalid integer: {raw}", "amount", "parameter_invalid_integer")
    amount = int(raw)
    if amount < 1:
        return invalid(
            "This value must be greater than or equal to 1.", "amount", "parameter_invalid_integer"
        )
    return amount


def check_currency(params: dict[str, Any], amount: int) -> Refusal | str:
    """The lower-case currency, or Stripe's refusal of it (or of an amount under its minimum)."""
    currency = known_currency(params.get("currency"), "currency")
    if isinstance(currency, tuple):
        return currency
    minimum = MINIMUM_AMOUNTS.get(currency)
    if minimum is not None and amount < minimum[0]:
        return invalid(f"Amount must be at least {minimum[1]} {currency}", "amount", "amount_too_small")
    return currency


def known_currency(raw: Any, param: str) -> Refusal | str:
    """The lower-case currency sent as ``param``, or Stripe's refusal of it (missing, or not supported)."""
    if not raw:
        return missing(param)
    currency = raw.lower() if isinstance(raw, str) else ""
    if currency not in SUPPORTED_CURRENCIES:
        return invalid(
            f"Invalid currency: {raw}. Stripe currently supports these currencies: {CURRENCIES}", param
        )
    return currency


def payment_method_of(
    params: dict[str, Any],
) -> tuple[int, dict[str, Any]] | tuple[str | None, Outcome | None]:
    """``(PaymentMethod id, outcome)`` from ``payment_method`` or ``payment_method_data``, ``(None, None)``
    when neither was sent, or Stripe's refusal."""
    pm, data = params.get("payment_method"), params.get("payment_method_data")
    if pm is not None and data is not None:
        return invalid(
            "You may only specify one of these parameters: payment_method, payment_method_data.",
            "payment_method_data",
            "parameters_exclusive",
        )
    if pm is not None:
        pm = str(pm)
        if pm.startswith("tok_"):
            return invalid(
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
        return missing("payment_method_data[type]")
    if data["type"] != "card":
        return invalid(
            "This local Stripe knows only card PaymentMethods made from test tokens.",
            "payment_method_data[type]",
        )
    card = data.get("card")
    token = card.get("token") if isinstance(card, dict) else None
    if not token:
        return missing("payment_method_data[card][token]")
    if token not in TOKENS:
        return invalid(f"No such token: '{token}'", "payment_method_data[card][token]", "resource_missing")
    return new_id("pm"), TOKENS[str(token)]
