"""Every console route: each page module's ``routes``, and the static files."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from aiserve_mcp.console import (
    approvals,
    connections,
    consent,
    credits,
    fragments,
    gpus,
    keys,
    models,
    overview,
    sandbox_checkout,
    sign_in,
)
from aiserve_mcp.console.web import CONSOLE


def console_routes() -> list[BaseRoute]:
    return [
        *sign_in.routes,
        *overview.routes,
        *gpus.routes,
        *fragments.routes,
        *keys.routes,
        *models.routes,
        *credits.routes,
        *sandbox_checkout.routes,
        *consent.routes,
        *connections.routes,
        *approvals.routes,
        Mount(f"{CONSOLE}/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
    ]
