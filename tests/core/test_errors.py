"""One error body everywhere: every class of the table, and the HTTP answers that carry them."""

from __future__ import annotations

import httpx
import pytest
from pydantic import BaseModel
from starlette.applications import Starlette

from aiserve_mcp.app import create_app
from aiserve_mcp.core.errors import (
    ERROR_TABLE,
    AiserveError,
    ApprovalRequired,
    InternalError,
    RateLimited,
    SpendingLimit,
    error_body,
    error_headers,
    kind_of,
)
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.mcp.results import refusal_result
from aiserve_mcp.tools.common import NoInput
from aiserve_mcp.tools.registry import Annotations, Surface, Tool, ToolContext
from aiserve_mcp.tools.runner import call_tool
from tests.conftest import Account, running

SPEC_CODES = {
    "AUTH_REQUIRED",
    "AUTH_INVALID",
    "RATE_LIMITED",
    "QUOTA_EXCEEDED",
    "SPENDING_LIMIT",
    "NOT_FOUND",
    "VALIDATION_ERROR",
    "INSUFFICIENT_CREDITS",
}


@pytest.mark.parametrize("error_class", list(ERROR_TABLE), ids=lambda c: c.__name__)
def test_every_error_class_renders_the_spec_body(error_class: type[AiserveError]) -> None:
    if error_class is RateLimited:
        error: AiserveError = RateLimited("slow down", retry_after_s=7, details={"field": "x"})
    elif error_class is SpendingLimit:
        error = SpendingLimit(
            "over the daily limit", [{"window": "daily", "spent": 105.0, "limit": 100.0}], 95.0
        )
    elif error_class is ApprovalRequired:
        error = ApprovalRequired("needs your approval", {"approval": {"id": "apr_1", "status": "pending"}})
    else:
        error = error_class("something specific", {"field": "x"})
    body = error_body(error)
    assert body["error"] == error.message and body["code"] == ERROR_TABLE[error_class].code
    assert body["details"]
    assert kind_of(error).http_status == ERROR_TABLE[error_class].http_status
    mcp = refusal_result(error)
    assert mcp.is_error is True
    assert ERROR_TABLE[error_class].code in mcp.content[0].text  # type: ignore[union-attr]


def test_the_spec_codes_and_statuses_are_all_in_the_table() -> None:
    codes = {kind.code: kind.http_status for kind in ERROR_TABLE.values()}
    assert set(codes) >= SPEC_CODES
    assert codes["SPENDING_LIMIT"] == 402 and codes["INSUFFICIENT_CREDITS"] == 402
    assert codes["RATE_LIMITED"] == 429 and codes["QUOTA_EXCEEDED"] == 429
    assert error_headers(RateLimited("x", retry_after_s=3)) == {"Retry-After": "3"}


def test_spending_limit_bodies_carry_the_spec_check_fields() -> None:
    violations = [{"window": "hourly", "spent": 105.0, "limit": 100.0}]
    body = error_body(SpendingLimit("over", violations, 55.0))
    assert body["code"] == "SPENDING_LIMIT" and body["allowed"] is False
    assert body["violations"] == violations and body["spent"] == 55.0


class Boom(BaseModel):
    ok: bool


async def _explode(ctx: ToolContext, args: NoInput) -> Boom:
    raise RuntimeError("password=hunter2 at /secret/path")


async def test_unexpected_failures_become_a_500_without_internals(app: Starlette) -> None:
    tool = Tool("explode", "Fails.", NoInput, Boom, _explode, None, Annotations("Explode"))
    ctx = ToolContext(app.state.services, None, Surface.REST)
    with pytest.raises(InternalError) as raised:
        await call_tool(tool, {}, ctx)
    body = error_body(raised.value)
    assert body["code"] == "INTERNAL_ERROR" and kind_of(raised.value).http_status == 500
    assert "hunter2" not in str(body) and "/secret" not in str(body)


async def test_http_error_answers(client: httpx.AsyncClient, account: Account) -> None:
    not_json = await client.post(
        "/api/v1/auth/login", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400 and not_json.json()["code"] == "VALIDATION_ERROR"
    array = await client.post("/api/v1/auth/login", json=[1, 2])
    assert array.status_code == 400 and "JSON object" in array.json()["error"]
    extra = await client.post(
        "/api/v1/auth/apikey", json={"name": "k", "admin": True}, headers=account.headers
    )
    assert extra.status_code == 400 and extra.json()["details"]["fields"][0]["field"] == "admin"
    missing = await client.get("/api/v1/nothing-here", headers=account.headers)
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    unknown_protocol = await client.post("/api/v1/agent", json={}, headers=account.headers)
    assert unknown_protocol.status_code == 400 and "supported" in unknown_protocol.json()["details"]
    wrong_method = await client.put("/api/v1/user/export", headers=account.headers)
    assert wrong_method.status_code == 405


async def test_oversized_bodies_are_refused(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"max_request_body_bytes": 1024}))
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
            big = await client.post("/api/v1/auth/register", json={"email": "a@b.co", "password": "x" * 4096})
            assert big.status_code == 413 and big.json()["code"] == "PAYLOAD_TOO_LARGE"


async def test_health_is_503_when_a_configured_dependency_is_down(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
            response = await client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["redis"]["healthy"] is False and body["checks"]["database"]["healthy"] is True
