"""HTTP admission: the ASGI middleware in front of every route (the error boundary, telemetry, then
authentication and rate limiting on the API), and its steps for a route answered before the middleware
(``rest_compat.fast_predict``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from aiserve_mcp.core.errors import AiserveError, AuthInvalid, RateLimited
from aiserve_mcp.core.outages import unexpected
from aiserve_mcp.core.ratelimit import Budget
from aiserve_mcp.protocols.prelude import ResponseStart, client_address, error_response, services_of

API_PREFIX = "/api/v1"
ADMITTED_PREFIXES = (API_PREFIX, "/v2")  # the REST API and the Open Inference Protocol


class ErrorBoundary:
    """The outermost layer: an exception that escapes every route still answers with the spec's error
    body (503 ``SERVICE_UNAVAILABLE`` for an outage of the database or Redis, else 500
    ``INTERNAL_ERROR``), never the framework's plain-text page; the server keeps serving."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watched = ResponseStart(send)
        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if watched.started:  # the status line is out: all that is left is to end the connection
                raise
            error = unexpected(exc, f"{scope['method']} {scope['path']}")
            await error_response(error)(scope, receive, send)


class TelemetryMiddleware:
    """Counts every HTTP request and measures its duration, labelled by route template (not raw path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with measured(scope, send) as watched:
            await self.app(scope, receive, watched)


@contextmanager
def measured(scope: Scope, send: Send, route: str | None = None) -> Iterator[Send]:
    """Count the request and measure its duration, labelled by ``route`` (by default the template of the
    route that answered it, ``unmatched`` when none did) and by the status it was answered with (500 when
    it never answered). Yields the ``send`` that records the status."""
    telemetry = services_of(scope).telemetry
    watched = ResponseStart(send)
    started = time.perf_counter()
    telemetry.request_started()
    try:
        yield watched
    finally:
        label = route or getattr(scope.get("route"), "path", None) or "unmatched"
        status = 500 if watched.status is None else watched.status
        telemetry.request_finished(scope["method"], label, status, time.perf_counter() - started)


def bearer_credential(headers: Headers) -> str | None:
    """The token or API key from ``Authorization: Bearer ...`` or ``X-API-Key``."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthInvalid("Authorization header must be 'Bearer <token or API key>'")
        return value.strip()
    api_key = headers.get("x-api-key")
    return api_key.strip() if api_key else None


async def admit(scope: Scope) -> Budget:
    """Resolve the caller (bad credentials are refused; missing ones leave ``principal`` None) into the
    scope's state, then spend one request of its budget (per user, or per address when anonymous)."""
    services = services_of(scope)
    settings = services.settings
    credential = bearer_credential(Headers(scope=scope))
    try:
        principal = None if credential is None else await services.accounts.authenticate(credential)
    except AiserveError:
        raise
    except Exception as exc:
        raise unexpected(exc, "authentication") from None
    scope.setdefault("state", {})["principal"] = principal
    key = (
        principal.rate_limit_key if principal else f"ip:{client_address(scope, settings.trust_forwarded_for)}"
    )
    return await services.rate_limiter.spend(key, settings.rate_limit)


def refusal_response(scope: Scope, error: AiserveError) -> Response:
    """The error response for a refused admission, with the rate-limit headers when it is a 429."""
    services = services_of(scope)
    headers = {}
    if isinstance(error, RateLimited):
        services.telemetry.rate_limit_refusals.labels("api").inc()
        headers = {
            "X-RateLimit-Limit": str(services.settings.rate_limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(error.retry_after_s),
        }
    return error_response(error, headers)


async def admission(scope: Scope, receive: Receive, send: Send) -> Budget | None:
    """Admit the request (``admit``): the caller's budget, or ``None`` once a refusal has been answered."""
    try:
        return await admit(scope)
    except AiserveError as exc:
        await refusal_response(scope, exc)(scope, receive, send)
        return None


async def admitted(scope: Scope, receive: Receive, send: Send) -> Send | None:
    """Admit the request (``admission``): the ``send`` that reports the caller's budget in
    ``X-RateLimit-*`` headers, or ``None`` once a refusal has been answered."""
    budget = await admission(scope, receive, send)
    if budget is None:
        return None
    return ResponseStart(send, lambda headers: headers.update(budget.headers()))


class AdmissionMiddleware:
    """On ``/api/v1`` and ``/v2``: resolve the caller (bad credentials are refused at once; missing ones
    are left to each route), then spend one request of the caller's budget (per user, or per address
    when anonymous) and report it in ``X-RateLimit-*`` headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(ADMITTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        budget_send = await admitted(scope, receive, send)
        if budget_send is not None:
            await self.app(scope, receive, budget_send)
