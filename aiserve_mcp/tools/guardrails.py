"""Spending guardrails: read and set limits per rolling window, check, record and reset spending."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from aiserve_mcp.core.errors import NotFound
from aiserve_mcp.money.approvals import Quote, dollars
from aiserve_mcp.money.guardrails import (
    MAX_WINDOW_S,
    NAMED_WINDOWS,
    key_scope,
    user_scope,
    window_seconds,
    window_view,
)
from aiserve_mcp.money.spend_store.base import WindowLimit, WindowTotal
from aiserve_mcp.tools.common import DecimalNumber, Input, NoInput, Text
from aiserve_mcp.tools.ports import KeyBudgetPorts, MoneyPort
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool

Money = Annotated[Decimal, DecimalNumber(places=6, gt=0, le=1_000_000)]
Limit = Annotated[Decimal, DecimalNumber(places=2, ge=0, le=10_000_000)]
# What window_seconds accepts, as one pattern for the schema: a named window, or <n><unit> where n has at
# most six digits and the window lasts at most MAX_WINDOW_S.
UNIT_SECONDS = {unit: window_seconds(f"1{unit}") for unit in "smhdw"}
MAX_DURATION_COUNT = 999_999


def _digits(count: int) -> str:
    if count <= 1:
        return "[0-9]" * count
    return f"[0-9]{{{count}}}"


def _integers_up_to(top: int) -> str:
    """A regular expression alternation for the decimal integers 1 to ``top``, without leading zeros:
    every shorter number, then each number of ``top``'s length that is smaller at one digit, then ``top``."""
    digits = str(top)
    width = len(digits)
    shorter = [f"[1-9][0-9]{{0,{width - 2}}}"] if width > 1 else []
    same_length = [
        f"{digits[:i]}[{1 if i == 0 else 0}-{int(d) - 1}]{_digits(width - i - 1)}"
        for i, d in enumerate(digits)
        if int(d) > (1 if i == 0 else 0)
    ]
    return "|".join([*shorter, *same_length, digits])


_DURATIONS = [
    f"(?:{_integers_up_to(min(MAX_DURATION_COUNT, MAX_WINDOW_S // seconds))}){unit}"
    for unit, seconds in UNIT_SECONDS.items()
]
WINDOW_PATTERN = f"^(?:{'|'.join([*NAMED_WINDOWS, *_DURATIONS])})$"
WindowName = Annotated[
    str,
    StringConstraints(pattern=WINDOW_PATTERN),
    Field(description="hourly, daily, weekly, monthly, or a duration up to a year such as 5m, 72h, 2d, 4w."),
]


class Window(BaseModel):
    window: str
    seconds: int
    limit: float


def _windows(limits: list[WindowLimit]) -> list[Window]:
    return [Window(window=w.name, seconds=w.seconds, limit=float(w.limit)) for w in limits]


def _binding(totals: list[WindowTotal]) -> WindowTotal | None:
    """The window closest to its limit (the one that will refuse first)."""
    limited = [t for t in totals if t.limit > 0]
    return max(limited, key=lambda t: t.spent / t.limit, default=None)


class SpendingOutput(BaseModel):
    window_spent: float
    window_limit: float | None
    window_name: str | None = Field(description="The window closest to its limit.")
    percentage_used: float
    violations: list[dict[str, Any]]
    windows: list[dict[str, Any]] = Field(description="Every window: spent, limit, seconds, resets_in_s.")


@tool(scope="guardrails:read", annotations=Annotations("Spending"))
async def get_spending(ctx: ToolContext[MoneyPort], args: NoInput) -> SpendingOutput:
    """What you have spent in each rolling window (hourly, daily, weekly, monthly and your own) against its
    limit, headed by the window closest to its limit."""
    totals = await ctx.services.costs.guardrails.totals(ctx.caller().user_id)
    binding = _binding(totals)
    return SpendingOutput(
        window_spent=float(binding.spent) if binding else 0.0,
        window_limit=float(binding.limit) if binding else None,
        window_name=binding.name if binding else None,
        percentage_used=round(float(binding.spent / binding.limit * 100), 2) if binding else 0.0,
        violations=[window_view(t) for t in totals if t.spent > t.limit],
        windows=[window_view(t) for t in totals],
    )


class RecordInput(Input):
    amount: Money = Field(description="USD spent.")
    idempotency_key: Text | None = Field(default=None, min_length=1, max_length=200)


class RecordOutput(BaseModel):
    message: str
    new_total: float = Field(description="Spent in the window closest to its limit, this spend included.")
    duplicate: bool
    windows: list[dict[str, Any]]


async def _record_quote(ctx: ToolContext[MoneyPort], args: RecordInput) -> Quote:
    return Quote(args.amount, f"Record {dollars(args.amount)} spent outside this platform")


