"""The scenarios every surface shares, run through each with its real client against a served app: REST
(httpx), MCP (the official SDK over Streamable HTTP in both eras, and legacy SSE), A2A (a2a-sdk), and the
agent door (its envelope, and the MCP SDK through it).

Each surface has a small driver that calls one tool with one credential and normalises the answer to an
``Outcome``: the tool's structured result, or the spec's error body ``{"error", "code", "details"}``. A
driver also checks what its surface adds around that (an HTTP status that agrees with the error code, the
MCP text content that mirrors the structured result), and a call that reaches its tool is checked against
the server's ``aiserve_tool_calls_total`` under the surface's label, so a driver that went another way
fails."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import httpx
import httpx2
import pytest
from a2a.client import A2ACardResolver, A2AClientError, ClientConfig, create_client

from aiserve_mcp.core.errors import ERROR_TABLE
from aiserve_mcp.protocols.agent_door.door import AGENT_PATH, PROTOCOL_HEADER
from aiserve_mcp.protocols.mcp.http import MCP_PATH
from aiserve_mcp.rest_compat.routes import ROUTES
from aiserve_mcp.tools.registry import Surface
from tests.conftest import Account, LiveServer, api_key, sign_up
from tests.mcp_clients import Transport, mcp_client
from tests.protocols.test_a2a import COMPLETED, artifact_data, call, refusal_body, run

HTTP_STATUS = {kind.code: kind.http_status for kind in ERROR_TABLE.values()}
NEGATIVE_PAYMENT = {"amount": -5, "payment_preference": {"type": "card", "card_token": "tok_visa"}}


@dataclass(frozen=True)
class Outcome:
    """What a surface answered: the tool's structured ``result``, or the spec's ``error`` body; with the
    ``WWW-Authenticate`` challenge of an HTTP refusal."""

    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    challenge: str | None = None


def bearer(credential: str | None) -> dict[str, str]:
    return {} if credential is None else {"Authorization": f"Bearer {credential}"}


def refused(response: httpx.Response | httpx2.Response) -> Outcome:
    """An HTTP refusal: the spec's body, under the status its code has."""
    body = response.json()
    assert response.status_code == HTTP_STATUS[body["code"]], (response.status_code, body)
    return Outcome(error=body, challenge=response.headers.get("www-authenticate"))


class Refusals:
    """An httpx response hook that keeps the refusals an SDK client met (it raises without their body)."""

    def __init__(self) -> None:
        self.responses: list[httpx.Response | httpx2.Response] = []

    async def __call__(self, response: httpx.Response | httpx2.Response) -> None:
        if response.status_code >= 400:
            await response.aread()
            self.responses.append(response)

    def outcome(self, error: Exception) -> Outcome:
        """The last refusal; ``error``, the SDK's exception, is raised again when there was none."""
        if not self.responses:
            raise error
        return refused(self.responses[-1])


class Driver(Protocol):
    @property
    def label(self) -> Surface:
        """The ``surface`` label of aiserve_tool_calls_total for its calls."""
        ...

    async def call(self, url: str, credential: str | None, tool: str, arguments: dict[str, Any]) -> Outcome:
        """Call ``tool`` on the server at ``url`` with ``credential`` (none: anonymous)."""
        ...


class Rest:
    """The route of ``tool`` in the REST table; a tool without one is a path of its own that no route has."""

    label = Surface.REST

    async def call(self, url: str, credential: str | None, tool: str, arguments: dict[str, Any]) -> Outcome:
        route = next((r for r in ROUTES if r.tool == tool), None)
        method, path = (route.method, route.path) if route else ("POST", f"/api/v1/{tool}")
        rest = dict(arguments)
        for name in route.path_params if route else ():
            path = path.replace(f"{{{name}}}", str(rest.pop(name)))
        query = method in ("GET", "DELETE")
        async with httpx.AsyncClient(base_url=url, headers=bearer(credential), timeout=30) as http:
            response = await http.request(
                method, path, params=rest if query else None, json=None if query else rest
            )
        if response.is_error:
            return refused(response)
        assert route is not None and response.status_code == route.status, response.text
        return Outcome(result=response.json())


@dataclass(frozen=True)
class Mcp:
    """The official MCP client over ``transport``, its Streamable HTTP endpoint at ``path``."""

    transport: Transport
    path: str = MCP_PATH
    label: ClassVar[Surface] = Surface.MCP

    async def call(self, url: str, credential: str | None, tool: str, arguments: dict[str, Any]) -> Outcome:
        refusals = Refusals()
        try:
            async with mcp_client(
                url, credential, self.transport, path=self.path, on_response=refusals
            ) as client:
                answer = await client.call_tool(tool, arguments)
        except Exception as error:  # the SDK's task groups wrap what the transport raised
            return refusals.outcome(error)
        [content] = answer.content
        text = json.loads(content.text)  # type: ignore[union-attr]
        if answer.is_error:
            return Outcome(error=text)
        assert answer.structured_content == text  # the text content is the structured result, as JSON
        return Outcome(result=answer.structured_content)


class A2a:
    """The a2a-sdk client built from the served card; the tool call is a data part."""

    label = Surface.A2A

    async def call(self, url: str, credential: str | None, tool: str, arguments: dict[str, Any]) -> Outcome:
        refusals = Refusals()
        async with httpx.AsyncClient(
            headers=bearer(credential), timeout=30, event_hooks={"response": [refusals]}
        ) as http:
            card = await A2ACardResolver(http, url).get_agent_card()
            client = await create_client(card, client_config=ClientConfig(streaming=False, httpx_client=http))
            try:
                task = await run(client, call(tool, arguments))
            except A2AClientError as error:
                return refusals.outcome(error)
            finally:
                await client.close()
        if task.status.state == COMPLETED:
            return Outcome(result=artifact_data(task))
        return Outcome(error=refusal_body(task))


