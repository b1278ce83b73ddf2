"""The "Limits & keys" page: spending limits per rolling window with what is spent in each, and the API
keys (created with scopes and a budget, the secret shown once, revoked), all through the guardrails and
account tools.

A new key's secret appears only in the answer to the form that created it: never in a URL, a cookie or the
session, and the page is sent with ``Cache-Control: no-store``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiserve_mcp.console.web import (
    BUDGET_WINDOWS,
    CONSOLE,
    act,
    checked_form,
    form_budget,
    form_text,
    form_usd,
    person,
    render,
    secured,
    see_other,
)
from aiserve_mcp.core.errors import AiserveError, ValidationFailed, kind_of
from aiserve_mcp.core.principal import SCOPES, WITHHELD_BY_DEFAULT, Principal
from aiserve_mcp.tools.account import ApiKeyInfo, ApiKeyList, CreateApiKeyOutput
from aiserve_mcp.tools.guardrails import LimitsOutput, SpendingOutput

KEYS: Final = f"{CONSOLE}/keys"
NOTICES: Final = {"limits": "Spending limits saved.", "revoked": "API key revoked."}


@dataclass(frozen=True)
class WindowRow:
    """One of the person's spending windows as the page shows it."""

    name: str
    spent: float
    limit: float
    frees_in: str


@dataclass(frozen=True)
class KeyRow:
    """One API key with its state and, while it works, its own budget."""

    key: ApiKeyInfo
    state: str
    budget: list[tuple[str, float]]


def duration(seconds: int) -> str:
    """``seconds`` to read at a glance: ``45 s``, ``12 min``, ``3 h 20 min``, ``2 d 4 h``."""
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86_400
    if hours == 0:
        return f"{minutes} min"
    if days == 0:
        return f"{hours} h {minutes % 60} min" if minutes % 60 else f"{hours} h"
    return f"{days} d {hours % 24} h" if hours % 24 else f"{days} d"


