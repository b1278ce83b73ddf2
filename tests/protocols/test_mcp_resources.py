"""MCP resources, resource templates, subscriptions, prompts, cancellation and the conformance fixtures,
through the official SDK client against a served app."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, types
from mcp.client.session import IncomingMessage
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.dev import mcp_conformance
from aiserve_mcp.protocols.mcp.http import MCP_PATH
from aiserve_mcp.protocols.mcp.prompts import PROMPTS
from aiserve_mcp.protocols.mcp.server import build_mcp_server
from aiserve_mcp.tools import REGISTRY
from aiserve_mcp.tools.common import NoInput
from aiserve_mcp.tools.registry import Annotations, Surface, Tool, ToolContext, ToolRegistry
from tests.conftest import Account, LiveServer, api_key, serve, sign_up
from tests.mcp_clients import TRANSPORTS, Transport, all_tools, mcp_client
from tests.serving.test_models import mlp_bytes, upload

MODERN_NOT_FOUND = -32602
LEGACY_NOT_FOUND = -32002


@pytest.fixture
async def http(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
        yield client


async def rent_local(http: httpx.AsyncClient, account: Account) -> str:
    answer = await http.post(
        "/api/v1/gpu/instances/reserve",
        json={"count": 1, "filters": {"provider": "local"}},
        headers=account.headers,
    )
    assert answer.status_code == 201 and answer.json()["count"] == 1, answer.text
    return str(answer.json()["reserved"][0]["contract_id"])


async def ready_model(http: httpx.AsyncClient, account: Account) -> str:
    model_id = str((await upload(http, account, mlp_bytes())).json()["model_id"])
    for _ in range(200):
        details = (await http.get(f"/api/v1/models/{model_id}", headers=account.headers)).json()
        if details["status"] != "loading":
            assert details["status"] == "ready", details
            return model_id
        await asyncio.sleep(0.05)
    raise AssertionError("the model never finished loading")


async def read_json(client: Client, uri: str) -> Any:
    result = await client.read_resource(uri)
    [content] = result.contents
    assert isinstance(content, types.TextResourceContents)
    assert content.uri == uri and content.mime_type == "application/json"
    return json.loads(content.text)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resources_are_the_rest_answers(
    transport: Transport, live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    owner = await sign_up(http)
    contract_id = await rent_local(http, owner)
    model_id = await ready_model(http, owner)
    async with mcp_client(live_server.url, owner.access_token, transport) as client:
        listed = [r for r in (await client.list_resources()).resources if r.uri.startswith("aiserve://")]
        assert [r.uri for r in listed] == [
            "aiserve://instances",
            "aiserve://models",
            "aiserve://spending",
            "aiserve://gpu/catalog",
        ]
        assert all(r.mime_type == "application/json" and r.title and r.description for r in listed)
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == [
            "aiserve://instances/{contract_id}",
            "aiserve://models/{model_id}",
        ]
        same = {
            "aiserve://instances": "/api/v1/gpu/contracts",
            f"aiserve://instances/{contract_id}": f"/api/v1/gpu/contracts/{contract_id}",
            "aiserve://models": "/api/v1/models",
            f"aiserve://models/{model_id}": f"/api/v1/models/{model_id}",
            "aiserve://spending": "/api/v1/guardrails/spending",
            "aiserve://gpu/catalog": "/api/v1/gpu/available",
        }
        for uri, path in same.items():
            rest = await http.get(path, headers=owner.headers)
            assert rest.status_code == 200, rest.text
            assert await read_json(client, uri) == rest.json(), uri
    contracts = (await http.get("/api/v1/gpu/contracts", headers=owner.headers)).json()["contracts"]
    assert [c["contract_id"] for c in contracts] == [contract_id]


@pytest.mark.parametrize("transport", ["streamable-modern", "sse-legacy"])
async def test_unknown_uris_and_other_users_items_are_not_found(
    transport: Transport, live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    owner, other = await sign_up(http), await sign_up(http)
    contract_id = await rent_local(http, owner)
    model_id = await ready_model(http, owner)
    code = MODERN_NOT_FOUND if transport == "streamable-modern" else LEGACY_NOT_FOUND
    async with mcp_client(live_server.url, other.access_token, transport) as client:
        for uri in (
            f"aiserve://instances/{contract_id}",
            f"aiserve://models/{model_id}",
            "aiserve://models/" + "x" * 37,  # longer than any id: refused by the tool's input model
            "aiserve://models/",
            "aiserve://models/a/b",
            "aiserve://nothing",
            "https://example.com/",
        ):
            with pytest.raises(MCPError) as refused:
                await client.read_resource(uri)
            assert (refused.value.code, refused.value.data) == (code, {"uri": uri}), uri
        assert (await read_json(client, "aiserve://instances"))["count"] == 0


async def test_a_key_sees_only_what_its_scopes_allow(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    owner = await sign_up(http)
    key = await api_key(http, owner, scopes=["models:read"])
    async with mcp_client(live_server.url, key, "streamable-modern") as client:
        assert [r.uri for r in (await client.list_resources()).resources] == ["aiserve://models"]
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["aiserve://models/{model_id}"]
        tools = {t.name for t in await all_tools(client)}
        assert {"list_models", "get_model", "predict", "list_model_formats"} <= tools
        assert all(REGISTRY.get(name).scope in (None, "models:read") for name in tools)
        assert (await client.list_prompts()).prompts == []  # deploying a model uploads it: models:write
        with pytest.raises(MCPError) as refused:
            await client.read_resource("aiserve://spending")
        assert refused.value.code == -32003 and "guardrails:read" in refused.value.message
        assert refused.value.data["code"] == "FORBIDDEN"
        with pytest.raises(MCPError) as hidden:
            await client.get_prompt("review_spending")
        assert hidden.value.code == types.INVALID_PARAMS
    writer = await api_key(http, owner, scopes=["models:read", "models:write"])
    async with mcp_client(live_server.url, writer, "streamable-modern") as client:
        assert [p.name for p in (await client.list_prompts()).prompts] == ["deploy_and_test_model"]


def tools_named(text: str) -> set[str]:
    return set(re.findall(r"`([a-z0-9_]+)`", text))


async def test_prompts_name_only_real_tools_and_validate_their_arguments(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    owner = await sign_up(http)
    async with mcp_client(live_server.url, owner.access_token, "streamable-modern") as client:
        listed = {p.name: p for p in (await client.list_prompts()).prompts}
        assert list(listed) == ["find_cheapest_gpu", "deploy_and_test_model", "review_spending"]
        cheapest = listed["find_cheapest_gpu"]
        assert [(a.name, a.required) for a in cheapest.arguments or ()] == [
            ("workload", True),
            ("min_vram_gb", False),
            ("max_price", False),
        ]
        arguments = {
            "find_cheapest_gpu": {
                "workload": "Llama 3 8B inference",
                "min_vram_gb": "24",
                "max_price": "2.5",
            },
            "deploy_and_test_model": {"model": "an ONNX classifier, mlp.onnx"},
            "review_spending": {"window": "daily"},
        }
        for spec in PROMPTS:
            result = await client.get_prompt(spec.name, arguments[spec.name])
            assert result.description == listed[spec.name].description
            [message] = result.messages
            assert message.role == "user" and isinstance(message.content, types.TextContent)
            text = message.content.text
            assert tools_named(text) == set(spec.tools), spec.name
            assert all(REGISTRY.get(name).agent_visible for name in spec.tools)
        cheapest_text = (
            await client.get_prompt("find_cheapest_gpu", arguments["find_cheapest_gpu"])
        ).messages
        assert isinstance(cheapest_text[0].content, types.TextContent)
        assert "Llama 3 8B inference" in cheapest_text[0].content.text
        assert (
            "at least 24 GB" in cheapest_text[0].content.text
            and "$2.5 per hour" in cheapest_text[0].content.text
        )
        unbounded = await client.get_prompt("review_spending")
        assert isinstance(unbounded.messages[0].content, types.TextContent)
        assert "across every window" in unbounded.messages[0].content.text

        for name, bad, field in (
            ("find_cheapest_gpu", {}, "workload"),
            ("find_cheapest_gpu", {"workload": "x", "min_vram_gb": "lots"}, "min_vram_gb"),
            ("find_cheapest_gpu", {"workload": "x", "max_vram": "24"}, "max_vram"),
            ("review_spending", {"window": "fortnightly"}, "window"),
        ):
            with pytest.raises(MCPError) as refused:
                await client.get_prompt(name, bad)
            assert refused.value.code == types.INVALID_PARAMS
            assert refused.value.data["fields"][0]["field"] == field
        with pytest.raises(MCPError) as unknown:
            await client.get_prompt("no_such_prompt")
        assert unknown.value.code == types.INVALID_PARAMS


class Updates:
    """``notifications/resources/updated`` as a legacy client receives them."""

    def __init__(self) -> None:
        self.uris: list[str] = []
        self._arrived = anyio.Event()

    async def __call__(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.uris.append(message.params.uri)
            self._arrived.set()

    async def until(self, uri: str) -> None:
        with anyio.fail_after(20):
            while uri not in self.uris:
                await self._arrived.wait()
                self._arrived = anyio.Event()


@pytest.mark.filterwarnings(
    "ignore:resources/(un)?subscribe is removed:mcp.shared.exceptions.MCPDeprecationWarning"
)
async def test_legacy_subscriptions_send_updates_from_the_event_bus(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    """Over legacy SSE; a Streamable HTTP session is in ``test_a_session_sends_updates``."""
    owner, other = await sign_up(http), await sign_up(http)
    updates = Updates()
    async with mcp_client(
        live_server.url, owner.access_token, "sse-legacy", message_handler=updates
    ) as client:
        assert client.server_capabilities.resources is not None
        assert client.server_capabilities.resources.subscribe is True
        for uri in ("aiserve://instances", "aiserve://models", "aiserve://spending"):
            await client.subscribe_resource(uri)

        await rent_local(http, other)  # someone else's instance: its events are not this caller's
        spent = await client.call_tool("record_spending", {"amount": 1.5})
        assert spent.is_error is not True, spent.content
        await updates.until("aiserve://spending")
        assert updates.uris == ["aiserve://spending"]  # updates go out in order: none came before

        contract_id = await rent_local(http, owner)
        await updates.until("aiserve://instances")

        model_id = await ready_model(http, owner)
        await updates.until("aiserve://models")
        assert set(updates.uris) == {"aiserve://instances", "aiserve://spending", "aiserve://models"}

        await client.subscribe_resource(f"aiserve://models/{model_id}")
        await client.unsubscribe_resource("aiserve://models")
        updates.uris.clear()
        predicted = await client.call_tool(
            "predict", {"model_id": model_id, "inputs": {"input": [[1, 2, 3, 4]]}}
        )
        assert predicted.is_error is not True, predicted.content
        await updates.until(f"aiserve://models/{model_id}")
        assert "aiserve://models" not in updates.uris

        with pytest.raises(MCPError) as static:
            await client.subscribe_resource("aiserve://gpu/catalog")
        assert static.value.code == types.INVALID_PARAMS and "no updates" in static.value.message
        with pytest.raises(MCPError) as unknown:
            await client.subscribe_resource(f"aiserve://instances/{contract_id}x")
        assert unknown.value.code == LEGACY_NOT_FOUND


async def test_listen_streams_updates_on_the_stateless_endpoint(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    owner = await sign_up(http)
    async with mcp_client(live_server.url, owner.access_token, "streamable-modern") as client:
        wanted = [
            "aiserve://instances",
            "aiserve://gpu/catalog",
            "aiserve://instances/nope",
            "aiserve://spending",
        ]
        async with client.listen(resource_subscriptions=wanted) as subscription:
            assert subscription.honored.resource_subscriptions == [
                "aiserve://instances",
                "aiserve://spending",
            ]
            await rent_local(http, owner)
            with anyio.fail_after(20):
                event = await anext(subscription)
            assert event == ResourceUpdated("aiserve://instances")


@pytest.mark.filterwarnings(
    "ignore:resources/(un)?subscribe is removed:mcp.shared.exceptions.MCPDeprecationWarning"
)
async def test_subscribe_is_refused_where_nothing_can_be_pushed(settings: Settings) -> None:
    """With ``AISERVE_MCP_STATELESS`` a 2025-11-25 Streamable HTTP client has no session to push on."""
    async with serve(create_app(settings.model_copy(update={"mcp_stateless": True}))) as url:
        async with httpx.AsyncClient(base_url=url) as plain:
            owner = await sign_up(plain)
        async with mcp_client(url, owner.access_token, "streamable-legacy") as client:
            with pytest.raises(MCPError) as refused:
                await client.subscribe_resource("aiserve://instances")
    assert refused.value.code == types.INVALID_REQUEST and "subscriptions/listen" in refused.value.message


@pytest.mark.filterwarnings(
    "ignore:resources/(un)?subscribe is removed:mcp.shared.exceptions.MCPDeprecationWarning"
)
async def test_a_session_sends_updates(live_server: LiveServer, http: httpx.AsyncClient) -> None:
    """A 2025-11-25 Streamable HTTP client's session carries the updates (on its GET stream)."""
    owner = await sign_up(http)
    updates = Updates()
    async with mcp_client(
        live_server.url, owner.access_token, "streamable-legacy", message_handler=updates
    ) as client:
        await client.subscribe_resource("aiserve://spending")
        spent = await client.call_tool("record_spending", {"amount": 1.5})
        assert spent.is_error is not True, spent.content
        await updates.until("aiserve://spending")


