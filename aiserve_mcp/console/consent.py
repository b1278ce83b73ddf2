"""The OAuth consent page: where ``/authorize`` sends a person's browser (``?request=<id>``) to connect an
app (an MCP host) to their account.

It needs a signed-in person (else the sign-in page, which comes back here). It names the app, the host its
answer goes back to and the scopes it asks for, as checkboxes: ticked, except ``guardrails:admin`` and
``admin``, which are offered only when the app names them and stay unticked until the person ticks them.
The person may also give the app its own budget per window, as for an API key. ``Allow`` grants the ticked
scopes and answers with a redirect to the app carrying the authorization code; ``Deny`` with
``error=access_denied``. Both carry ``state`` and ``iss`` (RFC 9207).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final
from urllib.parse import urlsplit

from mcp.server.auth.provider import construct_redirect_uri
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiserve_mcp.accounts.oauth_requests import AuthorizationRequests, PendingAuthorization, Redirect
from aiserve_mcp.console.web import (
    BUDGET_WINDOWS,
    CONSOLE,
    checked_form,
    form_budget,
    form_text,
    person,
    render,
    secured,
    see_other,
)
from aiserve_mcp.core.errors import AiserveError, ValidationFailed, kind_of
from aiserve_mcp.core.principal import SCOPES, WITHHELD_BY_DEFAULT, Principal
from aiserve_mcp.money.guardrails import grant_scope
from aiserve_mcp.protocols.oauth.urls import OAuthUrls
from aiserve_mcp.protocols.prelude import services_of
from aiserve_mcp.tools.guardrails import Limit

CONSENT_PATH: Final = f"{CONSOLE}/oauth/consent"
_LIMIT: Final = TypeAdapter(Limit)


@dataclass(frozen=True)
class ScopeChoice:
    name: str
    description: str
    checked: bool


def _destination(uri: str) -> tuple[str, str]:
    """Where a redirect to ``uri`` goes, to show (``https://host:port``, ``app-scheme://host`` or
    ``app-scheme:``), and as the CSP source that lets a form be redirected there."""
    parts = urlsplit(uri)
    shown = f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"{parts.scheme}:"
    return shown, shown if parts.scheme in ("http", "https") else f"{parts.scheme}:"


def _budget(form: FormData) -> dict[str, Decimal]:
    """The budget the form gives the app, window -> USD (empty fields give none), within a limit's range."""
    budget = form_budget(form)
    for window, amount in budget.items():
        try:
            _LIMIT.validate_python(amount)
        except ValidationError:
            message = f"{window} budget: {amount} USD is out of range (0 to 10,000,000, cents at most)"
            raise ValidationFailed(message, {"field": f"budget.{window}"}) from None
    return budget


async def _page(
    request: Request,
    principal: Principal,
    pending: PendingAuthorization,
    form: FormData | None = None,
    *,
    status: int = 200,
    **context: Any,
) -> Response:
    """The consent form for ``pending``; with ``form`` (a refused submission), its choices again."""
    offered = AuthorizationRequests.offered_scopes(pending, principal)
    shown, source = _destination(pending.redirect_uri)
    chosen = set(form.getlist("scope")) if form is not None else set(offered) - WITHHELD_BY_DEFAULT
    full = {
        "user": principal,
        "pending": pending,
        "redirect_host": shown,
        "scopes": [ScopeChoice(s, SCOPES[s], s in chosen) for s in offered],
        "budget_windows": BUDGET_WINDOWS,
        "budget": {w: form_text(form, f"budget.{w}") for w in BUDGET_WINDOWS} if form is not None else {},
        **context,
    }
    return await render(request, "consent.html", full, status=status, form_targets=(source,))


def _back_to_app(request: Request, redirect: Redirect) -> Response:
    """The browser's way back to the app: ``redirect`` with this server's issuer (RFC 9207)."""
    issuer = OAuthUrls.from_settings(services_of(request.scope).settings).issuer
    return secured(see_other(construct_redirect_uri(redirect.uri, **redirect.params, iss=issuer)))


async def consent(request: Request) -> Response:
    """``GET ?request=<id>``: the consent form. ``POST``: the decision (``decision`` = ``allow`` with the
    ticked ``scope`` fields and ``budget.<window>`` amounts, or ``deny``)."""
    principal = await person(request)
    authorizations = services_of(request.scope).oauth.requests
    form = await checked_form(request) if request.method == "POST" else None
    request_id = form_text(form, "request") if form is not None else request.query_params.get("request", "")
    try:
        pending = await authorizations.pending(request_id)
    except AiserveError as exc:
        return await render(request, "consent.html", {"error": exc.message}, status=kind_of(exc).http_status)
    if form is None:
        return await _page(request, principal, pending)
    try:
        if form_text(form, "decision") != "allow":
            return _back_to_app(request, await authorizations.deny(request_id))
        budget = _budget(form)
        scopes = [s for s in form.getlist("scope") if isinstance(s, str)]
        grant_id, redirect = await authorizations.approve(request_id, principal, scopes)
    except AiserveError as exc:
        status = kind_of(exc).http_status
        return await _page(request, principal, pending, form, error=exc.message, status=status)
    if budget:
        await services_of(request.scope).costs.guardrails.set_limits(principal, grant_scope(grant_id), budget)
    return _back_to_app(request, redirect)


routes = [Route(CONSENT_PATH, consent, methods=["GET", "POST"])]
