"""``/console/approvals``: the approvals inbox. What the person's agents asked to spend and are waiting
for (what, how much, which key or app asked, until when), with Approve and Deny; what became of the
approvals decided before; when to ask (the approval policy); and the webhook that hears of each new
approval. ``/console/approvals/<id>`` is one approval: the page an approval's ``url`` points to.

Everything goes through the tools (``list_approvals``, ``get_approval``, ``decide_approval``,
``get_approval_policy``, ``set_approval_policy``, ``get_approval_webhook``, ``set_approval_webhook``) as
the signed-in person, whose login holds guardrails:admin. The pending and decided lists update live from
the ``approvals`` stream (``sections.py``). A decision is a POST answered with a redirect to a page that
reads the approval back through ``get_approval`` to say what happened. A new webhook's signing secret
appears only in the answer to the form that set it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiserve_mcp.console.sections import Section, duration, sections_context, usd
from aiserve_mcp.console.web import (
    CONSOLE,
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
from aiserve_mcp.tools.account import ApiKeyList
from aiserve_mcp.tools.approval_webhooks import SetWebhookOutput, WebhookOut
from aiserve_mcp.tools.approvals import ApprovalList, ApprovalOut, PolicyOut, Requester
from aiserve_mcp.tools.oauth_clients import ConnectedClientList

APPROVALS: Final = f"{CONSOLE}/approvals"
SHOWN: Final = 50
NOTICES: Final = {"policy": "Approval policy saved.", "webhook-removed": "Approval webhook removed."}


@dataclass(frozen=True)
class ApprovalRow:
    """One approval as the lists show it."""

    approval: ApprovalOut
    amount: str
    asked_by: str
    expires_in: str


async def _requester_names(
    request: Request, principal: Principal, approvals: list[ApprovalOut]
) -> Callable[[Requester], str]:
    """A function naming who asked for an approval: the API key (name and prefix) or connected app by
    name, or the person's own sign-in."""
    vias = {a.requested_by.via for a in approvals}
    keys: dict[str, str] = {}
    apps: dict[str, str] = {}
    if "api_key" in vias:
        listed = await act(request, principal, "list_api_keys", {})
        assert isinstance(listed, ApiKeyList)
        keys = {k.id: f"API key “{k.name}” ({k.prefix}…)" for k in listed.api_keys}
    if "oauth" in vias:
        connected = await act(request, principal, "list_connected_clients", {})
        assert isinstance(connected, ConnectedClientList)
        apps = {c.grant_id: f"app “{c.client_name}”" for c in connected.clients}

    def name(by: Requester) -> str:
        if by.via == "api_key":
            return keys.get(by.api_key_id or "", f"API key {by.api_key_id}")
        if by.via == "oauth":
            return apps.get(by.grant_id or "", f"app {by.client_id} (since disconnected)")
        return "you, signed in"

    return name


async def _rows(request: Request, principal: Principal, approvals: list[ApprovalOut]) -> list[ApprovalRow]:
    name = await _requester_names(request, principal, approvals)
    now = datetime.now(UTC)
    return [
        ApprovalRow(a, usd(a.amount, 4), name(a.requested_by), duration((a.expires_at - now).total_seconds()))
        for a in approvals
    ]


async def _listed(request: Request, principal: Principal, status: str | None) -> list[ApprovalRow]:
    arguments: dict[str, Any] = {"limit": SHOWN} | ({"status": status} if status else {})
    listed = await act(request, principal, "list_approvals", arguments)
    assert isinstance(listed, ApprovalList)
    return await _rows(request, principal, listed.approvals)


async def pending_view(request: Request, principal: Principal) -> dict[str, Any]:
    return {"rows": await _listed(request, principal, "pending")}


async def history_view(request: Request, principal: Principal) -> dict[str, Any]:
    rows = await _listed(request, principal, None)
    return {"rows": [row for row in rows if row.approval.status != "pending"]}


PENDING: Final = Section("approvals", ("approvals",), pending_view)
HISTORY: Final = Section("approval_history", ("approvals",), history_view)
SECTIONS: Final = (PENDING, HISTORY)


def outcome(approval: ApprovalOut) -> tuple[str | None, str | None]:
    """What became of ``approval``, as ``(notice, error)`` (both None while it waits)."""
    what = approval.description
    if approval.status == "executed":
        return f"Approved: {what}. Done.", None
    if approval.status == "executing":
        return f"Approved: {what}. It is being carried out.", None
    if approval.status == "failed":
        reason = (approval.error or {}).get("error", "the action failed")
        return None, f"Approved, but it failed: {what}: {reason}"
    if approval.status == "denied":
        return f"Denied: {what}. Nothing was done or spent.", None
    if approval.status == "expired":
        return None, f"Expired before anyone decided: {what}. Nothing was done or spent."
    return None, None


