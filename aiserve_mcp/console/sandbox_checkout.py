"""``/console/checkout/sandbox/{id}``: the payment sandbox's stand-in for Stripe's checkout page. It shows
what the session sells, a Pay button (a form, with the CSRF token) that pays it and credits its user
through the same exactly-once path as Stripe's webhook, then goes on to the session's ``success_url``, and
a Cancel link to its ``cancel_url``.

Like Stripe's page it needs no sign-in: the link is what lets its holder pay. It exists only while the
server runs the sandbox gateway (``AISERVE_BILLING_SANDBOX``); elsewhere it is a 404.
"""

from __future__ import annotations

from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiserve_mcp.console.credits import checkout_origins
from aiserve_mcp.console.sections import usd
from aiserve_mcp.console.web import checked_form, render, secured, see_other
from aiserve_mcp.core.errors import AiserveError, kind_of
from aiserve_mcp.money.payments.sandbox import SANDBOX_CHECKOUT_PATH
from aiserve_mcp.protocols.prelude import tool_context
from aiserve_mcp.tools.checkout import CREDITS_PAGE, PRODUCT_NAME, pay_sandbox_checkout, sandbox_checkout
from aiserve_mcp.tools.registry import Surface


async def checkout_page(request: Request) -> Response:
    """``GET`` shows the session; ``POST`` pays it and answers 303 to its ``success_url``."""
    ctx = tool_context(request.scope, Surface.CONSOLE)
    session_id = request.path_params["session_id"]
    try:
        if request.method == "POST":
            await checked_form(request)
            paid = await pay_sandbox_checkout(ctx, session_id)
            return secured(see_other(paid.success_url or CREDITS_PAGE), checkout_origins(request))
        session = sandbox_checkout(ctx, session_id)
    except AiserveError as exc:
        status = kind_of(exc).http_status
        return await render(request, "sandbox_checkout.html", {"error": exc.message}, status=status)
    context = {
        "session": session,
        "amount": usd(Decimal(session.amount_minor) / 100),
        "product": PRODUCT_NAME,
    }
    return await render(request, "sandbox_checkout.html", context, form_targets=checkout_origins(request))


routes = [Route(SANDBOX_CHECKOUT_PATH + "{session_id}", checkout_page, methods=["GET", "POST"])]
