"""MCP resources: the caller's GPU instances, models and spending, and the GPU catalog, as JSON documents.

Each resource is the answer of one read tool, run through ``call_tool`` as the caller: the same scopes,
ownership checks, validation and telemetry as a ``tools/call`` of that tool, and the same JSON as its REST
route. A resource whose tool the caller's scopes do not allow is not listed. An unknown URI, or an item
that is not the caller's, is the spec's resource-not-found error.

Instances, models and spending (and their items) can be watched: the server sends
``notifications/resources/updated`` for a watched URI when the event bus delivers an event of its stream
for the caller. Protocol 2025-11-25 watches with ``resources/subscribe``, which needs a connection the
server can push on (a Streamable HTTP session, legacy SSE, stdio); 2026-07-28 watches with
``subscriptions/listen``, whose response stream carries the updates (stateless Streamable HTTP, stdio).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
from mcp import types
from mcp.server import ServerRequestContext
from mcp.server.connection import Connection
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from aiserve_mcp.core.errors import (
    AiserveError,
    AuthRequired,
    NotFound,
    ValidationFailed,
    error_body,
    kind_of,
)
from aiserve_mcp.core.events import Event, EventBus, Subscription
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.tools.registry import ToolRegistry

RESOURCE_NOT_FOUND_2025: Final = -32002  # the code through protocol 2025-11-25; -32602 from 2026-07-28
JSON: Final = "application/json"
READY_TIMEOUT_S: Final = 5.0  # longest a subscription waits for the event bus (Redis) to listen
_CONNECTION_KEY: Final = "aiserve.resource_subscriptions"

ToolRunner = Callable[[ServerRequestContext[object], str, Mapping[str, Any]], Awaitable[BaseModel]]
"""Runs a registry tool (by name, with raw arguments) as the caller of a request; raises ``AiserveError``."""


@dataclass(frozen=True)
class Document:
    """A resource (``uri``) or resource template (``uri`` ending in one ``{parameter}``) and the read tool
    whose answer is its contents; ``stream`` is the event stream whose events change it."""

    uri: str
    name: str
    title: str
    description: str
    tool: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    parameter: str | None = None
    stream: str | None = None

    @property
    def prefix(self) -> str:
        return self.uri.removesuffix(f"{{{self.parameter}}}")

    def arguments_for(self, uri: str) -> dict[str, Any] | None:
        """The tool arguments that read ``uri``, or None when ``uri`` is not this document."""
        if self.parameter is None:
            return dict(self.arguments) if uri == self.uri else None
        value = uri.removeprefix(self.prefix)
        if not uri.startswith(self.prefix) or not value or "/" in value:
            return None
        return {**self.arguments, self.parameter: value}

    def uri_of(self, event: Event) -> str | None:
        """The URI of this document that ``event`` changes, if any."""
        if event.stream != self.stream:
            return None
        if self.parameter is None:
            return self.uri
        value = event.data.get(self.parameter)
        return None if value is None else f"{self.prefix}{value}"


DOCUMENTS: Final = (
    Document(
        "aiserve://instances",
        "instances",
        "My active GPU instances",
        "Your GPU instances that are provisioning or running, newest first, each refreshed from its "
        "provider: contract_id, provider, status, gpu_model, num_gpus, vram_gb, price_per_hour (USD, whole "
        "instance), billing, endpoint, expires_at and estimated_cost. The answer of list_gpu_contracts with "
        "active=true. Subscribable: updated when one of your instances is rented, changes status or "
        "endpoint, is renewed or destroyed.",
        tool="list_gpu_contracts",
        arguments={"active": True},
        stream="instances",
    ),
    Document(
        "aiserve://instances/{contract_id}",
        "instance",
        "One GPU instance",
        "One of your GPU instances by contract_id (destroyed and failed ones included), refreshed from its "
        "provider: the answer of get_gpu_contract. Subscribable: updated when that instance changes status, "
        "endpoint or expiry. Another user's or an unknown contract_id is resource-not-found.",
        tool="get_gpu_contract",
        parameter="contract_id",
        stream="instances",
    ),
    Document(
        "aiserve://models",
        "models",
        "My models",
        "Your uploaded models, newest first: id, name, format, status (loading, ready, failed, or stored: "
        "kept but not servable here) and created_at. The answer of list_models. Subscribable: updated when "
        "one of your models is uploaded, changes status or is deleted.",
        tool="list_models",
        stream="models",
    ),
    Document(
        "aiserve://models/{model_id}",
        "model",
        "One model",
        "One of your models by model_id: status with status_reason, input/output signature, serving "
        "settings (replicas, batching) and measured request totals; the answer of get_model. Subscribable: "
        "updated when that model changes. Another user's or an unknown model_id is resource-not-found.",
        tool="get_model",
        parameter="model_id",
        stream="models",
    ),
    Document(
        "aiserve://spending",
        "spending",
        "Spending against limits",
        "What you have spent (USD) in each rolling spending window (hourly, daily, weekly, monthly and your "
        "own) against its limit, headed by the window closest to its limit (window_name, percentage_used), "
        "with violations. The answer of get_spending. Subscribable: updated when a spend is recorded, "
        "refused or taken back.",
        tool="get_spending",
        stream="spending",
    ),
    Document(
        "aiserve://gpu/catalog",
        "gpu-catalog",
        "GPU catalog",
        "Every GPU model this platform knows, with real specifications (vendor, VRAM, dense FP16 TFLOPS, "
        "memory bandwidth, tier, architecture, the source of each figure) and the mean live price per "
        "GPU-hour when a marketplace is configured. The answer of list_available_gpus without filters (call "
        "the tool to filter by vendor, tier or VRAM). Not subscribable.",
        tool="list_available_gpus",
    ),
)
EVENT_STREAMS: Final = frozenset(d.stream for d in DOCUMENTS if d.stream is not None)


def resource_not_found(ctx: ServerRequestContext[object], uri: str) -> MCPError:
    """The spec's resource-not-found error for the request's protocol era (SEP-2164 moved it to -32602)."""
    modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
    code = types.INVALID_PARAMS if modern else RESOURCE_NOT_FOUND_2025
    return MCPError(code=code, message=f"Resource not found: {uri}", data={"uri": uri})


def as_mcp_error(error: AiserveError) -> MCPError:
    """A refusal as a JSON-RPC error: the error table's code, the message, and the error body as data."""
    return MCPError(kind_of(error).jsonrpc_code, error.message, error_body(error))


