"""One rule for every text input, on every surface: no NUL character and no lone surrogate (PostgreSQL
can store neither), refused with 400 VALIDATION_ERROR before anything is stored."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette

from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.tools import REGISTRY
from aiserve_mcp.tools.registry import Surface, ToolContext
from aiserve_mcp.tools.runner import call_tool
from tests.conftest import PASSWORD, Account


async def test_a_nul_in_a_registered_name_is_refused_and_nothing_is_stored(client: httpx.AsyncClient) -> None:
    body = {"email": "nul@example.com", "password": PASSWORD, "name": "Ann\u0000"}
    refused = await client.post("/api/v1/auth/register", json=body)
    assert refused.status_code == 400 and refused.json()["code"] == "VALIDATION_ERROR", refused.text
    assert "NUL" in refused.json()["error"]
    login = await client.post("/api/v1/auth/login", json={"email": body["email"], "password": PASSWORD})
    assert login.status_code == 401  # the account was not created


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/auth/apikey", {"name": "key\u0000"}),
        ("/api/v1/gpu/preferences", {"preferred_vendors": ["nvidia\u0000"]}),
        ("/api/v1/guardrails/spending/record", {"amount": 1, "idempotency_key": "k\u0000"}),
        ("/api/v1/auth/apikey", {"name": "k", "scopes": ["gpu:read"], "\u0000": 1}),  # keys count too
    ],
)
async def test_nul_anywhere_in_a_body_is_refused(
    client: httpx.AsyncClient, account: Account, path: str, body: dict[str, object]
) -> None:
    refused = await client.post(path, json=body, headers=account.headers)
    assert refused.status_code == 400 and refused.json()["code"] == "VALIDATION_ERROR", refused.text


async def test_a_lone_surrogate_is_refused_on_surfaces_that_parse_it(
    app: Starlette, account: Account
) -> None:
    """JSON parsers refuse a lone surrogate escape on HTTP; a Python caller (stdio MCP, A2A data parts)
    can still hand one to a tool, and the rule holds there too."""
    services = app.state.services
    principal = await services.accounts.authenticate(account.access_token)
    with pytest.raises(ValidationFailed, match="lone surrogates"):
        await call_tool(
            REGISTRY.get("create_api_key"), {"name": "k\ud800"}, ToolContext(services, principal, Surface.MCP)
        )
