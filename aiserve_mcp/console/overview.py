"""``GET /console``: the overview of an account: credits, spending in each window against its limit, the
instances running with what they cost so far, and the models with their status. Each part reads through
a tool (``list_transactions``, ``get_spending``, ``list_gpu_contracts``, ``list_models``) and updates live
(see ``sections.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiserve_mcp.console import gpus
from aiserve_mcp.console.sections import Section, duration, sections_context, usd
from aiserve_mcp.console.web import CONSOLE, act, person, render
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.tools.billing import TransactionsOutput
from aiserve_mcp.tools.guardrails import SpendingOutput
from aiserve_mcp.tools.models import ModelList


@dataclass(frozen=True)
class WindowMeter:
    """One spending window: ``percent`` of its limit used (100 when the limit is zero: nothing may be
    spent), and when the oldest spend in it stops counting."""

    name: str
    scope: str
    spent: str
    limit: str
    percent: float
    frees_in: str | None

    @classmethod
    def of(cls, window: dict[str, Any]) -> WindowMeter:
        spent, limit = float(window["spent"]), float(window["limit"])
        percent = min(spent / limit * 100, 100.0) if limit > 0 else 100.0
        resets = window.get("resets_in_s")
        return cls(
            name=str(window["window"]),
            scope=str(window["scope"]),
            spent=usd(spent),
            limit=usd(limit),
            percent=round(percent, 1),
            frees_in=duration(resets) if spent > 0 and resets else None,
        )


async def balance_view(request: Request, principal: Principal) -> dict[str, Any]:
    ledger = await act(request, principal, "list_transactions", {"limit": 1})
    spending = await act(request, principal, "get_spending", {})
    assert isinstance(ledger, TransactionsOutput) and isinstance(spending, SpendingOutput)
    return {
        "credits": usd(ledger.credits),
        "held": usd(ledger.held),
        "windows": [WindowMeter.of(w) for w in spending.windows],
    }


async def models_view(request: Request, principal: Principal) -> dict[str, Any]:
    listed = await act(request, principal, "list_models", {})
    assert isinstance(listed, ModelList)
    return {"models": listed.models}


BALANCE: Final = Section("balance", ("spending", "instances"), balance_view)
MODELS: Final = Section("models", ("models",), models_view)
SECTIONS: Final = (BALANCE, gpus.INSTANCES, MODELS)


async def overview_page(request: Request) -> Response:
    principal = await person(request)
    return await render(request, "overview.html", await sections_context(request, principal, SECTIONS))


routes = [Route(CONSOLE, overview_page, methods=["GET"])]
