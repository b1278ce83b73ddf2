"""Credits: pay with a card token through Stripe, read the balance and the transaction history, and apply
the gateway's signed webhooks (payments, and the checkout pages of ``tools.checkout``)."""

from __future__ import annotations

import contextlib
import re
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from aiserve_mcp.core.errors import NotFound, PaymentDeclined, ServiceUnavailable, ValidationFailed
from aiserve_mcp.money.checkout import CHECKOUT_KEY_PREFIX, settle_checkout
from aiserve_mcp.money.ledger import Ledger
from aiserve_mcp.money.payments.base import (
    MAXIMUM_PURCHASE_USD,
    CheckoutSession,
    PaymentGateway,
    WebhookEvent,
)
from aiserve_mcp.tools.common import (
    DecimalNumber,
    Input,
    IntegerNumber,
    Merged,
    Offset,
    Text,
    any_case_pattern,
)
from aiserve_mcp.tools.ports import MoneyPort
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool

Amount = Annotated[Decimal, DecimalNumber(places=2, gt=0, le=MAXIMUM_PURCHASE_USD)]
Gateway = Literal["stripe", "sandbox"]
GATEWAYS = get_args(Gateway)
# A card number (13 to 19 digits, maybe grouped by spaces or dashes), with blanks around it.
_CARD_NUMBER = r"[ \t\n\r\f\v]*(?:[0-9][ -]?){13,19}[ \t\n\r\f\v]*"


def _not_a_card_number(value: str) -> str:
    if re.fullmatch(_CARD_NUMBER, value):
        raise ValueError("card numbers must never be sent here; send a Stripe token or PaymentMethod id")
    return value


PaymentReference = Annotated[
    str,
    Field(min_length=1, max_length=255, json_schema_extra={"not": {"pattern": f"^{_CARD_NUMBER}$"}}),
    AfterValidator(_not_a_card_number),
]