class Envelope:
    """The agent door's envelope: ``{"protocol", "from_agent", "to_agent", "action", "data"}``."""

    label = Surface.ENVELOPE

    async def call(self, url: str, credential: str | None, tool: str, arguments: dict[str, Any]) -> Outcome:
        message = {"protocol": "a2a", "from_agent": "tester", "to_agent": "aiserve", "action": tool}
        async with httpx.AsyncClient(base_url=url, headers=bearer(credential), timeout=30) as http:
            response = await http.post(AGENT_PATH, json={**message, "data": arguments})
        if PROTOCOL_HEADER not in response.headers:  # refused before the door read the message
            return refused(response)
        assert response.headers[PROTOCOL_HEADER] == "envelope"
        body = response.json()
        assert {key: body[key] for key in message} == {
            **message,
            "from_agent": "aiserve",
            "to_agent": "tester",
        }
        if body["status"] == "success":
            assert response.status_code == 200
            return Outcome(result=body["result"])
        assert body["status"] == "error" and response.status_code == HTTP_STATUS[body["error"]["code"]]
        return Outcome(error=body["error"])


DRIVERS: dict[str, Driver] = {
    "rest": Rest(),
    "mcp": Mcp("streamable-modern"),
    "mcp-2025-11-25": Mcp("streamable-legacy"),
    "mcp-sse": Mcp("sse-legacy"),
    "a2a": A2a(),
    "agent-door-envelope": Envelope(),
    "agent-door-mcp": Mcp("streamable-modern", AGENT_PATH),
    "agent-door-mcp-2025-11-25": Mcp("streamable-legacy", AGENT_PATH),
}


@dataclass(frozen=True)
class Surfaced:
    """One driver against the live server."""

    driver: Driver
    server: LiveServer

    async def call(
        self, credential: str | None, tool: str, arguments: dict[str, Any] | None = None
    ) -> Outcome:
        return await self.driver.call(self.server.url, credential, tool, arguments or {})

    def counted(self, tool: str, outcome: str) -> float:
        """Calls of ``tool`` through this surface that ended with ``outcome`` (ok, or an error code)."""
        labels = {"tool": tool, "surface": self.driver.label, "outcome": outcome}
        registry = self.server.app.state.services.telemetry.registry
        return float(registry.get_sample_value("aiserve_tool_calls_total", labels) or 0)


@pytest.fixture(params=sorted(DRIVERS))
def surface(request: pytest.FixtureRequest, live_server: LiveServer) -> Surfaced:
    return Surfaced(DRIVERS[request.param], live_server)


@pytest.fixture
async def http(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
        yield client


@pytest.fixture
async def caller(http: httpx.AsyncClient) -> Account:
    return await sign_up(http)


@pytest.mark.parametrize("kind", ["token", "api key"])
async def test_a_read_tool_answers_its_structured_result(
    surface: Surfaced, http: httpx.AsyncClient, caller: Account, kind: str
) -> None:
    credential = caller.access_token if kind == "token" else await api_key(http, caller)
    rest = (await http.get("/api/v1/user/me", headers=bearer(credential))).json()
    assert rest["user"] == {**rest["user"], "email": caller.email, "id": caller.user_id}
    assert rest["auth_method"] == ("api_key" if kind == "api key" else "jwt")
    before = surface.counted("whoami", "ok")
    assert await surface.call(credential, "whoami") == Outcome(result=rest)
    assert surface.counted("whoami", "ok") == before + 1


@pytest.mark.parametrize(
    ("credential", "code"), [(None, "AUTH_REQUIRED"), ("not-a-token", "AUTH_INVALID")], ids=["none", "forged"]
)
async def test_a_caller_without_a_valid_credential_is_refused(
    surface: Surfaced, credential: str | None, code: str
) -> None:
    outcome = await surface.call(credential, "whoami")
    assert outcome.error is not None and outcome.error["code"] == code, outcome
    assert outcome.challenge is not None and outcome.challenge.startswith("Bearer")


async def test_a_key_without_the_scope_is_refused_naming_it(
    surface: Surfaced, http: httpx.AsyncClient, caller: Account
) -> None:
    key = await api_key(http, caller, scopes=["system:read"])
    outcome = await surface.call(key, "export_account")
    assert outcome.error == {
        "error": "this API key lacks the 'account:read' scope that 'export_account' needs",
        "code": "FORBIDDEN",
        "details": {"required_scope": "account:read"},
    }
    assert surface.counted("export_account", "FORBIDDEN") == 1


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [("create_api_key", {"name": ""}, "name"), ("create_payment", NEGATIVE_PAYMENT, "amount")],
    ids=["create_api_key", "create_payment"],
)
async def test_invalid_input_is_refused_naming_the_field(
    surface: Surfaced, caller: Account, tool: str, arguments: dict[str, Any], field: str
) -> None:
    outcome = await surface.call(caller.access_token, tool, arguments)
    assert outcome.error is not None and outcome.error["code"] == "VALIDATION_ERROR", outcome
    assert outcome.error["error"].startswith(f"invalid input for '{tool}': {field}: ")
    assert [f["field"] for f in outcome.error["details"]["fields"]] == [field]
    assert surface.counted(tool, "VALIDATION_ERROR") == 1


async def test_an_unknown_tool_is_not_found(surface: Surfaced, caller: Account) -> None:
    outcome = await surface.call(caller.access_token, "no_such_tool")
    assert outcome.error is not None and outcome.error["code"] == "NOT_FOUND", outcome
    assert "no_such_tool" in outcome.error["error"]
