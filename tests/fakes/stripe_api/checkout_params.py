"""Stripe's checks of the create-Checkout-Session parameters (API 2026-10-28, the pinned SDK's), each
refusal with the real status and body where it is sourced.

* Parameters the API version does not have: 400 ``parameter_unknown`` "Received unknown parameter: X" (the
  known names are those of the pinned SDK's ``SessionCreateParams`` and its line-item types). The line
  item fields removed in 2022-08-01 (``line_items[][amount|currency|name|description|images]``,
  docs.stripe.com/changelog/2022-08-01/replaces-line-item-create-checkout-session) are refused with the
  live message quoted in antoniopapa/django-ambassador#3 and dualcube/moodle-enrol_stripepayment#109.
* ``ui_mode`` (docs.stripe.com/changelog/dahlia/2026-03-25/updates-available-checkout-session-ui-modes):
  ``hosted_page`` (default), ``embedded_page``, ``elements``, ``form``; the old ``hosted``, ``embedded``
  and ``custom`` fail ("Invalid ui_mode: must be one of ...", Stripe's wording for enums, not sourced for
  this one). Outside ``hosted_page``, ``success_url``/``cancel_url`` are refused: "The following parameters
  are not supported with 'ui_mode: X': cancel_url, success_url." (laravel/cashier-stripe#1815); the fake
  serves hosted pages only.
* ``mode``: missing is ``parameter_missing`` (the API reference: required when line items use prices,
  beam-community/stripity-stripe#660); ``setup`` with ``line_items`` is "You can not pass `line_items` in
  `setup` mode." (invertase/stripe-firebase-extensions#700); the fake knows ``payment`` mode only.
  ``payment`` mode needs ``line_items`` (the SDK's docs of the parameter; ``parameter_missing``).
* ``success_url`` is required on a hosted page: ``parameter_missing`` (Stripe staff in
  stripe/stripe-node#1944, API 2023-10-16). A URL that is not absolute http(s) is ``url_invalid`` "Not a
  valid URL" with its param (AntonioErdeljac/next13-ai-saas#40, manishkatyan/strapi-stripe#104); one over
  5000 characters is "Invalid URL: URL must be 5000 characters or less." (vm0-ai/vm0#25340).
* ``expires_at``: 30 minutes to (less than) 24 hours after creation (docs.stripe.com/api/checkout/sessions/
  create; stripe/stripe-go#1550): "The `expires_at` timestamp must be at least 30 minutes from Checkout
  Session creation." (the 2022 text said 60, skillrecordings/products#344) and "The `expires_at`
  timestamp must be less than 24 hours from Checkout Session creation." (alexmorrisnz/moodle-paygw_stripe#72).
* Each line item: ``price`` or ``price_data`` ("You must provide either price or price_data for each line
  item when using prices.", exercism/website#7149; the fake knows no Price objects, so ``price`` is
  ``resource_missing``); ``quantity`` ("Quantity is required. Add `quantity` to `line_items[0]`",
  stripe/stripe-java#1584; its ``param`` is our assumption), an integer >= 1. ``price_data``: ``currency``
  as for PaymentIntents; ``product_data[name]`` (or a ``product``, which the fake does not know; neither is
  "You must specify either `product` or `product_data` when creating a price.", not sourced);
  ``unit_amount`` an integer >= 0 (``unit_amount_decimal`` and ``recurring`` are beyond the fake).
* The total must reach the currency's minimum charge (docs.stripe.com/currencies#minimum-and-maximum-
  charge-amounts); the message, "The Checkout Session's total amount due must add up to at least $0.50
  usd", is not sourced, and neither is the one for line items of different currencies.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlsplit

from stripe._request_options import RequestOptions
from stripe.params.checkout import SessionCreateParams
from stripe.params.checkout._session_create_params import (
    SessionCreateParamsLineItem,
    SessionCreateParamsLineItemPriceData,
    SessionCreateParamsLineItemPriceDataProductData,
)
from typing_extensions import TypeIs

from tests.fakes.stripe_api.cards import MINIMUM_AMOUNTS
from tests.fakes.stripe_api.params import Refusal, invalid, known_currency, missing


def _keys(typed: Any) -> frozenset[str]:
    return frozenset(typed.__required_keys__ | typed.__optional_keys__)


_KNOWN = _keys(SessionCreateParams) - _keys(RequestOptions)
_ITEM_KEYS = _keys(SessionCreateParamsLineItem)
_PRICE_DATA_KEYS = _keys(SessionCreateParamsLineItemPriceData)
_PRODUCT_DATA_KEYS = _keys(SessionCreateParamsLineItemPriceDataProductData)
_LEGACY_ITEM_KEYS = ("amount", "currency", "name", "description", "images")
UI_MODES = ("elements", "embedded_page", "form", "hosted_page")
MAX_URL = 5000
MIN_LIFETIME_S, MAX_LIFETIME_S = 30 * 60, 24 * 3600


T = TypeVar("T", int, str, tuple[int, str])


def refused(value: Refusal | T) -> TypeIs[Refusal]:
    """Whether a check answered a refusal (``(status, body)``) rather than its value."""
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict)


def _unknown(name: str) -> Refusal:
    return invalid(f"Received unknown parameter: {name}", name, "parameter_unknown")


def _beyond_the_fake(what: str, param: str) -> Refusal:
    return invalid(f"This local Stripe does not know {what}.", param)


def _integer(raw: Any, param: str, minimum: int) -> Refusal | int:
    if not isinstance(raw, str) or not raw.lstrip("-").isdigit():
        return invalid(f"Invalid integer: {raw}", param, "parameter_invalid_integer")
    if int(raw) < minimum:
        return invalid(
            f"This value must be greater than or equal to {minimum}.", param, "parameter_invalid_integer"
        )
    return int(raw)


def _url(params: dict[str, Any], name: str) -> Refusal | None:
    url = params.get(name)
    if url is None:
        return None
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        return invalid("Not a valid URL", name, "url_invalid")
    if len(str(url)) > MAX_URL:
        return invalid(f"Invalid URL: URL must be {MAX_URL} characters or less.", name, "url_invalid")
    return None


def check_session(params: dict[str, Any], now: int) -> Refusal | tuple[int, str]:
    """``(amount_total, currency)`` of a valid create request made at ``now``, or Stripe's refusal."""
    for name in params:
        if name not in _KNOWN:
            return _unknown(name)
    ui_mode = params.get("ui_mode", "hosted_page")
    if ui_mode not in UI_MODES:
        return invalid(
            f"Invalid ui_mode: must be one of {', '.join(UI_MODES[:-1])}, or {UI_MODES[-1]}", "ui_mode"
        )
    if ui_mode != "hosted_page":
        if "success_url" in params or "cancel_url" in params:
            return invalid(
                f"The following parameters are not supported with 'ui_mode: {ui_mode}': cancel_url, "
                "success_url.",
                "ui_mode",
            )
        return _beyond_the_fake(f"ui_mode={ui_mode} sessions", "ui_mode")
    refusal = _mode(params) or _urls(params) or _expiry(params, now)
    if refusal is not None:
        return refusal
    return _line_items(params["line_items"])


