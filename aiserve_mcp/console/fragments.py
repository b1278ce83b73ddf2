"""``GET /console/fragments/<name>``: one live part of a page, rendered alone for ``static/live.js``."""

from __future__ import annotations

from typing import Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiserve_mcp.console import approvals, gpus, overview
from aiserve_mcp.console.web import CONSOLE, person

SECTIONS: Final = {
    section.name: section for section in (*overview.SECTIONS, *gpus.SECTIONS, *approvals.SECTIONS)
}


async def fragment(request: Request) -> Response:
    principal = await person(request)
    section = SECTIONS.get(request.path_params["name"])
    if section is None:
        raise HTTPException(404)
    return await section.render(request, principal)


routes = [Route(f"{CONSOLE}/fragments/{{name}}", fragment, methods=["GET"])]
