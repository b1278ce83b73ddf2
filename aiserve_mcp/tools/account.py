"""The caller's own account: profile, API keys and the full export."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from aiserve_mcp.core.principal import SCOPES
from aiserve_mcp.money.guardrails import key_scope
from aiserve_mcp.tools.billing import TransactionOut
from aiserve_mcp.tools.common import AwareDatetime, Input, IntegerNumber, Merged, NoInput, Offset, Text
from aiserve_mcp.tools.gpu_instances import ContractOut
from aiserve_mcp.tools.guardrails import Limit, WindowName
from aiserve_mcp.tools.models import QuotaOutput, quota_of
from aiserve_mcp.tools.ports import AccountsPort, GpuPort, KeyBudgetPorts, MoneyPort, ServingPort
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool

API_KEY_NOTICE = "Save this API key securely. It will not be shown again."
Scope = Annotated[str, Field(json_schema_extra={"enum": sorted(SCOPES)})]


class UserProfile(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    email: str
    name: str | None
    is_admin: bool
    created_at: datetime
    updated_at: datetime


class ApiKeyInfo(BaseModel):
    """An API key's metadata. The key itself is never stored, so it can never be listed."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str = Field(description="The first characters of the key, to recognise it.")
    scopes: list[str] | None = Field(description="Granted scopes; null means every scope.")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class WhoamiOutput(BaseModel):
    user: UserProfile
    auth_method: str = Field(description="'jwt' (a login), 'api_key' or 'oauth' (an app you connected).")
    api_key_id: str | None
    scopes: list[str] = Field(description="Scopes this credential holds.")


@tool(scope="account:read", annotations=Annotations("Who am I"))
async def whoami(ctx: ToolContext[AccountsPort], args: NoInput) -> WhoamiOutput:
    """Show the account and credential this call is made with, including the scopes it holds."""
    caller = ctx.caller()
    user = await ctx.services.accounts.get_user(caller.user_id)
    scopes = sorted(SCOPES) if caller.scopes is None else sorted(caller.scopes)
    return WhoamiOutput(
        user=UserProfile.model_validate(user),
        auth_method=caller.via,
        api_key_id=caller.api_key_id,
        scopes=scopes,
    )


class CreateApiKeyInput(Input):
    name: Text = Field(min_length=1, max_length=200, description="A label for the key, e.g. 'production'.")
    expires_at: AwareDatetime = Field(
        default=None, description="When the key stops working (ISO 8601 with zone)."
    )
    scopes: list[Scope] | None = Field(
        default=None,
        description="Scopes to grant, e.g. ['gpu:read', 'models:read']; omit for all the caller's scopes "
        "except guardrails:admin and admin, which are granted only when named.",
    )
    budget: dict[WindowName, Limit] | None = Field(
        default=None,
        max_length=20,
        json_schema_extra={"additionalProperties": False},
        description="The key's own spending limits, window -> USD (e.g. {'daily': 20}), on top of yours.",
    )


