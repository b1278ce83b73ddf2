"""The one generic REST endpoint: bind path, query and body to a tool's input, call it, render the result."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from aiserve_mcp.core.errors import AiserveError
from aiserve_mcp.protocols.prelude import (
    error_response,
    read_body,
    read_json_object,
    services_of,
    tool_context,
)
from aiserve_mcp.rest_compat.binary_infer import binary_infer
from aiserve_mcp.rest_compat.routes import ROUTES, RestRoute
from aiserve_mcp.rest_compat.upload_links import link_upload
from aiserve_mcp.rest_compat.uploads import UPLOAD_PATH, model_upload
from aiserve_mcp.rest_compat.worker_bundle import bundle_routes
from aiserve_mcp.tools.billing import handle_payment_webhook
from aiserve_mcp.tools.registry import Surface, ToolRegistry
from aiserve_mcp.tools.runner import call_tool, parse_input
from aiserve_mcp.tools.upload_links import UPLOAD_LINK_PATH

Endpoint = Callable[[Request], Awaitable[Response]]
WEBHOOK_PATH = "/api/v1/billing/webhook"
FieldTypes = Mapping[str, frozenset[str]]


def _json_types(schema: Mapping[str, Any]) -> Iterator[str]:
    declared = schema.get("type", ())
    yield from [declared] if isinstance(declared, str) else declared
    for branch in schema.get("anyOf", ()):
        yield from _json_types(branch)


def field_types(model: type[BaseModel]) -> dict[str, frozenset[str]]:
    """The JSON types each input field takes, from the model's schema (its ``type`` or its ``anyOf``
    branches'), by field name."""
    properties = model.model_json_schema()["properties"]
    return {name: frozenset(_json_types(schema)) for name, schema in properties.items()}


def query_value(text: str, types: frozenset[str]) -> Any:
    """A query-string value read as the JSON value its text spells when the field takes that type (``5``
    for an integer, ``2.5`` for a number, ``true`` for a boolean), else the text itself: a query string
    carries the text of typed values, and the input models check types strictly."""
    if not types & {"integer", "number", "boolean"}:
        return text
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    if isinstance(value, bool):
        return value if "boolean" in types else text
    if isinstance(value, int | float):
        return value if types & {"integer", "number"} else text
    return text


async def bind_arguments(
    request: Request,
    fields: FieldTypes,
    limit: int,
    headers: tuple[tuple[str, str], ...] = (),
    body_required: bool = False,
) -> dict[str, Any]:
    """Merge the JSON body (POST/PUT/PATCH) or the query string (GET/DELETE) with the path parameters and
    the route's bound headers. Query parameters the tool does not take are ignored (cache busters and the
    like); the others are read as the type their field takes. Path parameters win, then headers."""
    if request.method in ("GET", "DELETE", "HEAD"):
        arguments: dict[str, Any] = {
            k: query_value(v, fields[k]) for k, v in request.query_params.items() if k in fields
        }
    else:
        arguments = await read_json_object(request, limit, body_required)
    arguments.update(request.path_params)
    arguments.update({field: request.headers[name] for name, field in headers if name in request.headers})
    return arguments


def tool_endpoint(route: RestRoute, registry: ToolRegistry) -> Endpoint:
    tool = registry.get(route.tool)
    fields = field_types(tool.input_model)
    needs_body = route.needs_body(tool.input_model)

    async def endpoint(request: Request) -> Response:
        if route.binary_tensors:
            return await binary_infer(request, tool)
        limit = services_of(request.scope).settings.max_request_body_bytes
        try:
            arguments = await bind_arguments(request, fields, limit, route.headers, needs_body)
            result = await call_tool(tool, arguments, tool_context(request.scope, Surface.REST))
        except AiserveError as exc:
            return error_response(exc)
        status = route.status_of(result) if route.status_of else route.status
        return Response(result.model_dump_json(), status_code=status, media_type="application/json")

    return endpoint


def stream_endpoint(route: RestRoute, registry: ToolRegistry) -> Endpoint:
    """A route that relays an upstream answer as is: its status, headers and body, streamed."""
    tool = registry.get(route.tool)
    fields = field_types(tool.input_model)
    needs_body = route.needs_body(tool.input_model)
    assert route.stream is not None
    open_stream = route.stream

    async def endpoint(request: Request) -> Response:
        limit = services_of(request.scope).settings.max_request_body_bytes
        stack = AsyncExitStack()
        try:
            arguments = await bind_arguments(request, fields, limit, body_required=needs_body)
            ctx = tool_context(request.scope, Surface.REST)
            tool.authorize(ctx.principal)
            reply = await stack.enter_async_context(open_stream(ctx, parse_input(tool, arguments)))
        except AiserveError as exc:
            await stack.aclose()
            return error_response(exc)
        except BaseException:
            await stack.aclose()
            raise

        async def body() -> AsyncIterator[bytes]:
            async with stack:
                async for chunk in reply.body:
                    yield chunk

        response = StreamingResponse(body(), status_code=reply.status_code)
        response.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
        return response

    return endpoint


async def payment_webhook(request: Request) -> Response:
    """``POST /api/v1/billing/webhook``: the payment gateway's signed event (no login; the signature is
    the credential)."""
    limit = services_of(request.scope).settings.max_request_body_bytes
    try:
        payload = await read_body(request, limit)
        ctx = tool_context(request.scope, Surface.WEBHOOK)
        out = await handle_payment_webhook(ctx, payload, request.headers.get("stripe-signature"))
    except AiserveError as exc:
        return error_response(exc)
    return Response(out.model_dump_json(), media_type="application/json")


def _by_method(endpoints: Mapping[str, Endpoint]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        return await endpoints[request.method](request)

    return endpoint


def rest_routes(registry: ToolRegistry) -> list[Route]:
    """Starlette routes for the whole table: one route per path, so that a 405 lists (in ``Allow``) every
    method the path takes. The fixed paths come first: ``/api/v1/models/upload`` would otherwise match
    ``/api/v1/models/{model_id}`` and answer a wrong method with that path's methods."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for r in ROUTES:
        endpoint = (stream_endpoint if r.stream else tool_endpoint)(r, registry)
        by_path.setdefault(r.path, {})[r.method] = endpoint
    return [
        Route(WEBHOOK_PATH, payment_webhook, methods=["POST"]),
        Route(UPLOAD_PATH, model_upload, methods=["POST"]),
        Route(UPLOAD_LINK_PATH, link_upload, methods=["PUT"]),
        *bundle_routes(),
        *(Route(path, _by_method(endpoints), methods=list(endpoints)) for path, endpoints in by_path.items()),
    ]