def _state(key: ApiKeyInfo, now: datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


async def _key_rows(request: Request, principal: Principal) -> list[KeyRow]:
    listed = await act(request, principal, "list_api_keys", {})
    assert isinstance(listed, ApiKeyList)
    now = datetime.now(UTC)
    rows = []
    for key in listed.api_keys:
        state, budget = _state(key, now), []
        if state == "active":
            limits = await act(request, principal, "get_spending_limits", {"api_key_id": key.id})
            assert isinstance(limits, LimitsOutput)
            budget = [(w.window, w.limit) for w in limits.limits]
        rows.append(KeyRow(key, state, budget))
    return rows


async def _page(
    request: Request, principal: Principal, context: dict[str, Any], status: int = 200
) -> Response:
    """The page with the person's windows and keys, and ``context`` (``created``, ``error``, ``notice``,
    ``form``: the key form's values to show again)."""
    spending = await act(request, principal, "get_spending", {})
    assert isinstance(spending, SpendingOutput)
    windows = [
        WindowRow(w["window"], w["spent"], w["limit"], duration(w["resets_in_s"]) if w["spent"] else "")
        for w in spending.windows
    ]
    default_form = {"name": "", "expires_on": "", "scopes": sorted(set(SCOPES) - WITHHELD_BY_DEFAULT)}
    form = context.get("form") or {**default_form, "budget": {}}
    full = {
        "user": principal,
        "windows": windows,
        "keys": await _key_rows(request, principal),
        "scopes": {s: d for s, d in SCOPES.items() if s != "admin" or principal.is_admin},
        "budget_windows": BUDGET_WINDOWS,
        **context,
        "form": form,
    }
    return await render(request, "keys.html", full, status=status)


async def keys_page(request: Request) -> Response:
    """``GET``: the person's spending windows and limits, their API keys and the form that creates one."""
    principal = await person(request)
    return await _page(request, principal, {"notice": NOTICES.get(request.query_params.get("notice", ""))})


def _limit_changes(form: FormData, current: dict[str, float]) -> dict[str, Decimal | None]:
    """What the limits form changes: a window whose amount differs (an emptied one is removed, falling
    back to its default when it has one), and the new window when one is named."""
    changes: dict[str, Decimal | None] = {}
    for name, limit in current.items():
        if (raw := form.get(f"limit.{name}")) is None or not isinstance(raw, str):
            continue
        if not raw.strip():
            changes[name] = None
        elif (amount := form_usd(raw, name)) != Decimal(str(limit)):
            changes[name] = amount
    new_window, new_limit = form_text(form, "new_window"), form_text(form, "new_limit")
    if new_window or new_limit:
        if not (new_window and new_limit):
            raise ValidationFailed("a new window needs both a name (such as 72h) and a limit in USD")
        changes[new_window] = form_usd(new_limit, new_window)
    return changes


async def set_limits(request: Request) -> Response:
    """``POST``: save the limits form through ``set_spending_limits`` (lowering needs guardrails:write,
    raising or removing guardrails:admin, which a console login holds)."""
    principal = await person(request)
    form = await checked_form(request)
    try:
        current = await act(request, principal, "get_spending_limits", {})
        assert isinstance(current, LimitsOutput)
        changes = _limit_changes(form, {w.window: w.limit for w in current.limits})
        if changes:
            await act(request, principal, "set_spending_limits", {"limits": changes})
    except AiserveError as exc:
        return await _page(request, principal, {"error": exc.message}, kind_of(exc).http_status)
    return secured(see_other(f"{KEYS}?notice=limits"))


def _expiry(raw: str) -> datetime | None:
    """A key made to work until the end of the day ``raw`` (``YYYY-MM-DD``, UTC)."""
    if not raw:
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        message = f"expiry: '{raw}' is not a date (YYYY-MM-DD)"
        raise ValidationFailed(message, {"field": "expires_on"}) from None
    return datetime.combine(day + timedelta(days=1), time(0), UTC)


async def create_key(request: Request) -> Response:
    """``POST``: create a key through ``create_api_key`` with the ticked scopes (guardrails:admin and
    admin only when ticked) and the budget given per window; the answer shows its secret, once."""
    principal = await person(request)
    form = await checked_form(request)
    name, expires_on = form_text(form, "name"), form_text(form, "expires_on")
    scopes = [s for s in form.getlist("scopes") if isinstance(s, str)]
    budget_text = {w: form_text(form, f"budget.{w}") for w in BUDGET_WINDOWS}
    try:
        budget = form_budget(form)
        arguments = {
            "name": name,
            "expires_at": _expiry(expires_on),
            "scopes": scopes,
            "budget": budget or None,
        }
        created = await act(request, principal, "create_api_key", arguments)
        assert isinstance(created, CreateApiKeyOutput)
    except AiserveError as exc:
        form_values = {"name": name, "expires_on": expires_on, "scopes": scopes, "budget": budget_text}
        return await _page(
            request, principal, {"error": exc.message, "form": form_values}, kind_of(exc).http_status
        )
    return await _page(request, principal, {"created": created, "notice": created.message}, 201)


async def revoke_key(request: Request) -> Response:
    """``POST``: revoke one of the person's keys through ``revoke_api_key``."""
    principal = await person(request)
    await checked_form(request)
    try:
        await act(request, principal, "revoke_api_key", {"key_id": request.path_params["key_id"]})
    except AiserveError as exc:
        return await _page(request, principal, {"error": exc.message}, kind_of(exc).http_status)
    return secured(see_other(f"{KEYS}?notice=revoked"))


routes = [
    Route(KEYS, keys_page, methods=["GET"]),
    Route(KEYS, create_key, methods=["POST"]),
    Route(f"{KEYS}/limits", set_limits, methods=["POST"]),
    Route(f"{KEYS}/{{key_id}}/revoke", revoke_key, methods=["POST"]),
]