async def _inbox(
    request: Request,
    principal: Principal,
    context: Mapping[str, Any],
    status: int = 200,
) -> Response:
    """The inbox with ``context`` (``notice``, ``error``, ``webhook_secret``)."""
    full: dict[str, Any] = {"user": principal, **await sections_context(request, principal, SECTIONS)}
    try:
        policy = await act(request, principal, "get_approval_policy", {})
        webhook = await act(request, principal, "get_approval_webhook", {})
    except AiserveError as exc:
        full["error"], status = exc.message, kind_of(exc).http_status
    else:
        assert isinstance(policy, PolicyOut) and isinstance(webhook, WebhookOut)
        full |= {"policy": policy, "webhook": webhook}
    return await render(request, "approvals.html", {**full, **context}, status=status)


async def inbox_page(request: Request) -> Response:
    """``GET``: pending approvals, then decided ones, the policy and the webhook. ``?decided=<id>`` (where
    a decision sends the browser) says what became of that approval."""
    principal = await person(request)
    context: dict[str, Any] = {"notice": NOTICES.get(request.query_params.get("notice", ""))}
    decided = request.query_params.get("decided")
    if decided:
        try:
            approval = await act(request, principal, "get_approval", {"approval_id": decided})
        except AiserveError:
            pass  # a stale or foreign id in the address: the lists say the rest
        else:
            assert isinstance(approval, ApprovalOut)
            context["notice"], context["error"] = outcome(approval)
    return await _inbox(request, principal, context)


async def _approval_page(
    request: Request, principal: Principal, approval_id: str, context: Mapping[str, Any], status: int = 200
) -> Response:
    try:
        approval = await act(request, principal, "get_approval", {"approval_id": approval_id})
    except AiserveError as exc:
        return await render(
            request,
            "approval.html",
            {"error": exc.message, "user": principal},
            status=kind_of(exc).http_status,
        )
    assert isinstance(approval, ApprovalOut)
    (row,) = await _rows(request, principal, [approval])
    notice, error = outcome(approval)
    full = {"user": principal, "row": row, "notice": notice, "error": error, **context}
    return await render(request, "approval.html", full, status=status)


async def approval_page(request: Request) -> Response:
    """``GET``: one approval, with Approve and Deny while it waits, and its outcome after."""
    principal = await person(request)
    return await _approval_page(request, principal, request.path_params["approval_id"], {})


async def decide(request: Request) -> Response:
    """``POST`` (``decision``: approve or deny; ``back``: ``inbox`` to return to the inbox, else the
    approval's page): decide through ``decide_approval``. Approving runs the held call, once."""
    principal = await person(request)
    form = await checked_form(request)
    approval_id = request.path_params["approval_id"]
    to_inbox = form_text(form, "back") == "inbox"
    arguments = {"approval_id": approval_id, "decision": form_text(form, "decision")}
    try:
        await act(request, principal, "decide_approval", arguments)
    except AiserveError as exc:
        refused = {"error": exc.message}
        if to_inbox:
            return await _inbox(request, principal, refused, kind_of(exc).http_status)
        return await _approval_page(request, principal, approval_id, refused, kind_of(exc).http_status)
    target = f"{APPROVALS}?decided={approval_id}" if to_inbox else f"{APPROVALS}/{approval_id}"
    return secured(see_other(target))


async def set_policy(request: Request) -> Response:
    """``POST`` (``mode``: never, always or above; ``threshold`` in USD with above): the account's policy
    through ``set_approval_policy`` (loosening it needs guardrails:admin, which a login holds)."""
    principal = await person(request)
    form = await checked_form(request)
    mode = form_text(form, "mode")
    try:
        arguments: dict[str, Any] = {"mode": mode}
        if mode == "above":
            arguments["threshold"] = form_usd(form_text(form, "threshold"), "threshold")
        await act(request, principal, "set_approval_policy", arguments)
    except AiserveError as exc:
        return await _inbox(request, principal, {"error": exc.message}, kind_of(exc).http_status)
    return secured(see_other(f"{APPROVALS}?notice=policy"))


async def set_webhook(request: Request) -> Response:
    """``POST`` (``url``; empty to remove): the approval webhook through ``set_approval_webhook``; the
    answer shows the new signing secret, once."""
    principal = await person(request)
    form = await checked_form(request)
    url = form_text(form, "url") or None
    try:
        done = await act(request, principal, "set_approval_webhook", {"url": url})
    except AiserveError as exc:
        return await _inbox(request, principal, {"error": exc.message}, kind_of(exc).http_status)
    assert isinstance(done, SetWebhookOutput)
    if done.signing_secret is None:
        return secured(see_other(f"{APPROVALS}?notice=webhook-removed"))
    return await _inbox(request, principal, {"webhook_secret": done.signing_secret, "notice": done.message})


routes = [
    Route(APPROVALS, inbox_page, methods=["GET"]),
    Route(f"{APPROVALS}/policy", set_policy, methods=["POST"]),
    Route(f"{APPROVALS}/webhook", set_webhook, methods=["POST"]),
    Route(f"{APPROVALS}/{{approval_id}}", approval_page, methods=["GET"]),
    Route(f"{APPROVALS}/{{approval_id}}", decide, methods=["POST"]),
]