@dataclass
class StalledMarket:
    """The app, with a vast.ai that holds every request until ``release`` is set."""

    server: LiveServer
    called: anyio.Event
    release: anyio.Event


@pytest.fixture
async def stalled_market(settings: Settings) -> AsyncIterator[StalledMarket]:
    called, release = anyio.Event(), anyio.Event()

    async def stall(request: Request) -> Response:
        called.set()
        await release.wait()
        return Response(status_code=503)

    vast = Starlette(routes=[Route("/{path:path}", stall, methods=["GET", "POST", "PUT", "DELETE"])])
    async with serve(vast) as vast_url:
        update = {"vastai_url": vast_url, "vastai_api_key": SecretStr("k"), "provider_timeout_s": 120}
        app = create_app(settings.model_copy(update=update))
        async with serve(app) as url:
            try:
                yield StalledMarket(LiveServer(url, app), called, release)
            finally:
                release.set()  # before the servers stop: they wait for the requests they are answering


async def eventually(condition: Callable[[], bool], seconds: float) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still false after {seconds} s")


def finished_calls(app: Starlette, tool: str) -> float:
    count = app.state.services.telemetry.registry.get_sample_value(
        "aiserve_tool_duration_seconds_count", {"tool": tool}
    )
    return float(count or 0)


