"""Parts of a page that update live: each is a template under ``templates/fragments/`` filled by a view
that reads through the tools, rendered inside its page and alone at ``/console/fragments/<name>`` (which
``static/live.js`` fetches again when an event of the part's streams arrives on ``/ws``).

A part whose tool call fails shows that tool's message in its place; the rest of the page still renders.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from aiserve_mcp.console.web import render
from aiserve_mcp.core.errors import AiserveError
from aiserve_mcp.core.principal import Principal

View = Callable[[Request, Principal], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Section:
    """A live part: ``view`` builds the context of ``templates/fragments/<name>.html`` (which reads it as
    the variable ``<name>``); ``streams`` are the ``/ws`` streams whose events change it."""

    name: str
    streams: tuple[str, ...]
    view: View

    async def context(self, request: Request, principal: Principal) -> dict[str, Any]:
        """The view's context, or ``{"problem": <the tool's message>}`` when a tool refused."""
        try:
            return await self.view(request, principal)
        except AiserveError as exc:
            return {"problem": exc.message}

    async def render(self, request: Request, principal: Principal) -> HTMLResponse:
        context = {self.name: await self.context(request, principal), "user": principal}
        return await render(request, f"fragments/{self.name}.html", context)


async def sections_context(
    request: Request, principal: Principal, sections: tuple[Section, ...]
) -> dict[str, Any]:
    """The page context of ``sections``: each one's context under its name, and the sections themselves
    under ``sections`` (for the ``data-fragment`` and ``data-streams`` of their places on the page)."""
    contexts = {section.name: await section.context(request, principal) for section in sections}
    return {"sections": {section.name: section for section in sections}, **contexts}


def usd(amount: float | Decimal, places: int = 2) -> str:
    """``amount`` in US dollars rounded (half-even) to ``places`` (2 or more) decimals, of which trailing
    zeros past the cents are dropped: ``$1,234.50``; ``usd(0.5, 4)`` is ``$0.50``, ``usd(0.00125, 4)``
    ``$0.0012``."""
    exact = Decimal(str(amount)).quantize(Decimal(1).scaleb(-places))
    whole, _, cents = f"{abs(exact):,.{places}f}".partition(".")
    sign = "-" if exact < 0 else ""
    return f"{sign}${whole}.{cents.rstrip('0').ljust(2, '0')}"


def duration(seconds: float) -> str:
    """A span of time, coarsely: ``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``."""
    whole = max(int(seconds), 0)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min" if minutes else f"{whole} s"
