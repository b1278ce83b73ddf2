"""What every console page shares: the signed-in person, forms guarded by a CSRF token, calling tools, and
rendering templates under a strict Content-Security-Policy.

The session is the access token of an ordinary login (the ``auth_login`` tool), kept in an HttpOnly,
SameSite=Lax cookie (Secure over https), and its refresh token in a second cookie that only sign-out
reads (to end the login through ``auth_logout``). A page acts as that login, so scopes, guardrails and
error messages are those of the API.

CSRF: a random nonce lives in its own cookie; every form carries ``csrf_token``, an HMAC of the nonce
under the server's secret, checked on each POST. A page from another site can neither read the nonce nor
compute the token.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from pydantic import BaseModel
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from aiserve_mcp.core.errors import AiserveError, Forbidden, ValidationFailed
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.money.guardrails import NAMED_WINDOWS
from aiserve_mcp.protocols.prelude import client_address, services_of
from aiserve_mcp.protocols.websocket import SESSION_COOKIE
from aiserve_mcp.tools import REGISTRY
from aiserve_mcp.tools.registry import Surface, ToolContext
from aiserve_mcp.tools.runner import call_tool

CONSOLE: Final = "/console"
REFRESH_COOKIE: Final = "aiserve_refresh"
CSRF_COOKIE: Final = "aiserve_csrf"
CSRF_FIELD: Final = "csrf_token"
_CSRF_PURPOSE: Final = "console-csrf"
BUDGET_WINDOWS: Final = tuple(NAMED_WINDOWS)
"""The windows a budget form offers (hourly, daily, weekly, monthly) to an API key or a connected app."""

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")


class SignInNeeded(Exception):
    """Raised by :func:`person` when nobody is signed in; answered with a redirect to the sign-in page."""


class CsrfRefused(Forbidden):
    """A form arrived without the CSRF token of this browser."""


def secure_cookies(request: Request) -> bool:
    """Cookies are ``Secure`` when the console is reached over https (directly or, as the operator
    declares with ``AISERVE_PUBLIC_URL``, behind a TLS proxy)."""
    public_url = services_of(request.scope).settings.public_url or ""
    return request.url.scheme == "https" or public_url.startswith("https://")


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
    )


async def signed_in(request: Request) -> Principal | None:
    """The person signed in to the console, or ``None`` (no session, or one that ended or expired)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return await services_of(request.scope).accounts.authenticate(token)
    except AiserveError:
        return None


async def person(request: Request) -> Principal:
    """The signed-in person; ``SignInNeeded`` (a redirect to the sign-in page) when there is none."""
    principal = await signed_in(request)
    if principal is None:
        raise SignInNeeded
    return principal


def _csrf_token(request: Request, nonce: str) -> str:
    return services_of(request.scope).accounts.mac(_CSRF_PURPOSE, nonce)


async def checked_form(request: Request) -> FormData:
    """The submitted form, once its ``csrf_token`` matches this browser's nonce (else ``CsrfRefused``)."""
    form = await request.form()
    nonce = request.cookies.get(CSRF_COOKIE)
    sent = form.get(CSRF_FIELD)
    if not nonce or not isinstance(sent, str) or not hmac.compare_digest(sent, _csrf_token(request, nonce)):
        raise CsrfRefused("the form's security token is missing or stale: reload the page and try again")
    return form


def form_text(form: Mapping[str, Any], name: str, *, strip: bool = True) -> str:
    """The text of the form (or query) field ``name``; ``""`` when it is absent or a file."""
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    return value.strip() if strip else value


def form_usd(text: str, field: str) -> Decimal:
    """The USD amount typed into ``field`` (the tool checks its range); ``ValidationFailed`` naming the
    field when it is not a number."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite():
        message = f"{field}: '{text}' is not an amount in USD (such as 25 or 12.50)"
        raise ValidationFailed(message, {"field": field})
    return amount


def form_budget(form: Mapping[str, Any]) -> dict[str, Decimal]:
    """A budget form's amounts (fields ``budget.<window>`` for each of ``BUDGET_WINDOWS``), window -> USD;
    empty fields give none."""
    texts = {window: form_text(form, f"budget.{window}") for window in BUDGET_WINDOWS}
    return {window: form_usd(text, f"{window} budget") for window, text in texts.items() if text}


async def act(
    request: Request, principal: Principal | None, tool_name: str, arguments: Mapping[str, Any]
) -> BaseModel:
    """Call the tool ``tool_name`` as ``principal``, exactly as the API would (raises ``AiserveError``)."""
    services = services_of(request.scope)
    ctx = ToolContext(
        services=services,
        principal=principal,
        surface=Surface.CONSOLE,
        client_address=client_address(request.scope, services.settings.trust_forwarded_for),
    )
    return await call_tool(REGISTRY.get(tool_name), arguments, ctx)


def content_security_policy(form_targets: Iterable[str]) -> str:
    """No inline script or style anywhere; forms may post (and be redirected) only to this origin and
    ``form_targets``."""
    targets = " ".join(["'self'", *form_targets])
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'; form-action {targets}; frame-ancestors 'none'; base-uri 'none'"
    )


def secured(response: Response, form_targets: Iterable[str] = ()) -> Response:
    """``response`` with the console's security headers."""
    response.headers["Content-Security-Policy"] = content_security_policy(form_targets)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


async def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    form_targets: Iterable[str] = (),
) -> HTMLResponse:
    """Render ``templates/<template>`` with ``csrf_token``, ``user`` (the signed-in person or None) and
    ``path`` added to ``context``."""
    nonce = request.cookies.get(CSRF_COOKIE)
    fresh = not nonce
    nonce = nonce or secrets.token_urlsafe(32)
    full = {
        "csrf_token": _csrf_token(request, nonce),
        "user": context.get("user", await signed_in(request)),
        "path": request.url.path,
        **context,
    }
    response = TEMPLATES.TemplateResponse(request, template, full, status_code=status)
    if fresh:
        set_cookie(request, response, CSRF_COOKIE, nonce, max_age=None)
    secured(response, form_targets)
    return response


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never ``//host`` or another origin)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return CONSOLE
    return target


def see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303)


async def sign_in_needed(request: Request, exc: Exception) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return secured(see_other(f"{CONSOLE}/sign-in?next={quote(target, safe='')}"))


async def csrf_refused(request: Request, exc: Exception) -> Response:
    return await render(request, "refused.html", {"error": str(exc)}, status=403)


EXCEPTION_HANDLERS: Final = {SignInNeeded: sign_in_needed, CsrfRefused: csrf_refused}
