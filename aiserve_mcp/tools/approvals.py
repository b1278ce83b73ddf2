"""Approvals: the policy that holds money-moving calls for the account owner's decision, the approvals it
made, and deciding them. ``carry_out`` is how every channel (REST, MCP, A2A, the console) carries out a
decision."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Protocol

import anyio
from pydantic import BaseModel, Field, StringConstraints, model_validator

from aiserve_mcp.core.errors import AiserveError, NotFound, error_body
from aiserve_mcp.core.outages import unexpected
from aiserve_mcp.money.approvals import ApprovalRecord, Mode, Policy, Status
from aiserve_mcp.money.guardrails import grant_scope
from aiserve_mcp.tools.common import DecimalNumber, Input, IntegerNumber, Offset, Text
from aiserve_mcp.tools.guardrails import owned_scope
from aiserve_mcp.tools.ports import ApprovalsPort, KeyBudgetPorts, OAuthPort, Ports
from aiserve_mcp.tools.registry import REGISTRY, Annotations, ToolContext, tool
from aiserve_mcp.tools.runner import call_tool

Threshold = Annotated[Decimal, DecimalNumber(places=2, ge=0, le=10_000_000)]
ApprovalId = Annotated[str, StringConstraints(pattern=r"^apr_[0-9a-f]{24}$")]


class PolicyPorts(KeyBudgetPorts, OAuthPort, ApprovalsPort, Protocol):
    """API keys and connected apps (whose policies these are), and the approval policies."""


class PolicyTarget(Input):
    api_key_id: str | None = Field(
        default=None, max_length=36, description="One of your API keys: its own policy."
    )
    client_id: Text | None = Field(
        default=None,
        max_length=1024,
        description="An app connected to your account (see list_connected_clients): its own policy.",
    )

    @model_validator(mode="after")
    def _one_target(self) -> PolicyTarget:
        if self.api_key_id is not None and self.client_id is not None:
            raise ValueError("name api_key_id or client_id, not both")
        return self


class PolicyOut(BaseModel):
    scope: Literal["user", "api_key", "oauth_client"] = Field(description="Whose policy this is.")
    api_key_id: str | None
    client_id: str | None
    mode: Mode = Field(description="never, always, or above threshold.")
    threshold: float | None = Field(description="USD per action; with mode 'above' only.")


async def _scopes(ctx: ToolContext[PolicyPorts], target: PolicyTarget) -> list[str]:
    """The scopes the target names: the caller's user, one of their API keys, or every grant through
    which the named app is connected (the caller's own grant when the caller is that app)."""
    caller = ctx.caller()
    if target.client_id is None:
        return [await owned_scope(ctx, target.api_key_id)]
    if caller.client_id == target.client_id and caller.grant_id is not None:
        return [grant_scope(caller.grant_id)]
    connections = await ctx.services.oauth.connections(caller.user_id)
    grants = [grant_scope(c.grant_id) for c in connections if c.client_id == target.client_id]
    if not grants:
        raise NotFound(f"no app '{target.client_id}' is connected to your account")
    return grants


def _policy_out(target: PolicyTarget, policy: Policy) -> PolicyOut:
    scope = "api_key" if target.api_key_id else "oauth_client" if target.client_id else "user"
    return PolicyOut(
        scope=scope,
        api_key_id=target.api_key_id,
        client_id=target.client_id,
        mode=policy.mode,
        threshold=float(policy.threshold) if policy.threshold is not None else None,
    )


@tool(scope="guardrails:read", annotations=Annotations("Approval policy"))
async def get_approval_policy(ctx: ToolContext[PolicyPorts], args: PolicyTarget) -> PolicyOut:
    """When your money-moving calls (rent_gpu_instance, reserve_gpus, batch_rent_gpu_instances,
    record_spending) wait for the account owner's approval: your account's policy, or the own policy of
    one of your API keys (api_key_id) or connected apps (client_id). Modes: never (the default), always,
    above (a USD threshold per action). A call waits when the account's policy or its credential's own
    catches it."""
    scopes = await _scopes(ctx, args)
    return _policy_out(args, await ctx.services.approvals.policy(scopes[-1]))


class PolicyInput(PolicyTarget):
    mode: Mode = Field(
        description="never: act at once; always: every call waits; above: calls over threshold."
    )
    threshold: Threshold | None = Field(
        default=None, description="USD per action, with mode 'above' (required there, refused otherwise)."
    )

    @model_validator(mode="after")
    def _threshold_with_above(self) -> PolicyInput:
        if (self.mode == "above") != (self.threshold is not None):
            raise ValueError("give a threshold with mode 'above', and only then")
        return self


@tool(scope="guardrails:write", annotations=Annotations("Set approval policy", read_only=False))
async def set_approval_policy(ctx: ToolContext[PolicyPorts], args: PolicyInput) -> PolicyOut:
    """Set when money-moving calls wait for the account owner's approval: for your account, or for one of
    your API keys (api_key_id) or connected apps (client_id) on top of the account's. Tightening (never ->
    above -> always, or a lower threshold) needs guardrails:write; loosening needs guardrails:admin, so an
    agent's key cannot lift its own approvals."""
    scopes = await _scopes(ctx, args)
    policy = Policy(args.mode, args.threshold)
    return _policy_out(args, await ctx.services.approvals.set_policy(ctx.caller(), scopes, policy))


class Requester(BaseModel):
    via: str = Field(description="How the caller signed in: jwt (a login), api_key, oauth (a connected app).")
    api_key_id: str | None
    grant_id: str | None
    client_id: str | None
    scopes: list[str] | None = Field(description="The caller's scopes; null: every scope.")


class ApprovalOut(BaseModel):
    id: str
    status: Status = Field(
        description="pending (waiting), executing, executed (see result), failed (see error), denied or "
        "expired."
    )
    action: str = Field(description="The tool held for approval.")
    arguments: dict[str, Any] = Field(description="Its arguments, run as they are when approved.")
    amount: float = Field(description="Its quoted cost in USD.")
    description: str
    expires_at: datetime = Field(description="Not decided by then, it expires and nothing is spent.")
    url: str = Field(description="The console page where the account owner decides.")
    result: dict[str, Any] | None = Field(description="The tool's output, once executed.")
    error: dict[str, Any] | None = Field(description="The error body, once failed.")
    requested_by: Requester
    created_at: datetime
    decided_at: datetime | None

    @classmethod
    def of(cls, record: ApprovalRecord) -> ApprovalOut:
        fields = {name: getattr(record, name) for name in cls.model_fields if name != "requested_by"}
        return cls.model_validate({**fields, "requested_by": record.requested_by})


class ApprovalsInput(Input):
    status: Status | None = Field(default=None, description="Only approvals in this state.")
    limit: Annotated[int, IntegerNumber(ge=1, le=200)] = 50
    offset: Offset = 0


class ApprovalList(BaseModel):
    approvals: list[ApprovalOut] = Field(description="Newest first.")
    count: int


@tool(scope="guardrails:read", annotations=Annotations("Approvals"))
async def list_approvals(ctx: ToolContext[ApprovalsPort], args: ApprovalsInput) -> ApprovalList:
    """Your account's approvals, newest first: money-moving calls your approval policy held for the
    account owner's decision, and what became of each."""
    rows = await ctx.services.approvals.list(ctx.caller().user_id, args.status, args.limit, args.offset)
    return ApprovalList(approvals=[ApprovalOut.of(r) for r in rows], count=len(rows))


class ApprovalRef(Input):
    approval_id: ApprovalId = Field(description="The id APPROVAL_REQUIRED gave ('apr_...').")


@tool(scope="guardrails:read", annotations=Annotations("One approval"))
async def get_approval(ctx: ToolContext[ApprovalsPort], args: ApprovalRef) -> ApprovalOut:
    """One approval of your account by id: poll it after a call answered APPROVAL_REQUIRED. status
    'executed' carries the held call's output in result, 'failed' its error; 'denied' and 'expired' mean
    nothing was done or spent."""
    return ApprovalOut.of(await ctx.services.approvals.get(ctx.caller().user_id, args.approval_id))


class DecisionInput(ApprovalRef):
    decision: Literal["approve", "deny"]


@tool(
    scope="guardrails:admin",
    annotations=Annotations("Decide an approval", read_only=False, idempotent=False, open_world=True),
)
async def decide_approval(ctx: ToolContext[Ports], args: DecisionInput) -> ApprovalOut:
    """Approve or deny a pending approval of your account. Approved, the held call runs once, as the
    credential that asked for it (refused if that was revoked since), and the answer carries its outcome;
    deciding an approval that is no longer pending changes nothing and returns it as it stands. Needs
    guardrails:admin (a login has it; an agent's key does not, so it cannot approve its own requests)."""
    return await carry_out(ctx, args.approval_id, args.decision)


async def carry_out(
    ctx: ToolContext[Ports], approval_id: str, decision: Literal["approve", "deny"]
) -> ApprovalOut:
    """Carry out ``ctx.caller()``'s decision on one of their approvals. Deny: it reads ``denied``.
    Approve: claim it (only one of concurrent approvals does; the others get it as it stands), then run
    the held call once as the principal who asked, checked again, with the approval gate skipped for that
    call, and keep its output (``executed``) or error body (``failed``). Once claimed, the call runs to
    its end even if the decider goes away."""
    approvals = ctx.services.approvals
    user_id = ctx.caller().user_id
    if decision == "deny":
        return ApprovalOut.of(await approvals.deny(user_id, approval_id))
    claimed = await approvals.claim(user_id, approval_id)
    if claimed is None:
        return ApprovalOut.of(await approvals.get(user_id, approval_id))
    with anyio.CancelScope(shield=True):
        try:
            requester = await ctx.services.accounts.recheck(claimed.requester())
            acting = ToolContext(
                ctx.services, requester, ctx.surface, ctx.client_address, approved=claimed.id
            )
            output = await call_tool(REGISTRY.get(claimed.action), claimed.arguments, acting)
        except Exception as exc:
            failure = exc if isinstance(exc, AiserveError) else unexpected(exc, f"approval {claimed.id}")
            done = await approvals.finish(claimed.id, result=None, error=error_body(failure))
        else:
            done = await approvals.finish(claimed.id, result=output.model_dump(mode="json"), error=None)
    return ApprovalOut.of(done)