@pytest.mark.parametrize("transport", ["sse-legacy", "streamable-modern", "streamable-legacy"])
async def test_cancelling_a_call_cancels_the_tool(
    transport: Transport, stalled_market: StalledMarket
) -> None:
    server = stalled_market.server
    async with httpx.AsyncClient(base_url=server.url) as plain:
        owner = await sign_up(plain)
    async with mcp_client(server.url, owner.access_token, transport) as client:
        async with anyio.create_task_group() as calls:
            calls.start_soon(
                client.call_tool, "reserve_gpus", {"count": 1, "filters": {"provider": "vastai"}}
            )
            with anyio.fail_after(10):
                await stalled_market.called.wait()
            assert finished_calls(server.app, "reserve_gpus") == 0  # it waits for vast.ai
            calls.cancel_scope.cancel()
        # vast.ai never answers: the call can only end because its task was cancelled
        await eventually(lambda: finished_calls(server.app, "reserve_gpus") == 1, 5)
        assert (await client.call_tool("whoami", {})).is_error is not True  # the connection lives on


async def test_a_cancelled_notification_cancels_a_plain_json_call(stalled_market: StalledMarket) -> None:
    """A 2025-11-25 client without streaming: the cancellation arrives on a POST of its own."""
    server = stalled_market.server
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        owner = await sign_up(http)
        headers = {**owner.headers, "MCP-Protocol-Version": "2025-11-25"}
        reserve = {"name": "reserve_gpus", "arguments": {"count": 1, "filters": {"provider": "vastai"}}}
        answers: list[httpx.Response] = []

        async def call() -> None:
            body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": reserve}
            answers.append(await http.post(MCP_PATH, json=body, headers=headers))

        async with anyio.create_task_group() as calls:
            calls.start_soon(call)
            with anyio.fail_after(10):
                await stalled_market.called.wait()
            other = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 8}}
            assert (await http.post(MCP_PATH, json=other, headers=headers)).status_code == 202
            assert not answers  # an id it is not answering: nothing cancelled
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}
            assert (await http.post(MCP_PATH, json=cancel, headers=headers)).status_code == 202
        assert answers[0].status_code == 204  # cancelled: no JSON-RPC answer is owed
        await eventually(lambda: finished_calls(server.app, "reserve_gpus") == 1, 5)


