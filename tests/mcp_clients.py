"""The official MCP client, connected the ways the tests need: one helper for every test module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx2
from mcp import Client, types
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from aiserve_mcp.protocols.mcp.http import MCP_PATH, SSE_PATH

Transport = Literal["streamable-modern", "streamable-legacy", "sse-legacy"]
TRANSPORTS: tuple[Transport, ...] = ("streamable-modern", "streamable-legacy", "sse-legacy")
"""Streamable HTTP in the stateless 2026-07-28 era, Streamable HTTP with the 2025-11-25 handshake, and
the legacy HTTP+SSE transport."""
ResponseHook = Callable[[httpx2.Response], Awaitable[None]]


@asynccontextmanager
async def mcp_client(
    url: str,
    credential: str | None,
    transport: Transport = "streamable-modern",
    *,
    path: str = MCP_PATH,
    headers: Mapping[str, str] | None = None,
    on_response: ResponseHook | None = None,
    **options: Any,
) -> AsyncIterator[Client]:
    """A client of the server at ``url`` (Streamable HTTP at ``path``, or SSE at ``SSE_PATH``), sending
    ``Authorization: Bearer <credential>`` (none when ``None``) or the ``headers`` given instead, and
    passing every HTTP response to ``on_response``; ``options`` go to ``Client``."""
    sent = dict(headers) if headers is not None else {}
    if credential is not None:
        sent["Authorization"] = f"Bearer {credential}"
    hooks = {"response": [on_response]} if on_response is not None else {}

    def http(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(headers=headers, timeout=timeout or 30, auth=auth, event_hooks=hooks)

    if transport == "sse-legacy":
        sse = sse_client(url + SSE_PATH, headers=sent, httpx_client_factory=http)
        async with Client(sse, mode="legacy", **options) as client:
            yield client
        return
    mode = "auto" if transport == "streamable-modern" else "legacy"
    async with (
        http(sent) as session,
        Client(streamable_http_client(url + path, http_client=session), mode=mode, **options) as client,
    ):
        yield client


async def all_tools(client: Client) -> list[types.Tool]:
    """Every tool the server lists to ``client``, following ``nextCursor`` through the pages."""
    tools: list[types.Tool] = []
    cursor: str | None = None
    while True:
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if cursor is None:
            return tools
