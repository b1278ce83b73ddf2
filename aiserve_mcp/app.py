"""``create_app(settings)``: the one place where every layer meets."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aiserve_mcp.bootstrap import Services
from aiserve_mcp.console.consent import CONSENT_PATH
from aiserve_mcp.console.routes import console_routes
from aiserve_mcp.console.web import EXCEPTION_HANDLERS as CONSOLE_EXCEPTION_HANDLERS
from aiserve_mcp.core.errors import NotFound, error_body
from aiserve_mcp.core.events import publish_forever
from aiserve_mcp.core.processes import ProcessGroup
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.a2a.surface import A2aSurface
from aiserve_mcp.protocols.a2a.task_store import DatabaseA2aTaskStore
from aiserve_mcp.protocols.admission import AdmissionMiddleware, ErrorBoundary, TelemetryMiddleware
from aiserve_mcp.protocols.agent_door.door import AgentDoor
from aiserve_mcp.protocols.mcp.affinity import SessionAffinity, Siblings
from aiserve_mcp.protocols.mcp.http import (
    MCP_PATH,
    SSE_MESSAGES_PATH,
    McpHttpTransports,
    request_address_resolver,
    request_principal,
)
from aiserve_mcp.protocols.mcp.server import build_mcp_server
from aiserve_mcp.protocols.oauth.routes import BearerChallenge, oauth_routes
from aiserve_mcp.protocols.oauth.urls import OAuthUrls
from aiserve_mcp.protocols.prelude import services_of
from aiserve_mcp.protocols.websocket import websocket_routes
from aiserve_mcp.rest_compat.endpoint import rest_routes
from aiserve_mcp.rest_compat.fast_predict import PredictFastPath
from aiserve_mcp.rest_compat.openapi import openapi_document
from aiserve_mcp.rest_compat.upload_links import HIDE_LINK_TOKENS
from aiserve_mcp.tools import REGISTRY
from aiserve_mcp.tools.registry import Surface

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def metrics(request: Request) -> Response:
    return Response(services_of(request.scope).telemetry.exposition(), media_type=PROMETHEUS_CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(REGISTRY))


async def not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        error_body(NotFound(f"no route for {request.method} {request.url.path}")), status_code=404
    )


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    body = {"error": f"{request.method} is not allowed on {request.url.path}", "code": "METHOD_NOT_ALLOWED"}
    return JSONResponse(body, status_code=405, headers=getattr(exc, "headers", None))


def create_app(settings: Settings | None = None, group: ProcessGroup | None = None) -> Starlette:
    """The server; ``group`` when it is one of several processes on one port (``aiserve serve --workers``)."""
    settings = settings or Settings()
    logging.getLogger("uvicorn.access").addFilter(HIDE_LINK_TOKENS)  # once: the filter is one object
    services = Services.create(settings)
    mcp_server = build_mcp_server(
        services, REGISTRY, request_principal, request_address_resolver(settings), surface=Surface.MCP
    )
    mcp_http = McpHttpTransports(mcp_server, settings, group)
    siblings = Siblings(group) if group is not None else None
    a2a = A2aSurface(services, REGISTRY, DatabaseA2aTaskStore(services.db))
    oauth_urls = OAuthUrls.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await services.migrate()
        await services.market.end_leftover_local()  # workers never outlive the server that started them
        try:
            async with mcp_http.running(), anyio.create_task_group() as background:
                background.start_soon(services.market.expire_forever, settings.expiry_check_interval_s)
                background.start_soon(services.model_host.follow_readiness)
                background.start_soon(
                    publish_forever,
                    services.events,
                    services.metrics_snapshot,
                    settings.events_metrics_interval_s,
                )
                yield
                background.cancel_scope.cancel()
        finally:
            await a2a.aclose()
            if siblings is not None:
                await siblings.aclose()
            await services.close()

    routes: list[BaseRoute] = [
        *mcp_http.routes(),
        *a2a.routes(),
        AgentDoor(REGISTRY).route(),
        *rest_routes(REGISTRY),
        *websocket_routes(),
        *console_routes(),
        *oauth_routes(services.oauth, oauth_urls, CONSENT_PATH),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    relay = (
        []
        if siblings is None
        else [
            Middleware(
                SessionAffinity,
                siblings=siblings,
                mcp_path=MCP_PATH,
                messages_base=SSE_MESSAGES_PATH,
                max_body=settings.max_request_body_bytes,
            )
        ]
    )
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(ErrorBoundary),
            *relay,
            Middleware(PredictFastPath, registry=REGISTRY),
            Middleware(TelemetryMiddleware),
            Middleware(BearerChallenge, urls=oauth_urls),
            Middleware(AdmissionMiddleware),
        ],
        exception_handlers={404: not_found, 405: method_not_allowed, **CONSOLE_EXCEPTION_HANDLERS},
        lifespan=lifespan,
    )
    app.state.services = services
    return app
