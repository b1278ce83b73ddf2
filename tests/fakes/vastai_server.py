"""A local vast.ai REST API (``/api/v0``): offer search in vast's query language, create from an ask, show,
list and destroy instances, with vast's field names, units (MB, USD/hour per whole offer) and error bodies.

Failure knobs on ``VastAiState``: ``throttle_next`` (that many requests get 429 "API requests too frequent"),
``quota_exhausted`` (search answers the daily-quota 429), ``fail_create_with_contract`` (create leaves a
stopped instance and answers 400 naming it), ``refuse_create`` (create answers no_such_ask, as when someone
else rented the offer first), ``crash_create`` (create makes the instance, then answers 500), ``delay_s``
(every answer is that late).
"""

from __future__ import annotations

import asyncio
import json
import operator
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

API_KEY = "vast-test-key"
HOURS_PER_MONTH = 30 * 24
QUERY_KEYS = frozenset({"order", "limit", "type", "allocated_storage", "disable_bundling", "extra_ids"})
OFFER_TYPES = frozenset({"on-demand", "bid", "reserved"})

# (vast gpu_name, gpu_ram MB per GPU, USD/hour per GPU range, compute_cap, dlperf per GPU, TFLOPS per GPU)
GPUS: tuple[tuple[str, int, tuple[float, float], int, float, float], ...] = (
    ("RTX 4090", 24564, (0.25, 0.60), 890, 60.0, 82.6),
    ("RTX 3090", 24576, (0.12, 0.30), 860, 30.0, 35.6),
    ("A100 PCIE", 40960, (0.60, 1.10), 800, 70.0, 78.0),
    ("A100 SXM4", 81920, (0.80, 1.60), 800, 80.0, 78.0),
    ("H100 SXM", 81559, (1.60, 2.90), 900, 160.0, 200.0),
    ("H100 PCIE", 81559, (1.40, 2.40), 900, 130.0, 150.0),
    ("RTX A6000", 49140, (0.35, 0.70), 860, 40.0, 38.7),
    ("L40S", 46068, (0.55, 1.00), 890, 70.0, 91.6),
    ("RTX 6000Ada", 49140, (0.60, 1.00), 890, 75.0, 91.1),
    ("Tesla V100", 16384, (0.10, 0.30), 700, 20.0, 15.7),
)
LOCATIONS = (
    "Texas, US", "California, US", "Washington, US", "Quebec, CA", "Ontario, CA", "Germany, DE",
    "Netherlands, NL", "Sweden, SE", "Norway, NO", "Poland, PL", "Czechia, CZ", "Russia, RU",
    "Japan, JP", "Taiwan, TW", "Australia, AU", None,
)  # fmt: skip


