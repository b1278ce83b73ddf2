"""``/console/gpus``: search GPU offers with filters, rent one, and destroy the instances you rented; all
through the same tools as the API (``search_gpu_offers``, ``rent_gpu_instance``, ``destroy_gpu_instance``,
``list_gpu_contracts``, ``get_gpu_contract``).

After a rent or a destroy the browser is sent back (303) to the page with ``?rented=`` or ``?destroyed=``
and a contract id, which the page reads back through ``get_gpu_contract`` to say what happened: a notice
shows the contract as it is, never text taken from the address. A refused action re-renders the page with
the tool's message in the alert box, answered with the tool's HTTP status (402 for a spending limit or no
credits, 503 for a provider that is not configured, 404 for an instance that is not yours).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, get_args
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiserve_mcp.console.sections import Section, duration, sections_context, usd
from aiserve_mcp.console.web import (
    CONSOLE,
    act,
    checked_form,
    form_text,
    person,
    render,
    secured,
    see_other,
)
from aiserve_mcp.core.errors import AiserveError, ApprovalRequired, kind_of
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.gpu.market import MAX_DURATION_HOURS
from aiserve_mcp.tools.gpu_instances import (
    ContractList,
    ContractOut,
    DestroyOutput,
    OfferOut,
    SearchInput,
    SearchOutput,
)

GPUS: Final = f"{CONSOLE}/gpus"
PROVIDERS: Final = get_args(SearchInput.model_fields["provider"].annotation)
TEXT_FILTERS: Final = ("gpu_model", "location", "provider")
NUMBER_FILTERS: Final = ("min_vram", "max_price", "limit")
SHOWN_OFFERS: Final = 50  # the page's default limit (the tool's own is larger)


def cost_so_far(contract: ContractOut, now: datetime) -> Decimal:
    """What ending ``contract`` now would have cost in all, as the market settles it: its price for the
    hours since it started (at least one on a prepaid provider), at most the hours it is rented for."""
    rented_s = (contract.expires_at - contract.created_at).total_seconds()
    used_s = min(max((now - contract.created_at).total_seconds(), 0.0), rented_s)
    if contract.billing == "prepaid":
        used_s = min(max(used_s, 3600.0), rented_s)
    return Decimal(str(contract.price_per_hour)) * Decimal(used_s) / 3600


@dataclass(frozen=True)
class InstanceRow:
    contract: ContractOut
    price: str
    cost_so_far: str
    ends_in: str


async def instances_view(request: Request, principal: Principal) -> dict[str, Any]:
    listed = await act(request, principal, "list_gpu_contracts", {"active": True})
    assert isinstance(listed, ContractList)
    now = datetime.now(UTC)
    rows = [
        InstanceRow(
            contract=c,
            price=usd(c.price_per_hour, 4),
            cost_so_far=usd(cost_so_far(c, now), 4),
            ends_in=duration((c.expires_at - now).total_seconds()),
        )
        for c in listed.contracts
    ]
    return {"rows": rows}


INSTANCES: Final = Section("instances", ("instances",), instances_view)
SECTIONS: Final = (INSTANCES,)


def number(text: str) -> int | Decimal | str:
    """A number field's text as the number it spells (the tool checks its range), or the text itself,
    which the tool refuses with its own message."""
    for kind in (int, Decimal):
        try:
            return kind(text)
        except (ValueError, ArithmeticError):
            continue
    return text


def search_arguments(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``search_gpu_offers`` arguments of the filter form (empty fields are left out)."""
    arguments: dict[str, Any] = {"limit": SHOWN_OFFERS}
    arguments |= {name: form_text(params, name) for name in TEXT_FILTERS if form_text(params, name)}
    arguments |= {name: number(form_text(params, name)) for name in NUMBER_FILTERS if form_text(params, name)}
    return arguments


def filter_query(params: Mapping[str, Any], **extra: str) -> str:
    """The page's query string: its filters (nothing else) and ``extra``."""
    names = (*TEXT_FILTERS, *NUMBER_FILTERS)
    filters = {name: form_text(params, name) for name in names if form_text(params, name)}
    return urlencode({**filters, **extra})