@tool(
    scope="guardrails:write",
    annotations=Annotations("Record spending", read_only=False, idempotent=False),
    quote=_record_quote,
)
async def record_spending(ctx: ToolContext[MoneyPort], args: RecordInput) -> RecordOutput:
    """Record money you spent outside this platform against your spending windows. Checked and recorded
    in one atomic step for every window of your account and of this API key: if any limit would be
    exceeded nothing is recorded and the answer is SPENDING_LIMIT (402) naming each window, its limit,
    what is spent and when it frees up. The same idempotency_key counts once. APPROVAL_REQUIRED when
    your approval policy holds the amount for the account owner's approval."""
    decision = await ctx.services.costs.guardrails.spend(
        ctx.caller(), args.amount, record=True, idempotency_key=args.idempotency_key
    )
    binding = _binding(decision.totals)
    return RecordOutput(
        message="Spending recorded successfully",
        new_total=float(binding.spent) if binding else float(args.amount),
        duplicate=decision.duplicate,
        windows=[window_view(t) for t in decision.totals],
    )


class CheckInput(Input):
    estimated_cost: Money


class CheckOutput(BaseModel):
    allowed: bool
    spent: float
    limit: float | None
    windows: list[dict[str, Any]]


@tool(scope="guardrails:read", annotations=Annotations("Check spending"))
async def check_spending(ctx: ToolContext[MoneyPort], args: CheckInput) -> CheckOutput:
    """Would spending estimated_cost now stay within every limit? 200 with allowed true, or
    SPENDING_LIMIT (402) with allowed false and the violated windows. Records nothing."""
    decision = await ctx.services.costs.guardrails.spend(ctx.caller(), args.estimated_cost, record=False)
    binding = _binding(decision.totals)
    return CheckOutput(
        allowed=True,
        spent=float(binding.spent) if binding else 0.0,
        limit=float(binding.limit) if binding else None,
        windows=[window_view(t) for t in decision.totals],
    )


class ResetInput(Input):
    window_name: WindowName | None = Field(
        default=None, description="One of your windows; omitted: every window."
    )


class MessageOutput(BaseModel):
    message: str


@tool(scope="guardrails:admin", annotations=Annotations("Reset spending", read_only=False, destructive=True))
async def reset_spending(ctx: ToolContext[MoneyPort], args: ResetInput) -> MessageOutput:
    """Start a spending window (or all) afresh: earlier spending stops counting in it, the history is
    kept. Needs the guardrails:admin scope, so an agent's key cannot lift its own limits."""
    await ctx.services.costs.guardrails.reset(ctx.caller().user_id, args.window_name)
    return MessageOutput(message="Spending reset successfully")


class LimitsInput(Input):
    api_key_id: str | None = Field(default=None, max_length=36, description="One of your API keys' budget.")


class LimitsOutput(BaseModel):
    scope: str = Field(description="'user' or 'api_key'.")
    api_key_id: str | None
    limits: list[Window]


async def owned_scope(ctx: ToolContext[KeyBudgetPorts], api_key_id: str | None) -> str:
    """The caller's own scope, or with ``api_key_id`` that key's (NotFound unless it is the caller's)."""
    caller = ctx.caller()
    if api_key_id is None:
        return user_scope(caller.user_id)
    keys = await ctx.services.accounts.list_api_keys(caller.user_id)
    if not any(k.id == api_key_id for k in keys):
        raise NotFound(f"no API key '{api_key_id}' of yours")
    return key_scope(api_key_id)


@tool(scope="guardrails:read", annotations=Annotations("Spending limits"))
async def get_spending_limits(ctx: ToolContext[KeyBudgetPorts], args: LimitsInput) -> LimitsOutput:
    """Your spending limits per rolling window, or the budget of one of your API keys (api_key_id)."""
    scope = await owned_scope(ctx, args.api_key_id)
    limits = await ctx.services.costs.guardrails.limits(scope)
    return LimitsOutput(
        scope="api_key" if args.api_key_id else "user", api_key_id=args.api_key_id, limits=_windows(limits)
    )


class SetLimitsInput(LimitsInput):
    limits: dict[WindowName, Limit | None] = Field(
        min_length=1,
        max_length=20,
        json_schema_extra={"additionalProperties": False},
        description="Window -> USD limit (null removes it). Windows: hourly, daily, weekly, monthly or a "
        "duration such as 5m, 72h, 2d.",
    )


@tool(scope="guardrails:write", annotations=Annotations("Set spending limits", read_only=False))
async def set_spending_limits(ctx: ToolContext[KeyBudgetPorts], args: SetLimitsInput) -> LimitsOutput:
    """Set your limits per window, or an API key's own budget (api_key_id) so an agent gets its own
    allowance. Lowering a limit or adding a key budget needs guardrails:write; raising or removing a limit
    needs guardrails:admin (a login has it; give agents' keys only guardrails:write)."""
    scope = await owned_scope(ctx, args.api_key_id)
    limits = await ctx.services.costs.guardrails.set_limits(ctx.caller(), scope, args.limits)
    return LimitsOutput(
        scope="api_key" if args.api_key_id else "user", api_key_id=args.api_key_id, limits=_windows(limits)
    )
