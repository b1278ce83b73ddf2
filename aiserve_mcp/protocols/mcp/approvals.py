"""How an MCP tool call that its owner must approve (``ApprovalRequired``) asks, by what the client can do.

- Protocol 2025-11-25 on a connection that carries server requests (legacy SSE, stdio), a client that
  declared form elicitation: an ``elicitation/create`` form asks "<what the call does>?" with one
  ``decision`` field (``approve`` or ``deny``). Approve carries the approval out and the call answers with
  the tool's own result; decline, cancel or deny denies it and the call answers with the refusal.
- The same, a client that declared URL elicitation only: a URL elicitation opens the approval's console
  page, and the call answers with the pending approval for the agent to poll with ``get_approval``
  (declining to open the page denies it).
- Protocol 2026-07-28, a client that declared form elicitation: the call answers input-required, with the
  same form as an input request and a sealed ``requestState`` naming the approval. The client calls again
  with the answer and the state, and that call carries the decision out. The state is sealed (AES-GCM)
  under a key derived from the server's secret, bound to the tool, its arguments and the caller, and
  expires with the approval: a tampered, moved or stale state is refused (JSON-RPC -32602). A decided
  approval is never carried out again: answering once more returns the stored outcome.
- Any other client: an ``isError`` result with code ``APPROVAL_REQUIRED`` and the approval, which the
  owner decides elsewhere (the console, ``POST /api/v1/approvals/{id}``). A question the client cannot
  ask, or leaves unanswered until the approval expires, answers with the approval as it stands then.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, Literal

import anyio
from mcp import types
from mcp.server import ServerRequestContext
from mcp.server.elicitation import render_elicitation_schema
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.shared.exceptions import MCPError
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field

from aiserve_mcp.core.errors import AiserveError, ApprovalRequired
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.protocols.approval_outcomes import refusal_of
from aiserve_mcp.protocols.mcp.results import error_result, refusal_result, tool_result
from aiserve_mcp.tools.approvals import ApprovalOut, carry_out
from aiserve_mcp.tools.ports import Ports
from aiserve_mcp.tools.registry import ToolContext

Decision = Literal["approve", "deny"]
INPUT_KEY: Final = "approval"  # the key of the decision form among a 2026-07-28 call's input requests
STATE_PURPOSE: Final = "mcp-request-state"  # the server-secret derivation of the requestState key
STATE_AUDIENCE: Final = "aiserve"


class DecisionForm(BaseModel):
    """What the approval question asks for."""

    decision: Decision = Field(title="Decision", description="approve to go ahead, deny to cancel the action")


DECISION_SCHEMA: Final = render_elicitation_schema(DecisionForm)


async def _settled(
    tool_ctx: ToolContext, approval_id: str, decision: Decision | None
) -> types.CallToolResult:
    """Carry out ``decision`` (None: none was given; read the approval as it stands), and answer with the
    held tool's result or with the refusal."""
    try:
        if decision is None:
            approval = ApprovalOut.of(
                await tool_ctx.services.approvals.get(tool_ctx.caller().user_id, approval_id)
            )
        else:
            approval = await carry_out(tool_ctx, approval_id, decision)
    except AiserveError as exc:
        return refusal_result(exc)
    refusal = refusal_of(approval)
    return tool_result(approval.result or {}) if refusal is None else error_result(refusal)


def caller_binding(principal: Principal | None) -> str | None:
    """Who a sealed requestState belongs to: the user and the credential they called with."""
    if principal is None:
        return None
    credential = principal.api_key_id or principal.grant_id or principal.session_id or ""
    return f"{principal.user_id}:{credential}"


def request_state_boundary(
    services: Ports, principal_of: Callable[[ServerRequestContext[object]], Principal | None]
) -> RequestStateBoundary:
    """The middleware that seals and checks ``requestState``: AES-GCM under a key derived from the server
    secret (every process of one deployment derives the same), bound to the caller, expiring with the
    approval it names."""
    security = RequestStateSecurity(
        keys=[services.accounts.mac(STATE_PURPOSE, "aes-256-gcm")],
        ttl=services.settings.approval_ttl_s,
        bind_principal=lambda ctx: caller_binding(principal_of(ctx)),
    )
    return RequestStateBoundary(security, default_audience=STATE_AUDIENCE)


def _question(approval: dict[str, Any]) -> str:
    return f"{approval['description']}?"


def _decision(answer: types.ElicitResult) -> Decision:
    content = answer.content or {}
    return "approve" if answer.action == "accept" and content.get("decision") == "approve" else "deny"


def _seconds_left(approval: dict[str, Any]) -> float:
    expires = datetime.fromisoformat(approval["expires_at"])
    return max((expires - datetime.now(UTC)).total_seconds(), 0.0)


def _elicitation_modes(ctx: ServerRequestContext[object]) -> tuple[bool, bool]:
    """Whether the client declared form and URL elicitation (an empty declaration means form)."""
    capabilities = ctx.session.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    if elicitation is None:
        return False, False
    return elicitation.form is not None or elicitation.url is None, elicitation.url is not None


def _input_required(question: str, state: str) -> types.InputRequiredResult:
    form = types.ElicitRequest(
        params=types.ElicitRequestFormParams(message=question, requested_schema=DECISION_SCHEMA)
    )
    return types.InputRequiredResult(input_requests={INPUT_KEY: form}, request_state=state)


async def ask(
    ctx: ServerRequestContext[object], tool_ctx: ToolContext, pending: ApprovalRequired
) -> types.CallToolResult | types.InputRequiredResult:
    """Ask the client's user to decide the approval ``pending`` holds, the way the client supports."""
    approval: dict[str, Any] = pending.details["approval"]
    question = _question(approval)
    form, url = _elicitation_modes(ctx)
    if form and ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return _input_required(question, json.dumps({"approval": pending.approval_id, "question": question}))
    if not (form or url) or not ctx.session.can_send_request:
        return refusal_result(pending)
    answer: types.ElicitResult | None = None
    with anyio.move_on_after(_seconds_left(approval)):
        try:
            if form:
                answer = await ctx.session.elicit_form(question, DECISION_SCHEMA, ctx.request_id)
            else:
                message = f"{question} Approve or deny it on this page."
                answer = await ctx.session.elicit_url(
                    message, approval["url"], pending.approval_id, ctx.request_id
                )
        except MCPError:
            answer = None  # the client could not ask: the approval waits for a decision elsewhere
    if answer is None or not (form or answer.action == "decline"):  # unanswered, or the page is open
        return await _settled(tool_ctx, pending.approval_id, None)
    return await _settled(tool_ctx, pending.approval_id, _decision(answer))


async def resume(
    tool_ctx: ToolContext, params: types.CallToolRequestParams
) -> types.CallToolResult | types.InputRequiredResult:
    """A 2026-07-28 call retried with the answer to its approval question (its ``requestState``, already
    checked and opened by the boundary): carry the decision out, or ask again when it is not answered."""
    assert params.request_state is not None
    state = json.loads(params.request_state)
    answer = (params.input_responses or {}).get(INPUT_KEY)
    if not isinstance(answer, types.ElicitResult):
        return _input_required(state["question"], params.request_state)
    return await _settled(tool_ctx, state["approval"], _decision(answer))