class CreateApiKeyOutput(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    api_key: str = Field(description="The key. Shown once: store it now.")
    id: str
    name: str
    scopes: list[str] | None
    message: str
    created_at: datetime
    expires_at: datetime | None


@tool(scope="account:write", annotations=Annotations("Create API key", read_only=False, idempotent=False))
async def create_api_key(ctx: ToolContext[KeyBudgetPorts], args: CreateApiKeyInput) -> CreateApiKeyOutput:
    """Create an API key (``ak_live_...``) for programs and agents. The key is returned once and only its
    hash is kept. Give each agent its own key with only the scopes it needs and, with ``budget``, its own
    spending limits; a key can never hold a scope the credential creating it lacks. Without ``scopes`` the
    key gets the caller's scopes except ``guardrails:admin`` (raising limits, resetting spending) and
    ``admin``: an agent given such a key cannot lift its own limits. Name them to grant them."""
    caller = ctx.caller()
    key, plaintext = await ctx.services.accounts.create_api_key(
        caller, args.name, args.expires_at, args.scopes
    )
    if args.budget:
        await ctx.services.costs.guardrails.set_limits(caller, key_scope(key.id), args.budget)
    return CreateApiKeyOutput.model_validate(Merged(key, api_key=plaintext, message=API_KEY_NOTICE))


class ApiKeyList(BaseModel):
    api_keys: list[ApiKeyInfo]
    count: int


@tool(scope="account:read", annotations=Annotations("List API keys"))
async def list_api_keys(ctx: ToolContext[AccountsPort], args: NoInput) -> ApiKeyList:
    """List the caller's API keys (metadata only: name, prefix, scopes, expiry, last use, revocation)."""
    keys = [
        ApiKeyInfo.model_validate(k) for k in await ctx.services.accounts.list_api_keys(ctx.caller().user_id)
    ]
    return ApiKeyList(api_keys=keys, count=len(keys))


class RevokeApiKeyInput(Input):
    key_id: Text = Field(max_length=64, description="The key's id, from list_api_keys.")


class RevokeApiKeyOutput(BaseModel):
    message: str
    api_key: ApiKeyInfo


@tool(scope="account:write", annotations=Annotations("Revoke API key", read_only=False, destructive=True))
async def revoke_api_key(ctx: ToolContext[AccountsPort], args: RevokeApiKeyInput) -> RevokeApiKeyOutput:
    """Revoke one of the caller's API keys; requests with it are refused from now on. Cannot be undone."""
    key = await ctx.services.accounts.revoke_api_key(ctx.caller().user_id, args.key_id)
    return RevokeApiKeyOutput(message="API key revoked", api_key=ApiKeyInfo.model_validate(key))


class AccountExport(BaseModel):
    user: UserProfile
    api_keys: list[ApiKeyInfo]
    usage_quota: QuotaOutput = Field(description="Model storage and upload quota, as GET /api/v1/quota.")
    gpu_usage: list[dict[str, Any]] = Field(description="Every GPU instance you rented.")
    transactions: list[dict[str, Any]] = Field(description="Your whole credit history.")
    credits: list[dict[str, Any]] = Field(description="Your balance: available and held USD.")
    exported_at: datetime


class ExportPorts(AccountsPort, MoneyPort, GpuPort, ServingPort, Protocol):
    """What an export reads: the account, its credits, its GPU contracts and its model quota."""


@tool(scope="account:read", annotations=Annotations("Export account"))
async def export_account(ctx: ToolContext[ExportPorts], args: NoInput) -> AccountExport:
    """Download everything the platform holds about the caller: profile, API keys (never their secrets),
    quota, GPU instances rented, credit transactions and balance."""
    caller = ctx.caller()
    user = await ctx.services.accounts.get_user(caller.user_id)
    keys = await ctx.services.accounts.list_api_keys(caller.user_id)
    ledger = ctx.services.costs.ledger
    history, _ = await ledger.transactions(caller.user_id, limit=1_000_000, offset=0)
    balance = await ledger.balance(caller.user_id)
    contracts = await ctx.services.market.contracts.list_for(caller.user_id, active_only=False)
    return AccountExport(
        user=UserProfile.model_validate(user),
        api_keys=[ApiKeyInfo.model_validate(k) for k in keys],
        usage_quota=await quota_of(ctx, caller.user_id),
        gpu_usage=[ContractOut.model_validate(c).model_dump(mode="json") for c in contracts],
        transactions=[TransactionOut.model_validate(t).model_dump(mode="json") for t in history],
        credits=[{"currency": "USD", "available": float(balance.available), "held": float(balance.held)}],
        exported_at=datetime.now(UTC),
    )


class ListUsersInput(Input):
    limit: Annotated[int, IntegerNumber(ge=1, le=1000)] = 100
    offset: Offset = 0


class UserList(BaseModel):
    users: list[UserProfile]
    count: int


@tool(scope="account:read", admin_only=True, annotations=Annotations("List users (admin)"))
async def admin_list_users(ctx: ToolContext[AccountsPort], args: ListUsersInput) -> UserList:
    """Administrators only: list user accounts, oldest first, with paging (limit, offset)."""
    users = [
        UserProfile.model_validate(u) for u in await ctx.services.accounts.list_users(args.limit, args.offset)
    ]
    return UserList(users=users, count=len(users))