def counting_registry(size: int) -> ToolRegistry:
    registry = ToolRegistry()

    async def noop(ctx: ToolContext, args: Any) -> NoInput:
        return NoInput()

    for i in range(size):
        scope = "models:read" if i % 2 else None
        registry.add(Tool(f"t{i:03d}", "A tool.", NoInput, NoInput, noop, scope, Annotations(f"T{i}")))
    return registry


async def test_tool_lists_are_paginated_and_filtered_by_scope(app: Starlette) -> None:
    server = build_mcp_server(
        app.state.services, counting_registry(120), lambda ctx: None, lambda ctx: None, surface=Surface.MCP
    )
    async with Client(server, mode="legacy") as client:
        names: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = await client.list_tools(cursor=cursor)
            names += [t.name for t in page.tools]
            pages += 1
            cursor = page.next_cursor
            if cursor is None:
                break
        assert pages == 2 and names == [f"t{i:03d}" for i in range(0, 120, 2)]  # anonymous: public tools only
        with pytest.raises(MCPError) as bad:
            await client.list_tools(cursor="page-two")
        assert bad.value.code == types.INVALID_PARAMS


async def test_conformance_fixtures_are_absent_by_default(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    owner = await sign_up(http)
    async with mcp_client(live_server.url, owner.access_token, "streamable-legacy") as client:
        tools = {t.name for t in await all_tools(client)}
        assert not tools & set(mcp_conformance.TOOLS)
        assert not [r for r in (await client.list_resources()).resources if r.uri.startswith("test://")]
        templates = (await client.list_resource_templates()).resource_templates
        assert not [t for t in templates if t.uri_template.startswith("test://")]
        assert not [p for p in (await client.list_prompts()).prompts if p.name.startswith("test_")]
        assert client.server_capabilities.logging is None and client.server_capabilities.completions is None
        call = await client.call_tool("test_simple_text", {})
        assert call.is_error is True and json.loads(call.content[0].text)["code"] == "NOT_FOUND"  # type: ignore[union-attr]
        with pytest.raises(MCPError):
            await client.read_resource("test://static-text")
        with pytest.raises(MCPError):
            await client.get_prompt("test_simple_prompt")


@pytest.mark.parametrize("transport", ["streamable-modern", "streamable-legacy"])
async def test_conformance_fixtures_when_enabled(transport: Transport, settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"mcp_conformance_fixtures": True}))
    async with serve(app) as url:
        async with httpx.AsyncClient(base_url=url) as plain:
            owner = await sign_up(plain)
        reported: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            reported.append(progress)

        async with mcp_client(url, owner.access_token, transport) as client:
            tools = {t.name for t in await all_tools(client)}
            assert set(mcp_conformance.TOOLS) <= tools and "whoami" in tools
            text = await client.call_tool("test_simple_text", {})
            assert text.content == [
                types.TextContent(type="text", text="This is a simple text response for testing.")
            ]
            mixed = await client.call_tool("test_multiple_content_types", {})
            assert [c.type for c in mixed.content] == ["text", "image", "resource"]
            failed = await client.call_tool("test_error_handling", {})
            assert failed.is_error is True
            await client.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
            assert reported == [0, 50, 100]
            assert (await client.call_tool("whoami", {})).structured_content is not None

            uris = {r.uri for r in (await client.list_resources()).resources}
            assert {"test://static-text", "test://static-binary", "aiserve://instances"} <= uris
            templated = await client.read_resource("test://template/42/data")
            assert isinstance(templated.contents[0], types.TextResourceContents)
            assert json.loads(templated.contents[0].text)["id"] == "42"
            binary = await client.read_resource("test://static-binary")
            assert isinstance(binary.contents[0], types.BlobResourceContents)

            prompt = await client.get_prompt("test_prompt_with_arguments", {"arg1": "hello", "arg2": "world"})
            assert prompt.messages[0].content == types.TextContent(
                type="text", text="Prompt with arguments: arg1='hello', arg2='world'"
            )
            ref = types.PromptReference(type="ref/prompt", name="test_prompt_with_arguments")
            assert (await client.complete(ref, {"name": "arg1", "value": "x"})).completion.values == []
