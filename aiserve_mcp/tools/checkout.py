"""Buying credits on a hosted payment page: a link an agent hands to its person, who pays there (Stripe
Checkout, or the sandbox's stand-in page); the gateway's verdict credits the user once (``money.checkout``).

``sandbox_checkout`` and ``pay_sandbox_checkout`` serve the sandbox's stand-in page (``console``); they are
not tools: nobody but the person on that page pays a session.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from aiserve_mcp.core.errors import NotFound
from aiserve_mcp.money.checkout import open_checkout, settle_checkout
from aiserve_mcp.money.payments.base import CheckoutSession
from aiserve_mcp.money.payments.sandbox import SandboxGateway
from aiserve_mcp.tools.billing import Amount, payment_gateway
from aiserve_mcp.tools.common import Input, Text
from aiserve_mcp.tools.ports import CheckoutPorts, MoneyPort
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool
from aiserve_mcp.tools.upload_links import public_base_url

CREDITS_PAGE = "/console/credits"  # where the payer comes back to: ?checkout=success or ?checkout=cancelled
PRODUCT_NAME = "aiserve credits"


class CheckoutLinkInput(Input):
    amount_usd: Amount = Field(description="USD of credits to buy: 0.50 to 100000, at most two decimals.")
    idempotency_key: Text | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="One checkout page per key: a retry with the same key and amount returns the same link "
        "instead of opening another (the same key with another amount is CONFLICT).",
    )


class CheckoutLinkOutput(BaseModel):
    url: str = Field(description="The payment page to give to your person; it is theirs to open, not yours.")
    checkout_session_id: str
    amount: float = Field(description="USD of credits the page sells.")
    currency: Literal["USD"] = "USD"
    expires_at: datetime = Field(description="After this the page no longer takes payment.")
    transaction_id: str = Field(description="The pending payment in list_transactions.")
    sandbox: bool = Field(description="True on the sandbox gateway: the page moves no money.")
    message: str = Field(description="What to tell your person.")


@tool(
    scope="billing:write",
    annotations=Annotations("Create a checkout link", read_only=False, idempotent=False, open_world=True),
)
async def create_checkout_link(
    ctx: ToolContext[CheckoutPorts], args: CheckoutLinkInput
) -> CheckoutLinkOutput:
    """A link to a payment page (Stripe Checkout) where your person buys amount_usd of credits for your
    account with their own card or other payment method; you never handle card details. Give them the url
    and ask them to open it in a browser and pay: you cannot pay it yourself. The credits arrive once
    Stripe confirms the payment (seconds after they pay; a bank debit can take days), exactly once per
    page; until then list_transactions shows the payment as requires_action (page not yet paid) or
    processing. The page works until expires_at (24 hours). Send an idempotency_key to make a retry
    return the same link. On the sandbox gateway (sandbox: true) the page is this server's own stand-in
    and moves no money."""
    caller = ctx.caller()
    gateway = payment_gateway(ctx, None)
    base = public_base_url(ctx.services.settings)
    key = args.idempotency_key or str(uuid.uuid4())
    session = await gateway.create_checkout_session(
        amount_minor=int(args.amount_usd * 100),
        currency="usd",
        user_id=caller.user_id,
        customer_email=caller.email,
        product_name=PRODUCT_NAME,
        success_url=f"{base}{CREDITS_PAGE}?checkout=success",
        cancel_url=f"{base}{CREDITS_PAGE}?checkout=cancelled",
        idempotency_key=f"{caller.user_id}:checkout:{key}",
    )
    tx = await open_checkout(ctx.services.costs.ledger, gateway.name, session)
    expires_at = datetime.fromtimestamp(session.expires_at, UTC)
    sandbox = gateway.name == "sandbox"
    return CheckoutLinkOutput(
        url=session.url or "",
        checkout_session_id=session.id,
        amount=float(args.amount_usd),
        expires_at=expires_at,
        transaction_id=tx.id,
        sandbox=sandbox,
        message=f"Give this link to your person and ask them to open it and pay {args.amount_usd:.2f} USD "
        f"before {expires_at:%Y-%m-%d %H:%M} UTC: {session.url}. The credits are added once the payment "
        "is confirmed; list_transactions shows them."
        + (" (Sandbox: the page moves no money.)" if sandbox else ""),
    )


def _sandbox(ctx: ToolContext[MoneyPort]) -> SandboxGateway:
    gateway = ctx.services.payments
    if not isinstance(gateway, SandboxGateway):
        raise NotFound("there is no sandbox checkout page on this server")
    return gateway


def sandbox_checkout(ctx: ToolContext[MoneyPort], session_id: str) -> CheckoutSession:
    """The sandbox session ``session_id`` (``NotFound`` when there is none, or no sandbox)."""
    return _sandbox(ctx).checkout_session(session_id)


async def pay_sandbox_checkout(ctx: ToolContext[MoneyPort], session_id: str) -> CheckoutSession:
    """Pay the sandbox session ``session_id`` and credit its user through the same exactly-once path as
    Stripe's webhook (paying twice credits once; an expired session is ``CONFLICT``)."""
    gateway = _sandbox(ctx)
    session = gateway.pay_checkout(session_id)
    await settle_checkout(ctx.services.costs.ledger, gateway.name, session, "succeeded")
    return session