def _mode(params: dict[str, Any]) -> Refusal | None:
    mode = params.get("mode")
    if not mode:
        return missing("mode")
    if mode not in ("payment", "setup", "subscription"):
        return invalid("Invalid mode: must be one of payment, setup, or subscription", "mode")
    if mode == "setup" and "line_items" in params:
        return invalid("You can not pass `line_items` in `setup` mode.", "line_items")
    if mode != "payment":
        return _beyond_the_fake(f"{mode} mode", "mode")
    if not params.get("line_items"):
        return missing("line_items")
    return None


def _urls(params: dict[str, Any]) -> Refusal | None:
    if not params.get("success_url"):
        return missing("success_url")
    return _url(params, "success_url") or _url(params, "cancel_url")


def _expiry(params: dict[str, Any], now: int) -> Refusal | None:
    if "expires_at" not in params:
        return None
    expires_at = _integer(params["expires_at"], "expires_at", 0)
    if refused(expires_at):
        return expires_at
    if expires_at < now + MIN_LIFETIME_S:
        return invalid(
            "The `expires_at` timestamp must be at least 30 minutes from Checkout Session creation.",
            "expires_at",
        )
    if expires_at >= now + MAX_LIFETIME_S:
        return invalid(
            "The `expires_at` timestamp must be less than 24 hours from Checkout Session creation.",
            "expires_at",
        )
    return None