class PaymentPreference(Input):
    """How to pay: a Stripe card token or PaymentMethod id (at least one of them), never a card number."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in ("card_token", "payment_method")
            ]
        }
    )

    type: Literal["card"] = "card"
    card_token: PaymentReference | None = Field(default=None, examples=["tok_visa"])
    payment_method: PaymentReference | None = Field(default=None, examples=["pm_card_visa"])

    @model_validator(mode="after")
    def _one_reference(self) -> PaymentPreference:
        if self.card_token is None and self.payment_method is None:
            raise ValueError("payment_preference needs card_token or payment_method")
        return self

    @property
    def method(self) -> str:
        """What to charge: the PaymentMethod id, else the card token."""
        method = self.payment_method or self.card_token
        assert method is not None
        return method


class PaymentInput(Input):
    amount: Amount = Field(description="USD to add as credits.")
    currency: Literal["USD", "usd"] = "USD"
    provider: Gateway | None = Field(default=None, description="Default: X-Billing.")
    payment_preference: PaymentPreference
    billing_provider: str | None = Field(
        default=None, pattern=any_case_pattern(GATEWAYS), description="The X-Billing header."
    )
    preferred_payment: str | None = Field(default=None, description="The X-Preferred-Payment header.")
    idempotency_key: Text | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description=f"The Idempotency-Key header: one charge per key (not starting with "
        f"'{CHECKOUT_KEY_PREFIX}', which names Checkout payments).",
    )

    @field_validator("idempotency_key")
    @classmethod
    def _not_a_checkout_key(cls, key: str | None) -> str | None:
        if key is not None and key.startswith(CHECKOUT_KEY_PREFIX):
            raise ValueError(f"an idempotency key may not start with '{CHECKOUT_KEY_PREFIX}'")
        return key


class TransactionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    amount: float
    currency: str
    status: str = Field(description="succeeded, processing, requires_action or failed.")
    created_at: datetime
    kind: str = Field(description="payment, hold, charge or release.")
    description: str
    reference: str | None
    gateway: str | None


class PaymentTransaction(TransactionOut):
    sandbox: bool = Field(description="True when the sandbox gateway made it: no money moved.")
    next_action_url: str | None = Field(description="Where the card holder completes 3-D Secure.")


class PaymentOutput(BaseModel):
    transaction: PaymentTransaction
    balance: float = Field(description="Available credits after this payment, USD.")


def payment_gateway(ctx: ToolContext[MoneyPort], wanted: str | None) -> PaymentGateway:
    """The server's payment gateway (``wanted``, when named, must be it); ``SERVICE_UNAVAILABLE`` saying
    how to configure one when there is none."""
    gateway = ctx.services.payments
    if gateway is None:
        raise ServiceUnavailable(
            "payments are not configured on this server: set AISERVE_STRIPE_API_KEY, or "
            "AISERVE_BILLING_SANDBOX=true to try payments with test cards (no money moves)"
        )
    if wanted is not None and wanted.lower() != gateway.name:
        raise ValidationFailed(f"this server takes payments through {gateway.name}, not {wanted!r}")
    return gateway


@tool(
    scope="billing:write",
    annotations=Annotations("Buy credits", read_only=False, idempotent=False, open_world=True),
)
async def create_payment(ctx: ToolContext[MoneyPort], args: PaymentInput) -> PaymentOutput:
    """Buy credits (USD) with a card token or Stripe PaymentMethod id (never a card number). Credits are
    added once per idempotency key; a payment that needs 3-D Secure returns status requires_action with
    next_action_url and is credited when it completes. A declined card is PAYMENT_DECLINED (402)."""
    caller = ctx.caller()
    gateway = payment_gateway(ctx, args.provider or args.billing_provider)
    key = args.idempotency_key or f"pay-{uuid.uuid4()}"
    amount = args.amount
    charge = await gateway.charge(
        amount_minor=int(amount * 100),
        currency="usd",
        payment_method=args.payment_preference.method,
        idempotency_key=f"{caller.user_id}:{key}",
        description="aiserve credits",
        metadata={"user_id": caller.user_id},
    )
    ledger = ctx.services.costs.ledger
    tx = await ledger.payment(
        caller.user_id,
        amount,
        currency="USD",
        gateway=gateway.name,
        provider_ref=charge.provider_ref,
        status=charge.status,
        idempotency_key=key,
        description="credits" + (" (sandbox: no money moved)" if gateway.name == "sandbox" else ""),
        failure=charge.failure_message,
    )
    if tx.status == "failed":
        raise PaymentDeclined(
            charge.failure_message or "the payment was declined",
            {"transaction_id": tx.id, "decline_code": charge.failure_code},
        )
    balance = await ledger.balance(caller.user_id)
    paid = Merged(tx, sandbox=gateway.name == "sandbox", next_action_url=charge.next_action_url)
    return PaymentOutput(
        transaction=PaymentTransaction.model_validate(paid), balance=float(balance.available)
    )


class PageInput(Input):
    limit: Annotated[int, IntegerNumber(ge=1, le=500)] = 50
    offset: Offset = 0


class TransactionsOutput(BaseModel):
    transactions: list[TransactionOut]
    count: int = Field(description="All of your transactions (for paging).")
    credits: float = Field(description="Available credits, USD.")
    held: float = Field(description="Credits set aside for running instances, USD.")


@tool(scope="billing:read", annotations=Annotations("Transactions"))
async def list_transactions(ctx: ToolContext[MoneyPort], args: PageInput) -> TransactionsOutput:
    """Your credit history, newest first (payments, holds for rented instances, charges, releases), with
    the available and held balance."""
    user_id = ctx.caller().user_id
    ledger = ctx.services.costs.ledger
    rows, total = await ledger.transactions(user_id, args.limit, args.offset)
    balance = await ledger.balance(user_id)
    return TransactionsOutput(
        transactions=[TransactionOut.model_validate(r) for r in rows],
        count=total,
        credits=float(balance.available),
        held=float(balance.held),
    )


class WebhookOutput(BaseModel):
    received: bool
    duplicate: bool
    settled: str | None = Field(description="The transaction the event settled, if any.")


async def handle_payment_webhook(
    ctx: ToolContext[MoneyPort], payload: bytes, signature: str | None
) -> WebhookOutput:
    """Verify a gateway's webhook and settle the payment it reports (each event once)."""
    gateway = payment_gateway(ctx, None)
    event = gateway.parse_webhook(payload, signature)
    ledger = ctx.services.costs.ledger
    if event.checkout is not None:
        return await _checkout_delivery(ledger, gateway.name, event, event.checkout)
    if not await ledger.first_delivery(event.id):
        return WebhookOutput(received=True, duplicate=True, settled=None)
    if event.provider_ref is None or event.status not in ("succeeded", "failed", "processing"):
        return WebhookOutput(received=True, duplicate=False, settled=None)
    tx = await ledger.find_payment(event.provider_ref)
    if tx is None:
        return WebhookOutput(received=True, duplicate=False, settled=None)
    settled = await ledger.settle_payment(event.provider_ref, event.status)
    return WebhookOutput(received=True, duplicate=False, settled=settled.id)


async def _checkout_delivery(
    ledger: Ledger, gateway: str, event: WebhookEvent, session: CheckoutSession
) -> WebhookOutput:
    """A ``checkout.session.*`` event: settling by session is idempotent, so the event is applied before it
    is remembered as delivered, and a failure on the way leaves the gateway's retry to apply it. Sessions
    for no user of this server (another integration on the same Stripe account) are ignored."""
    settled = None
    if event.status is not None:
        with contextlib.suppress(NotFound):
            tx = await settle_checkout(ledger, gateway, session, event.status, event.failure_message)
            settled = tx.id
    duplicate = not await ledger.first_delivery(event.id)
    return WebhookOutput(received=True, duplicate=duplicate, settled=None if duplicate else settled)