def updated_uris(event: Event) -> set[str]:
    """The resource URIs that ``event`` changes."""
    return {uri for d in DOCUMENTS if (uri := d.uri_of(event)) is not None}


def _connection(ctx: ServerRequestContext[object]) -> Connection:
    """The connection a request came on: its ``state`` and ``exit_stack`` are the SDK's place for
    per-connection data and teardown. SDK 2.3 hands low-level handlers only the per-request session, which
    holds it."""
    return ctx.session._connection


class _Watcher:
    """The URIs one user subscribed to on one connection, and the task that sends their updates."""

    def __init__(self, events: EventBus, subscription: Subscription, connection: Connection) -> None:
        self.uris: set[str] = set()
        self._events = events
        self._subscription = subscription
        self._task = asyncio.create_task(self._forward(connection))

    async def _forward(self, connection: Connection) -> None:
        while True:
            event = await self._subscription.next()
            for uri in sorted(updated_uris(event) & self.uris):
                await connection.send_resource_updated(uri)

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._events.unsubscribe(self._subscription)


class McpResources:
    """The resource handlers of the MCP server, reading through ``run_tool`` as each request's caller."""

    def __init__(
        self,
        registry: ToolRegistry,
        events: EventBus,
        principal_of: Callable[[ServerRequestContext[object]], Principal | None],
        run_tool: ToolRunner,
    ) -> None:
        self._registry = registry
        self._events = events
        self._principal_of = principal_of
        self._run_tool = run_tool

    def _readable(self, ctx: ServerRequestContext[object], document: Document) -> bool:
        return self._registry.get(document.tool).visible_to(self._principal_of(ctx))

    async def list_resources(
        self, ctx: ServerRequestContext[object], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri=d.uri, name=d.name, title=d.title, description=d.description, mime_type=JSON
                )
                for d in DOCUMENTS
                if d.parameter is None and self._readable(ctx, d)
            ]
        )

    async def list_templates(
        self, ctx: ServerRequestContext[object], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    uri_template=d.uri, name=d.name, title=d.title, description=d.description, mime_type=JSON
                )
                for d in DOCUMENTS
                if d.parameter is not None and self._readable(ctx, d)
            ]
        )

    async def _read(self, ctx: ServerRequestContext[object], uri: str) -> tuple[Document, BaseModel]:
        """The document ``uri`` names and its tool's answer; ``MCPError`` when it cannot be read."""
        for document in DOCUMENTS:
            arguments = document.arguments_for(uri)
            if arguments is None:
                continue
            try:
                return document, await self._run_tool(ctx, document.tool, arguments)
            except (NotFound, ValidationFailed):
                raise resource_not_found(ctx, uri) from None
            except AiserveError as exc:
                raise as_mcp_error(exc) from None
        raise resource_not_found(ctx, uri)

    async def read(
        self, ctx: ServerRequestContext[object], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        _, answer = await self._read(ctx, params.uri)
        text = json.dumps(answer.model_dump(mode="json"))
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=params.uri, mime_type=JSON, text=text)]
        )

    def _caller(self, ctx: ServerRequestContext[object]) -> Principal:
        principal = self._principal_of(ctx)
        if principal is None:
            raise as_mcp_error(AuthRequired("resource subscriptions need an authenticated caller"))
        return principal

    async def _check_watchable(self, ctx: ServerRequestContext[object], uri: str) -> None:
        """Raise ``MCPError`` unless ``uri`` is a resource the caller may read that has updates."""
        document, _ = await self._read(ctx, uri)
        if document.stream is None:
            raise MCPError(types.INVALID_PARAMS, f"{uri} has no updates to subscribe to", {"uri": uri})

    async def subscribe(
        self, ctx: ServerRequestContext[object], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        connection = _connection(ctx)
        if not connection.has_standalone_channel:
            raise MCPError(
                types.INVALID_REQUEST,
                "resources/subscribe needs a connection the server can send notifications on: a Streamable "
                "HTTP session (initialize first), legacy SSE (/api/v1/mcp/sse) or stdio; this stateless "
                "Streamable HTTP request has none. On protocol "
                "2026-07-28 use subscriptions/listen.",
            )
        principal = self._caller(ctx)
        await self._check_watchable(ctx, params.uri)
        key = f"{_CONNECTION_KEY}:{principal.user_id}"
        watcher = connection.state.get(key)
        if not isinstance(watcher, _Watcher):
            subscription = self._events.subscribe(principal.user_id, EVENT_STREAMS)
            watcher = _Watcher(self._events, subscription, connection)
            connection.state[key] = watcher
            connection.exit_stack.push_async_callback(watcher.aclose)
            with anyio.move_on_after(READY_TIMEOUT_S):
                await self._events.ready()
        watcher.uris.add(params.uri)
        return types.EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[object], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        principal = self._principal_of(ctx)
        if principal is not None:
            watcher = _connection(ctx).state.get(f"{_CONNECTION_KEY}:{principal.user_id}")
            if isinstance(watcher, _Watcher):
                watcher.uris.discard(params.uri)
        return types.EmptyResult()

    async def listen(
        self, ctx: ServerRequestContext[object], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """One ``subscriptions/listen`` stream: acknowledges the resource subscriptions it honours (URIs the
        caller may read that have updates; list-changed notifications are never sent), then sends their
        updates on the request's stream until the client closes it."""
        if ctx.request_id is None:
            raise MCPError(types.INVALID_REQUEST, "subscriptions/listen requires a request id")
        principal = self._caller(ctx)
        honored: list[str] = []
        for uri in dict.fromkeys(params.notifications.resource_subscriptions or ()):
            try:
                await self._check_watchable(ctx, uri)
            except MCPError:
                continue
            honored.append(uri)
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: ctx.request_id}
        subscription = self._events.subscribe(principal.user_id, EVENT_STREAMS)
        try:
            with anyio.move_on_after(READY_TIMEOUT_S):
                await self._events.ready()
            await ctx.session.send_notification(
                types.SubscriptionsAcknowledgedNotification(
                    params=types.SubscriptionsAcknowledgedNotificationParams(
                        notifications=types.SubscriptionFilter(resource_subscriptions=honored or None),
                        _meta=meta,
                    )
                ),
                related_request_id=ctx.request_id,
            )
            while True:
                event = await subscription.next()
                for uri in sorted(updated_uris(event).intersection(honored)):
                    await ctx.session.send_notification(
                        types.ResourceUpdatedNotification(
                            params=types.ResourceUpdatedNotificationParams(uri=uri, _meta=meta)
                        ),
                        related_request_id=ctx.request_id,
                    )
        finally:
            self._events.unsubscribe(subscription)