def _line_items(items: Any) -> Refusal | tuple[int, str]:
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        return invalid("Invalid array", "line_items")
    total, currencies = 0, set()
    for index, item in enumerate(items):
        priced = _line_item(item, f"line_items[{index}]")
        if refused(priced):
            return priced
        amount, currency = priced
        total += amount
        currencies.add(currency)
    if len(currencies) > 1:
        return invalid("Line items must all have the same currency.", "line_items")
    currency = currencies.pop()
    minimum = MINIMUM_AMOUNTS.get(currency)
    if minimum is not None and total < minimum[0]:
        return invalid(
            f"The Checkout Session's total amount due must add up to at least {minimum[1]} {currency}",
            "line_items",
        )
    return total, currency


def _line_item(item: dict[str, Any], at: str) -> Refusal | tuple[int, str]:
    """``(amount, currency)`` of one line item (``at`` is ``line_items[i]``), or Stripe's refusal."""
    if any(key in item for key in _LEGACY_ITEM_KEYS):
        return invalid(
            "You cannot use `line_items.amount`, `line_items.currency`, `line_items.name`, "
            "`line_items.description`, or `line_items.images` in this API version. Please use "
            "`line_items.price` or `line_items.price_data`. Please see "
            "https://stripe.com/docs/payments/checkout/migrating-prices for more information.",
            "line_items",
        )
    unknown = _unknown_key(item, _ITEM_KEYS, at)
    if unknown is not None:
        return unknown
    if "price" in item and "price_data" in item:
        return invalid(
            "You may only specify one of these parameters: price, price_data.", at, "parameters_exclusive"
        )
    if "price" in item:
        return invalid(f"No such price: '{item['price']}'", f"{at}[price]", "resource_missing")
    if not isinstance(item.get("price_data"), dict):
        return invalid(
            "You must provide either price or price_data for each line item when using prices.", at
        )
    if "quantity" not in item:
        return invalid(f"Quantity is required. Add `quantity` to `{at}`", f"{at}[quantity]")
    quantity = _integer(item["quantity"], f"{at}[quantity]", 1)
    if refused(quantity):
        return quantity
    priced = _price_data(item["price_data"], f"{at}[price_data]")
    if refused(priced):
        return priced
    return priced[0] * quantity, priced[1]


def _price_data(data: dict[str, Any], at: str) -> Refusal | tuple[int, str]:
    unknown = _unknown_key(data, _PRICE_DATA_KEYS, at)
    if unknown is not None:
        return unknown
    currency = known_currency(data.get("currency"), f"{at}[currency]")
    if refused(currency):
        return currency
    for beyond in ("recurring", "unit_amount_decimal"):
        if beyond in data:
            return _beyond_the_fake(f"{beyond} prices", f"{at}[{beyond}]")
    if "product" in data and "product_data" in data:
        return invalid(
            "You may only specify one of these parameters: product, product_data.", at, "parameters_exclusive"
        )
    if "product" in data:
        return invalid(f"No such product: '{data['product']}'", f"{at}[product]", "resource_missing")
    product = data.get("product_data")
    if not isinstance(product, dict):
        return invalid("You must specify either `product` or `product_data` when creating a price.", at)
    unknown = _unknown_key(product, _PRODUCT_DATA_KEYS, f"{at}[product_data]")
    if unknown is not None:
        return unknown
    if not product.get("name"):
        return missing(f"{at}[product_data][name]")
    if "unit_amount" not in data:
        return missing(f"{at}[unit_amount]")
    unit_amount = _integer(data["unit_amount"], f"{at}[unit_amount]", 0)
    if refused(unit_amount):
        return unit_amount
    return unit_amount, str(currency)


def _unknown_key(given: dict[str, Any], known: frozenset[str], at: str) -> Refusal | None:
    for key in given:
        if key not in known:
            return _unknown(f"{at}[{key}]")
    return None
