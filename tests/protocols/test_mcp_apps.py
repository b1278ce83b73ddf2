"""MCP Apps views (``io.modelcontextprotocol/ui``) through the official SDK client against a served app, and
the views' script driven by a host page in headless Chromium."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from mcp import Client, types
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from mcp.shared.exceptions import MCPError
from playwright.async_api import BrowserContext, Page

from tests.conftest import LiveServer, api_key, sign_up
from tests.console.browser import screenshot
from tests.mcp_clients import TRANSPORTS, Transport, all_tools, mcp_client

VIEWS = {"search_gpu_offers": "ui://aiserve/offers", "get_spending": "ui://aiserve/spending"}
NO_OUTSIDE_ORIGIN: dict[str, list[str]] = {"connectDomains": [], "resourceDomains": [], "frameDomains": []}


@pytest.fixture
async def http(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
        yield client


async def read_view(client: Client, uri: str) -> types.TextResourceContents:
    [content] = (await client.read_resource(uri)).contents
    assert isinstance(content, types.TextResourceContents)
    assert (content.uri, content.mime_type) == (uri, APP_MIME_TYPE)
    assert content.meta == {"ui": {"csp": NO_OUTSIDE_ORIGIN, "prefersBorder": True}}
    return content


async def call_data(client: Client, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
    """A successful tool result, whose text is the JSON of its structured content."""
    result = await client.call_tool(name, arguments)
    assert not result.is_error, result.content
    [text] = result.content
    assert isinstance(text, types.TextContent)
    assert result.structured_content is not None
    assert json.loads(text.text) == result.structured_content
    return result


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_offers_and_spending_tools_point_at_their_views(
    transport: Transport, live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    owner = await sign_up(http)
    async with mcp_client(live_server.url, owner.access_token, transport) as client:
        if transport == "streamable-modern":  # the 2025-11-25 capabilities have no extensions field
            assert client.server_capabilities.extensions == {EXTENSION_ID: {}}
        tools = await all_tools(client)
        pointers = {t.name: t.meta for t in tools if t.meta and "ui" in t.meta}
        assert pointers == {name: {"ui": {"resourceUri": uri}} for name, uri in VIEWS.items()}
        listed = {r.uri: r for r in (await client.list_resources()).resources}
        assert "aiserve://spending" in listed and "aiserve://gpu/catalog" in listed
        for uri in VIEWS.values():
            assert listed[uri].mime_type == APP_MIME_TYPE and listed[uri].title and listed[uri].description
            assert listed[uri].meta == {"ui": {"csp": NO_OUTSIDE_ORIGIN, "prefersBorder": True}}
            html = (await read_view(client, uri)).text
            assert html.startswith("<!DOCTYPE html>") and "<table" not in html  # the script builds it
            assert "http://" not in html and "https://" not in html and " src=" not in html
            assert " href=" not in html  # the shared stylesheet and script are inlined
            for method in (
                "ui/initialize",
                "ui/notifications/initialized",
                "ui/notifications/tool-result",
                "ui/notifications/size-changed",
                "ui/resource-teardown",
            ):
                assert f'"{method}"' in html, (uri, method)
        offers = (await call_data(client, "search_gpu_offers", {"provider": "local"})).structured_content
        assert offers is not None and offers["count"] == len(offers["instances"]) > 0
        spending = (await call_data(client, "get_spending", {})).structured_content
        assert spending is not None and spending["windows"]


async def test_a_view_is_there_for_callers_of_its_tool(
    live_server: LiveServer, http: httpx.AsyncClient
) -> None:
    owner = await sign_up(http)
    spending_reader = await api_key(http, owner, scopes=["guardrails:read"])
    async with mcp_client(live_server.url, spending_reader) as client:
        listed = [r.uri for r in (await client.list_resources()).resources if r.uri.startswith("ui://")]
        assert listed == [VIEWS["get_spending"]]
        pointers = [t.name for t in await all_tools(client) if t.meta and "ui" in t.meta]
        assert pointers == ["get_spending"]
        await read_view(client, VIEWS["get_spending"])
        with pytest.raises(MCPError) as refused:
            await client.read_resource(VIEWS["search_gpu_offers"])
        assert refused.value.code == -32003 and "gpu:read" in refused.value.message
        with pytest.raises(MCPError) as unknown:
            await client.read_resource("ui://aiserve/nothing")
        assert unknown.value.code == types.INVALID_PARAMS


HOST_PAGE = """<!DOCTYPE html><html><body><iframe id="view" width="900" height="500"></iframe><script>
window.seen = [];
const frame = document.getElementById("view");
window.addEventListener("message", (event) => {
  const message = event.data;
  window.seen.push(message);
  const reply = (body) => frame.contentWindow.postMessage({ jsonrpc: "2.0", ...body }, "*");
  if (message.method === "ui/initialize") {
    reply({ id: message.id, result: {
      protocolVersion: message.params.protocolVersion,
      hostInfo: { name: "test-host", version: "1" },
      hostCapabilities: {},
      hostContext: { theme: "dark", locale: "en-US", displayMode: "inline" },
    } });
  } else if (message.method === "ui/notifications/initialized") {
    reply({ method: "ui/notifications/tool-input", params: { arguments: window.toolArguments } });
    reply({ method: "ui/notifications/tool-result", params: window.toolResult });
    reply({ id: 99, method: "ui/resource-teardown", params: { reason: "test" } });
  }
});
</script></body></html>"""


async def hosted(
    context: BrowserContext, html: str, arguments: dict[str, Any], result: dict[str, Any]
) -> Page:
    """A fresh page of HOST_PAGE rendering the view ``html``, which it hands ``arguments`` and ``result``."""
    page = await context.new_page()
    await page.set_content(HOST_PAGE)
    await page.evaluate(
        "([args, result, html]) => { window.toolArguments = args; window.toolResult = result;"
        " document.getElementById('view').srcdoc = html; }",
        [arguments, result, html],
    )
    return page


async def test_the_views_render_a_tool_result_a_host_hands_them(
    live_server: LiveServer, http: httpx.AsyncClient, browser_page: Page
) -> None:
    owner = await sign_up(http)
    shown: dict[str, tuple[dict[str, Any], types.CallToolResult, str]] = {}
    async with mcp_client(live_server.url, owner.access_token) as client:
        await call_data(client, "record_spending", {"amount": 3.5})
        for name, arguments in (("search_gpu_offers", {"provider": "local"}), ("get_spending", {})):
            result = await call_data(client, name, arguments)
            shown[name] = (arguments, result, (await read_view(client, VIEWS[name])).text)
    for name, (arguments, result, html) in shown.items():
        wire = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        page = await hosted(browser_page.context, html, arguments, wire)
        view = page.frame_locator("#view")
        data = result.structured_content
        assert data is not None
        expected = data["instances"] if name == "search_gpu_offers" else data["windows"]
        first = expected[0]["gpu_model"] if name == "search_gpu_offers" else expected[0]["window"]
        rows = view.locator("tbody tr")
        await rows.nth(len(expected) - 1).wait_for()
        assert await rows.count() == len(expected)
        assert await rows.first.locator("td").first.inner_text() == first
        assert await view.locator("#status").is_hidden()
        await page.wait_for_function(
            "window.seen.some((m) => m.method === 'ui/notifications/size-changed')"
            " && window.seen.some((m) => m.id === 99 && m.result)"
        )
        methods = await page.evaluate("window.seen.map((m) => m.method || 'response')")
        assert methods[:2] == ["ui/initialize", "ui/notifications/initialized"]
        await screenshot(page, f"mcp-app-{name}")
    refusal = {"content": [{"type": "text", "text": json.dumps({"error": "no such offer"})}], "isError": True}
    page = await hosted(browser_page.context, shown["search_gpu_offers"][2], {}, refusal)
    refused = page.frame_locator("#view").locator("#status.error")
    assert await refused.inner_text() == "no such offer"
