"""``POST /api/v1/models/{model_id}/predict`` without the framework's per-request layers.

Predictions are the platform's hottest route, and at a few microseconds of model time the cost of a
request is the stack around it. This ASGI layer answers that one route directly, doing exactly what the
generic path does in fewer steps: the same telemetry (:func:`measured`), the same HTTP admission
(authentication and the rate limit, :func:`admission`; its ``X-RateLimit-*`` headers are written with
the answer's own), the same tool run through :func:`call_tool` (authorization, input model, metrics), the
same error bodies; JSON is parsed and written with orjson, and output arrays are written straight from
numpy. Every other request passes through untouched.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from aiserve_mcp.core.errors import AiserveError, error_body, error_headers, kind_of
from aiserve_mcp.protocols.admission import admission, measured
from aiserve_mcp.protocols.prelude import read_json_object, services_of, tool_context
from aiserve_mcp.rest_compat.routes import ROUTES
from aiserve_mcp.runtime.tensors import to_python
from aiserve_mcp.tools.registry import Surface, ToolRegistry
from aiserve_mcp.tools.runner import call_tool

TOOL = "predict"
ROUTE = next(r for r in ROUTES if r.tool == TOOL and r.method == "POST")
PATH = re.compile("^" + re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", ROUTE.path) + "$")
JSON = (b"content-type", b"application/json")


def _default(value: Any) -> Any:
    """What orjson cannot write itself (non-contiguous arrays, numpy scalars, runtime sequences)."""
    converted = to_python(value)
    if converted is value:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return converted


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


class PredictFastPath:
    def __init__(self, app: ASGIApp, registry: ToolRegistry) -> None:
        self.app = app
        self._tool = registry.get(TOOL)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or (match := PATH.match(scope["path"])) is None
        ):
            await self.app(scope, receive, send)
            return
        with measured(scope, send, ROUTE.path) as measured_send:
            budget = await admission(scope, receive, measured_send)
            if budget is None:
                return
            headers = [JSON]
            try:
                limit = services_of(scope).settings.max_request_body_bytes
                arguments = await read_json_object(Request(scope, receive), limit)
                arguments.update({k: unquote(v) for k, v in match.groupdict().items()})
                result = await call_tool(self._tool, arguments, tool_context(scope, Surface.REST))
                body = _dumps(dict(result))  # shallow: the output model's fields are plain JSON or arrays
                status = ROUTE.status
            except AiserveError as exc:
                body = orjson.dumps(error_body(exc))
                status = kind_of(exc).http_status
                headers += [(k.encode(), v.encode()) for k, v in error_headers(exc).items()]
            headers.append((b"content-length", str(len(body)).encode()))
            headers += [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in budget.headers().items()
            ]
            await measured_send({"type": "http.response.start", "status": status, "headers": headers})
            await measured_send({"type": "http.response.body", "body": body})