@dataclass(frozen=True)
class OfferRow:
    offer: OfferOut
    price: str
    price_per_gpu: str


async def _notice(request: Request, principal: Principal, params: Mapping[str, Any]) -> str | None:
    """What the last rent or destroy did, read back from its contract."""
    for key, verb in (("rented", "Rented"), ("destroyed", "Destroyed")):
        contract_id = form_text(params, key)
        if contract_id:
            try:
                contract = await act(request, principal, "get_gpu_contract", {"contract_id": contract_id})
            except AiserveError:
                return None
            assert isinstance(contract, ContractOut)
            hours = f" for {contract.duration_hours} h" if key == "rented" else ""
            return (
                f"{verb} {contract.gpu_model} on {contract.provider}{hours} "
                f"(contract {contract.contract_id}); status: {contract.status}."
            )
    return None


async def _page(
    request: Request,
    principal: Principal,
    params: Mapping[str, Any],
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    context: dict[str, Any] = {
        "filters": {name: form_text(params, name) for name in (*TEXT_FILTERS, *NUMBER_FILTERS)},
        "shown_offers": SHOWN_OFFERS,
        "providers": PROVIDERS,
        "back": filter_query(params),
        "max_hours": MAX_DURATION_HOURS,
        "notice": await _notice(request, principal, params),
        **await sections_context(request, principal, SECTIONS),
    }
    try:
        found = await act(request, principal, "search_gpu_offers", search_arguments(params))
    except AiserveError as exc:
        if error is None:
            error, status = exc.message, kind_of(exc).http_status
    else:
        assert isinstance(found, SearchOutput)
        context["found"] = found
        context["offers"] = [
            OfferRow(o, usd(o.price_per_hour, 4), usd(o.price_per_gpu_hour, 4)) for o in found.instances
        ]
        failed = "; ".join(f"{e.provider}: {e.error}" for e in found.errors)
        error = error or (f"Some providers did not answer. {failed}" if failed else None)
    return await render(request, "gpus.html", {**context, "error": error}, status=status)


async def gpus_page(request: Request) -> Response:
    """``GET``: the filter form (``gpu_model``, ``min_vram``, ``max_price``, ``location``, ``provider``,
    ``limit``), the matching offers, and the instances you rented."""
    return await _page(request, await person(request), request.query_params)


async def _acted(
    request: Request, outcome: str, tool: str, arguments: Mapping[str, Any], form: FormData
) -> Response:
    """Call ``tool`` as the signed-in person; on success go back to the page with ``?<outcome>=<contract
    id>``, on a refusal show the page with the tool's message and status."""
    principal = await person(request)
    back = dict(parse_qsl(form_text(form, "back")))
    try:
        done = await act(request, principal, tool, arguments)
    except ApprovalRequired as held:  # the account's policy holds it: the person decides on its page
        return secured(see_other(f"{CONSOLE}/approvals/{held.approval_id}"))
    except AiserveError as exc:
        return await _page(request, principal, back, error=exc.message, status=kind_of(exc).http_status)
    assert isinstance(done, ContractOut | DestroyOutput)
    return secured(see_other(f"{GPUS}?{filter_query(back, **{outcome: done.contract_id})}"))


async def rent(request: Request) -> Response:
    """``POST`` (``provider``, ``instance_id`` of an offer, ``duration_hours``, ``back``: the filters)."""
    form = await checked_form(request)
    arguments = {
        "provider": form_text(form, "provider"),
        "instance_id": form_text(form, "instance_id"),
        "duration_hours": number(form_text(form, "duration_hours") or "1"),
    }
    return await _acted(request, "rented", "rent_gpu_instance", arguments, form)


async def destroy(request: Request) -> Response:
    """``POST`` (``provider``, ``contract_id``, ``back``): destroy one of your instances."""
    form = await checked_form(request)
    arguments = {"provider": form_text(form, "provider"), "instance_id": form_text(form, "contract_id")}
    return await _acted(request, "destroyed", "destroy_gpu_instance", arguments, form)


routes = [
    Route(GPUS, gpus_page, methods=["GET"]),
    Route(f"{GPUS}/rent", rent, methods=["POST"]),
    Route(f"{GPUS}/destroy", destroy, methods=["POST"]),
]
