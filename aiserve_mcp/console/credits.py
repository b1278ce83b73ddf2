"""``/console/credits``: the balance and recent transactions (``list_transactions``), and buying credits on
a hosted payment page: the form opens one (``create_checkout_link``) and sends the browser there; the page
sends the payer back here with ``?checkout=success`` or ``?checkout=cancelled``.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiserve_mcp.console.sections import usd
from aiserve_mcp.console.web import (
    act,
    checked_form,
    form_text,
    form_usd,
    person,
    render,
    secured,
    see_other,
)
from aiserve_mcp.core.errors import AiserveError, kind_of
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.protocols.prelude import services_of
from aiserve_mcp.tools.billing import TransactionsOutput
from aiserve_mcp.tools.checkout import CREDITS_PAGE, CheckoutLinkOutput
from aiserve_mcp.tools.upload_links import public_base_url

STRIPE_CHECKOUT_ORIGIN: Final = "https://checkout.stripe.com"
NOTICES: Final = {
    "success": "Thank you: your payment is being confirmed. The credits appear here as soon as it is "
    "(usually within seconds; a bank debit can take a few days).",
    "cancelled": "Checkout cancelled: nothing was charged.",
}


def checkout_origins(request: Request) -> tuple[str, str]:
    """Where a checkout form's answer may redirect the browser: Stripe's checkout page, or this server's
    public address (the sandbox's stand-in page, and the way back from it)."""
    parts = urlsplit(public_base_url(services_of(request.scope).settings))
    return STRIPE_CHECKOUT_ORIGIN, f"{parts.scheme}://{parts.netloc}"


async def _page(request: Request, principal: Principal, *, status: int = 200, **context: Any) -> Response:
    ledger = await act(request, principal, "list_transactions", {"limit": 10})
    assert isinstance(ledger, TransactionsOutput)
    gateway = services_of(request.scope).payments
    full = {
        "user": principal,
        "credits": usd(ledger.credits),
        "held": usd(ledger.held),
        "transactions": ledger.transactions,
        "usd": usd,
        "gateway": gateway.name if gateway is not None else None,
        "notice": NOTICES.get(request.query_params.get("checkout", "")),
        **context,
    }
    return await render(request, "credits.html", full, status=status, form_targets=checkout_origins(request))


async def credits(request: Request) -> Response:
    """``GET`` shows the balance and the form (``amount_usd``); ``POST`` opens a checkout page for that
    amount and answers 303 to it (the form again, with the error, when the tool refuses)."""
    principal = await person(request)
    if request.method == "GET":
        return await _page(request, principal)
    form = await checked_form(request)
    raw = form_text(form, "amount_usd")
    try:
        link = await act(
            request, principal, "create_checkout_link", {"amount_usd": form_usd(raw, "amount_usd")}
        )
    except AiserveError as exc:
        return await _page(request, principal, status=kind_of(exc).http_status, error=exc.message, amount=raw)
    assert isinstance(link, CheckoutLinkOutput)
    return secured(see_other(link.url), checkout_origins(request))


routes = [Route(CREDITS_PAGE, credits, methods=["GET", "POST"])]
