"""Registration, login, token refresh and logout: REST only, as MCP and A2A callers are already
authenticated."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from aiserve_mcp.tools.common import Email, Input, Text
from aiserve_mcp.tools.ports import AccountsPort
from aiserve_mcp.tools.registry import Annotations, ToolContext, tool


class UserSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    email: str
    name: str | None = None
    created_at: datetime | None = None


class RegisterInput(Input):
    email: Email
    password: str = Field(min_length=8, max_length=1024, description="At least 8 characters.")
    name: Text | None = Field(default=None, max_length=200)


class RegisterOutput(BaseModel):
    user: UserSummary


class LoginInput(Input):
    email: Email
    password: str = Field(max_length=1024)


class Tokens(BaseModel):
    access_token: str
    refresh_token: str
    expires_in: int = Field(description="Seconds until the access token expires.")
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret


class LoginOutput(BaseModel):
    user: UserSummary
    tokens: Tokens


class RefreshInput(Input):
    refresh_token: str = Field(max_length=256)


class RefreshOutput(BaseModel):
    tokens: Tokens


class LogoutOutput(BaseModel):
    message: str


async def _spend_auth_budget(ctx: ToolContext[AccountsPort]) -> None:
    """Login and registration are limited per client address as well, against password guessing."""
    settings = ctx.services.settings
    await ctx.services.rate_limiter.spend(f"auth:{ctx.client_address or 'unknown'}", settings.auth_rate_limit)


@tool(scope=None, agent_visible=False, annotations=Annotations("Register", read_only=False, idempotent=False))
async def auth_register(ctx: ToolContext[AccountsPort], args: RegisterInput) -> RegisterOutput:
    """Create a user account. The email must be unused; the password is stored only as an Argon2id hash."""
    await _spend_auth_budget(ctx)
    user = await ctx.services.accounts.create_user(args.email, args.password, args.name)
    return RegisterOutput(user=UserSummary.model_validate(user))


@tool(scope=None, agent_visible=False, annotations=Annotations("Log in", read_only=False, idempotent=False))
async def auth_login(ctx: ToolContext[AccountsPort], args: LoginInput) -> LoginOutput:
    """Exchange email and password for a 24-hour access token and a single-use refresh token."""
    await _spend_auth_budget(ctx)
    user, pair = await ctx.services.accounts.login(args.email, args.password)
    return LoginOutput(
        user=UserSummary.model_validate(user),
        tokens=Tokens(
            access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
        ),
    )


@tool(
    scope=None,
    agent_visible=False,
    annotations=Annotations("Refresh tokens", read_only=False, idempotent=False),
)
async def auth_refresh(ctx: ToolContext[AccountsPort], args: RefreshInput) -> RefreshOutput:
    """Spend a refresh token for a new token pair. Each refresh token works once: presenting a spent one
    revokes the whole login (all its tokens), since that means it was copied."""
    await _spend_auth_budget(ctx)
    pair = await ctx.services.accounts.refresh(args.refresh_token)
    return RefreshOutput(
        tokens=Tokens(
            access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
        )
    )


@tool(scope=None, agent_visible=False, annotations=Annotations("Log out", read_only=False))
async def auth_logout(ctx: ToolContext[AccountsPort], args: RefreshInput) -> LogoutOutput:
    """End a login: its refresh token and every access token minted from it stop working."""
    await ctx.services.accounts.logout(args.refresh_token)
    return LogoutOutput(message="Logged out")