@dataclass
class VastAiState:
    """What the fake knows and how it misbehaves; tests read and change it directly."""

    offers: list[dict[str, Any]] = field(default_factory=list)
    instances: dict[int, dict[str, Any]] = field(default_factory=dict)
    api_key: str = API_KEY
    throttle_next: int = 0
    quota_exhausted: bool = False
    fail_create_with_contract: set[str] = field(default_factory=set)
    refuse_create: set[str] = field(default_factory=set)
    crash_create: set[str] = field(default_factory=set)
    delay_s: float = 0.0
    shows_until_running: int = 1  # shows answering "loading" before a new instance is "running"
    host_port: int = 41234  # public port of the first "-p" mapping a running instance shows
    requests: list[tuple[str, str]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    queries: list[dict[str, Any]] = field(default_factory=list)
    create_payloads: dict[str, dict[str, Any]] = field(default_factory=dict)  # by offer id
    destroyed: list[int] = field(default_factory=list)
    next_contract: int = 9_000_000
    loading_shows: dict[int, int] = field(default_factory=dict)
    # container ports asked for with "-p HOST:CONTAINER" env keys, published once the instance runs
    exposed_ports: dict[int, list[int]] = field(default_factory=dict)


def make_offers(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` offers as vast's search returns them, with prices at 5 GB of allocated storage."""
    rng = random.Random(seed)
    offers = []
    for i in range(n):
        name, ram, (low, high), cap, dlperf, flops = rng.choice(GPUS)
        gpus = rng.choice((1, 1, 1, 1, 2, 2, 4, 8))
        dph_base = round(gpus * rng.uniform(low, high), 4)
        storage_cost = round(rng.uniform(0.05, 0.3), 4)
        dph_total = round(dph_base + storage_cost * 5 / HOURS_PER_MONTH, 6)
        reliability = round(rng.uniform(0.9, 0.9999), 4)
        verified = rng.random() < 0.9
        offers.append(
            {
                "id": 20_000_000 + i * 7 + rng.randrange(7),
                "ask_contract_id": 20_000_000 + i * 7,
                "machine_id": 10_000 + rng.randrange(40_000),
                "host_id": 1_000 + rng.randrange(200_000),
                "bundle_id": 600_000_000 + i,
                "num_gpus": gpus,
                "gpu_name": name,
                "gpu_ram": ram,
                "gpu_total_ram": ram * gpus,
                "gpu_arch": "nvidia",
                "gpu_mem_bw": round(rng.uniform(700, 3300), 1),
                "compute_cap": cap,
                "cuda_max_good": rng.choice((12.2, 12.4, 12.6, 12.8)),
                "driver_version": rng.choice(("550.127.05", "560.35.03", "570.86.15")),
                "cpu_cores": gpus * rng.choice((8, 16, 32)),
                "cpu_cores_effective": float(gpus * 8),
                "cpu_ram": gpus * rng.choice((32, 64, 128)) * 1024,
                "disk_space": float(rng.choice((100, 250, 500, 1000, 2000))),
                "inet_up": round(rng.uniform(50, 5000), 1),
                "inet_down": round(rng.uniform(50, 5000), 1),
                "inet_up_cost": round(rng.uniform(0, 0.02), 4),
                "inet_down_cost": round(rng.uniform(0, 0.02), 4),
                "direct_port_count": rng.choice((0, 20, 100, 1000)),
                "dph_base": dph_base,
                "storage_cost": storage_cost,
                "dph_total": dph_total,
                "min_bid": round(dph_base * 0.6, 4),
                "dlperf": round(gpus * dlperf * rng.uniform(0.8, 1.05), 3),
                "dlperf_per_dphtotal": round(gpus * dlperf / dph_total, 3),
                "total_flops": round(gpus * flops, 2),
                "flops_per_dphtotal": round(gpus * flops / dph_total, 3),
                "score": round(gpus * dlperf / dph_total * reliability, 3),
                "reliability": reliability,
                "reliability2": reliability,
                "rentable": True,
                "rented": False,
                "is_bid": False,
                "verified": verified,
                "verification": "verified" if verified else "unverified",
                "external": False,
                "hosting_type": rng.choice((0, 1)),
                "static_ip": rng.random() < 0.5,
                "geolocation": rng.choice(LOCATIONS),
                "public_ipaddr": f"{rng.randrange(11, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.1",
                "duration": round(rng.uniform(86_400, 90 * 86_400), 1),
                "start_date": 1_735_689_600.0,
                "end_date": 1_767_225_600.0,
            }
        )
    return offers


def _coerce(actual: Any, operand: Any) -> Any:
    """vast's CLI sends numbers and booleans as strings (``num_gpus={"eq": "1"}``); compare them as values."""
    if isinstance(operand, list):
        return [_coerce(actual, item) for item in operand]
    if isinstance(operand, str) and isinstance(actual, bool):
        return operand.strip().lower() == "true"
    if isinstance(operand, str) and isinstance(actual, int | float):
        try:
            return float(operand)
        except ValueError:
            return operand
    return operand


OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
    "nin": lambda a, b: a not in b,
}


def _matches(row: dict[str, Any], filters: dict[str, dict[str, Any]]) -> bool:
    for name, condition in filters.items():
        actual = row.get(name)
        for op, operand in condition.items():
            try:
                if actual is None or not OPS[op](actual, _coerce(actual, operand)):
                    return False
            except TypeError:
                return False
    return True


class _BadQuery(ValueError):
    pass


def _search(state: VastAiState, query: dict[str, Any]) -> list[dict[str, Any]]:
    if query.get("type", "on-demand") not in OFFER_TYPES:
        raise _BadQuery(f"invalid type {query.get('type')!r}")
    filters: dict[str, dict[str, Any]] = {}
    for name, condition in query.items():
        if name in QUERY_KEYS:
            continue
        condition = condition if isinstance(condition, dict) else {"eq": condition}
        unknown = set(condition) - set(OPS)
        if unknown:
            raise _BadQuery(f"unknown operator {sorted(unknown)[0]!r} for {name}")
        filters[name] = condition
    storage = query.get("allocated_storage")
    rows = []
    for offer in state.offers:
        row = dict(offer)
        if isinstance(storage, int | float) and "storage_cost" in row and "dph_base" in row:
            row["dph_total"] = round(row["dph_base"] + row["storage_cost"] * storage / HOURS_PER_MONTH, 6)
        if _matches(row, filters):
            rows.append(row)
    for name, direction in reversed(query.get("order") or []):
        present = [r for r in rows if r.get(name) is not None]
        present.sort(key=lambda r: r[name], reverse=direction == "desc")
        rows = present + [r for r in rows if r.get(name) is None]
    limit = query.get("limit")
    return rows[: int(limit)] if limit is not None else rows


def _error(status: int, error: str, msg: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"success": False, "error": error, "msg": msg, **extra}, status_code=status)


def vastai_app(state: VastAiState) -> Starlette:
    """The fake vast.ai API over ``state``."""

    async def gate(request: Request, *, auth: bool) -> Response | None:
        state.requests.append((request.method, request.url.path))
        header = request.headers.get("authorization")
        state.authorizations.append(header)
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.throttle_next > 0:
            state.throttle_next -= 1
            return PlainTextResponse("API requests too frequent", status_code=429)
        if auth and header != f"Bearer {state.api_key}":
            return _error(401, "auth_error", "Invalid user key")
        return None

    async def search(request: Request) -> Response:
        if refused := await gate(request, auth=False):
            return refused
        if state.quota_exhausted:
            return _error(
                429, "search_quota_exceeded", "Daily search quota exceeded; it resets at 00:00 UTC."
            )
        try:
            if request.method == "GET":
                query = json.loads(request.query_params.get("q", "{}"))
            else:
                body = await request.json()
                query = body.get("q", body) if request.method == "PUT" else body
            if not isinstance(query, dict):
                raise _BadQuery("query must be an object")
            state.queries.append(query)
            return JSONResponse({"offers": _search(state, query)})
        except (ValueError, TypeError, AttributeError) as exc:
            return _error(400, "invalid_args", str(exc) or "malformed query")

    async def create(request: Request) -> Response:
        if refused := await gate(request, auth=True):
            return refused
        ask = request.path_params["ask"]
        try:
            payload = await request.json()
        except ValueError:
            return _error(400, "invalid_args", "body is not JSON")
        if not isinstance(payload, dict) or not (payload.get("image") or payload.get("template_hash_id")):
            return _error(400, "invalid_args", "image or template_hash_id is required")
        state.create_payloads[ask] = payload
        offer = next((o for o in state.offers if str(o.get("id")) == ask), None)
        if offer is None or offer.get("rented") or not offer.get("rentable") or ask in state.refuse_create:
            return _error(400, "no_such_ask", f"Instance type by id {ask} is not available.")
        contract = state.next_contract
        state.next_contract += 1
        env: dict[str, Any] = payload.get("env") or {}
        instance: dict[str, Any] = {
            "id": contract,
            "machine_id": offer.get("machine_id"),
            "host_id": offer.get("host_id"),
            "label": payload.get("label"),
            "image_uuid": payload.get("image"),
            "image_runtype": payload.get("runtype"),
            "onstart": payload.get("onstart"),
            "extra_env": [[k, v] for k, v in env.items() if not k.startswith("-")],
            "num_gpus": offer.get("num_gpus"),
            "gpu_name": offer.get("gpu_name"),
            "gpu_ram": offer.get("gpu_ram"),
            "disk_space": payload.get("disk"),
            "dph_base": offer.get("dph_base"),
            "dph_total": offer.get("dph_total"),
            "geolocation": offer.get("geolocation"),
            "actual_status": "loading",
            "intended_status": "running",
            "cur_state": "running",
            "next_state": "running",
            "status_msg": "Pulling image",
            "public_ipaddr": None,
            "ports": {},
            "start_date": 1_767_225_600.0,
        }
        if ask in state.fail_create_with_contract:
            instance.update(
                actual_status="stopped", intended_status="stopped", cur_state="stopped", next_state="stopped"
            )
            state.instances[contract] = instance
            return _error(
                400, "create_failed", "Machine could not schedule the instance.", new_contract=contract
            )
        offer["rented"] = True
        state.instances[contract] = instance
        state.loading_shows[contract] = state.shows_until_running
        state.exposed_ports[contract] = [
            int(key.split(":")[-1]) for key in env if key.startswith("-p ") and key.split(":")[-1].isdigit()
        ]
        if ask in state.crash_create:
            return PlainTextResponse("Internal Server Error", status_code=500)
        return JSONResponse({"success": True, "new_contract": contract})

    def advance(instance: dict[str, Any]) -> None:
        left = state.loading_shows.get(instance["id"])
        if left is None:
            return
        if left > 0:
            state.loading_shows[instance["id"]] = left - 1
            return
        del state.loading_shows[instance["id"]]
        instance.update(actual_status="running", status_msg="success, running", public_ipaddr=" 127.0.0.1 ")
        instance["ports"] = {
            f"{port}/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(state.host_port + i)}]
            for i, port in enumerate(state.exposed_ports.pop(instance["id"], []))
        }

    async def show(request: Request) -> Response:
        if refused := await gate(request, auth=True):
            return refused
        instance = state.instances.get(int(request.path_params["id"]))
        if instance is not None:
            advance(instance)
        return JSONResponse({"instances": instance})

    async def list_instances(request: Request) -> Response:
        if refused := await gate(request, auth=True):
            return refused
        return JSONResponse({"instances": list(state.instances.values())})

    async def destroy(request: Request) -> Response:
        if refused := await gate(request, auth=True):
            return refused
        contract = int(request.path_params["id"])
        gone = state.instances.pop(contract, None)
        if gone is None:
            return _error(404, "no_such_instance", f"Instance {contract} not found.")
        state.destroyed.append(contract)
        state.loading_shows.pop(contract, None)
        for offer in state.offers:
            if offer.get("machine_id") == gone.get("machine_id") and offer.get("rented"):
                offer["rented"] = False
        return JSONResponse({"success": True, "msg": "Instance destroyed successfully"})

    return Starlette(
        routes=[
            Route("/api/v0/bundles/", search, methods=["POST", "GET"]),
            Route("/api/v0/search/asks/", search, methods=["PUT"]),
            Route("/api/v0/asks/{ask}/", create, methods=["PUT"]),
            Route("/api/v0/instances/", list_instances, methods=["GET"]),
            Route("/api/v0/instances/{id:int}/", show, methods=["GET"]),
            Route("/api/v0/instances/{id:int}/", destroy, methods=["DELETE"]),
        ]
    )
