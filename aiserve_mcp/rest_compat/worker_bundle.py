"""``GET /api/v1/worker/bundle``: the wheel a rented machine installs the worker from, and
``GET /api/v1/worker/bundle.sha256``: its SHA-256 in ``sha256sum`` form.

Both are public (the wheel is the platform's own code and holds no secrets) and, like every ``/api/v1``
route, rate limited by HTTP admission. A machine does not trust the download by where it came from: its
start-up script carries the hash fixed at rent time and refuses any other file.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from aiserve_mcp.core.errors import AiserveError
from aiserve_mcp.protocols.prelude import error_response, tool_context
from aiserve_mcp.tools.registry import Surface
from aiserve_mcp.tools.system import worker_bundle_file
from aiserve_mcp.worker.bundle import BUNDLE_PATH, BundleInfo

BUNDLE_SHA256_PATH = BUNDLE_PATH + ".sha256"
WHEEL_TYPE = "application/octet-stream"


async def _bundle(request: Request) -> BundleInfo:
    return await worker_bundle_file(tool_context(request.scope, Surface.REST))


def _digest_headers(bundle: BundleInfo) -> dict[str, str]:
    digest = base64.b64encode(bytes.fromhex(bundle.sha256)).decode()
    return {"ETag": f'"{bundle.sha256}"', "Repr-Digest": f"sha-256=:{digest}:", "Cache-Control": "no-cache"}


async def bundle_download(request: Request) -> Response:
    try:
        bundle = await _bundle(request)
    except AiserveError as exc:
        return error_response(exc)
    return FileResponse(
        bundle.path, media_type=WHEEL_TYPE, filename=bundle.filename, headers=_digest_headers(bundle)
    )


async def bundle_sha256(request: Request) -> Response:
    try:
        bundle = await _bundle(request)
    except AiserveError as exc:
        return error_response(exc)
    return PlainTextResponse(f"{bundle.sha256}  {bundle.filename}\n", headers=_digest_headers(bundle))


def bundle_routes() -> list[Route]:
    return [
        Route(BUNDLE_PATH, bundle_download, methods=["GET"]),
        Route(BUNDLE_SHA256_PATH, bundle_sha256, methods=["GET"]),
    ]


def bundle_openapi(error: Callable[[int], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The OpenAPI path items of both routes; ``error(status)`` is the document's error response."""
    errors = {str(status): error(status) for status in (429, 500, 503)}
    headers = {
        "ETag": {"description": "The SHA-256 of the wheel (hex), quoted.", "schema": {"type": "string"}},
        "Repr-Digest": {"description": "sha-256=:<base64>: (RFC 9530).", "schema": {"type": "string"}},
    }
    return {
        BUNDLE_PATH: {
            "get": {
                "operationId": "download_worker_bundle",
                "summary": "Download the worker bundle",
                "description": "The wheel (aiserve-<version>-py3-none-any.whl) of this server's own "
                "installation, which rented machines install to run `aiserve worker`. Public.",
                "responses": {
                    "200": {
                        "description": "The wheel",
                        "headers": headers,
                        "content": {WHEEL_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **errors,
                },
            }
        },
        BUNDLE_SHA256_PATH: {
            "get": {
                "operationId": "worker_bundle_sha256",
                "summary": "The worker bundle's SHA-256",
                "description": "`<sha256 hex>  <wheel file name>`, as sha256sum prints it. Public.",
                "responses": {
                    "200": {
                        "description": "The hash line",
                        "headers": headers,
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **errors,
                },
            }
        },
    }
