"""``POST /v2/models/{model_name}/infer`` with the binary tensor data extension of the Open Inference
Protocol (what Triton, KServe and MLServer clients send by default). A request carrying
``Inference-Header-Content-Length`` is read up to ``AISERVE_MAX_BINARY_BODY_BYTES`` (not the JSON limit)
and its binary inputs are decoded into arrays for the same ``v2_infer`` tool; a plain JSON request is read
as before. Either may ask for outputs in binary, which are written after the answer's JSON header."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from aiserve_mcp.core.errors import AiserveError
from aiserve_mcp.protocols.prelude import (
    error_response,
    read_body,
    read_json_object,
    services_of,
    tool_context,
)
from aiserve_mcp.runtime.binary_tensors import attach_inputs, binary_outputs, encode_response, split_body
from aiserve_mcp.tools.registry import Surface, Tool
from aiserve_mcp.tools.runner import call_tool

HEADER_LENGTH = "Inference-Header-Content-Length"


async def binary_infer(request: Request, tool: Tool) -> Response:
    """Run ``tool`` (``v2_infer``) on a request with or without binary inputs (a JSON body without
    ``Inference-Header-Content-Length`` is read under ``AISERVE_MAX_REQUEST_BODY_BYTES``); the answer is
    binary (``application/octet-stream`` with ``Inference-Header-Content-Length``) when an output is asked
    in binary, else JSON."""
    settings = services_of(request.scope).settings
    header_length = request.headers.get(HEADER_LENGTH)
    try:
        if header_length is None:
            header, raw = await read_json_object(request, settings.max_request_body_bytes), memoryview(b"")
        else:
            body = await read_body(request, settings.max_binary_body_bytes)
            header, raw = split_body(body, header_length)
        arguments = attach_inputs(header, raw)
        binary = binary_outputs(arguments)
        arguments.update(request.path_params)
        result = await call_tool(tool, arguments, tool_context(request.scope, Surface.REST))
    except AiserveError as exc:
        return error_response(exc)
    content, json_length = encode_response(result.model_dump(), binary)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)})
