"""The approval webhook: a URL of the caller's that receives each of their new approvals as a signed POST
(``traffic.approval_webhooks``), so a person hears of a pending approval wherever they are."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from pydantic import BaseModel, Field

from aiserve_mcp.money.approval_webhooks import EVENT_HEADER, SIGNATURE_HEADER, WebhookEndpoint
from aiserve_mcp.money.approvals import REQUESTED
from aiserve_mcp.tools.common import Input, NoInput, Text
from aiserve_mcp.tools.ports import ApprovalWebhooksPort
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool

SIGNING: Final = (
    f"Each POST carries {EVENT_HEADER}: {REQUESTED} and {SIGNATURE_HEADER}: t=<unix seconds>,v1=<hex "
    'HMAC-SHA256 of "<t>.<raw body>" keyed by the signing secret>, as Stripe-Signature is made; check it, '
    "and that t is recent, before trusting the body."
)


class WebhookOut(BaseModel):
    url: str | None = Field(description="Where new approvals are POSTed; null when nowhere.")
    created_at: datetime | None = Field(description="When this URL and its signing secret were set.")
    last_attempt_at: datetime | None = Field(description="When the last delivery ended.")
    last_outcome: str | None = Field(
        description="How the last delivery went: 'delivered: HTTP 200', or why it was not delivered."
    )
    signing: str = Field(default=SIGNING, description="How each POST is signed.")


def _out(endpoint: WebhookEndpoint | None) -> WebhookOut:
    if endpoint is None:
        return WebhookOut(url=None, created_at=None, last_attempt_at=None, last_outcome=None)
    return WebhookOut(
        url=endpoint.url,
        created_at=endpoint.created_at,
        last_attempt_at=endpoint.last_attempt_at,
        last_outcome=endpoint.last_outcome,
    )


@tool(scope="guardrails:read", annotations=Annotations("Approval webhook"))
async def get_approval_webhook(ctx: ToolContext[ApprovalWebhooksPort], args: NoInput) -> WebhookOut:
    """The URL your new approvals are POSTed to (null when none), and how the last delivery went. The
    signing secret is shown only when the URL is set."""
    return _out(await ctx.services.approval_webhooks.get(ctx.caller().user_id))


class SetWebhookInput(Input):
    url: Text | None = Field(
        max_length=2048,
        description="An https:// URL on the public internet (null: send approvals nowhere). An operator "
        "may allow hosts of their own network, which may also use http://.",
    )


class SetWebhookOutput(WebhookOut):
    signing_secret: str | None = Field(
        description="The secret each POST is signed with (whsec_...): shown this once, keep it. Setting "
        "the URL again makes a new one."
    )
    message: str


@tool(
    scope="guardrails:admin",
    annotations=Annotations("Set approval webhook", read_only=False, idempotent=False),
)
async def set_approval_webhook(
    ctx: ToolContext[ApprovalWebhooksPort], args: SetWebhookInput
) -> SetWebhookOutput:
    """Have each new approval of yours (an action waiting for your yes or no) POSTed as JSON to url:
    {"type": "approval.requested", "created": <unix seconds>, "approval": {"id", "status", "action",
    "arguments", "amount", "description", "expires_at", "url", ...}}. The POST is signed (see signing), sent
    in the background (the call that asked never waits) and tried up to a few times while the receiver
    fails or is unreachable. Returns a new signing secret, shown once; null url stops the webhook."""
    endpoint = await ctx.services.approval_webhooks.set(ctx.caller().user_id, args.url)
    out = _out(endpoint)
    if endpoint is None:
        return SetWebhookOutput(**out.model_dump(), signing_secret=None, message="approval webhook removed")
    return SetWebhookOutput(
        **out.model_dump(),
        signing_secret=endpoint.secret,
        message=f"new approvals will be POSTed to {endpoint.url}; keep the signing secret: it is not shown "
        "again",
    )
