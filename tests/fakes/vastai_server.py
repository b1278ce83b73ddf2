"""A local vast.ai REST API (``/api/v0``): offer search in vast's query language, create from an ask, show,
list and destroy instances, with vast's field names, units (MB, USD/hour per whole offer) and error bodies.

It refuses what vast.ai refuses, with vast's status and body. Sources: the create-instance guide
(vast-ai/docs ``api-reference/creating-instances-with-api.mdx``), the OpenAPI files in vast-ai/docs
``api-reference/openapi/yaml/`` (``create_instance.yaml``, ``show_instance.yaml``, ``show_instances.yaml``,
``destroy_instance.yaml``) and the CLI (vast-ai/vast-cli ``vast.py``).

* Authentication (all but search): no or a wrong ``Authorization: Bearer`` key is 401 ``{"success": false,
  "error": "auth_error", "msg": "Invalid user key"}`` (``show_instance.yaml``).
* Create, ``PUT /api/v0/asks/{id}/`` (``create_instance.yaml``):
  - a bad or taken ask (unknown, rented, not rentable, or in ``refuse_create``) is 404 ``{"success": false,
    "error": "invalid_args", "msg": "error 404/3603: no_such_ask Instance type by id 1234567 is not
    available.", "ask_id": 1234567}``; an ask in ``cannot_start`` with ``cancel_unavail`` is 410
    ``{"error": "no_such_ask", "msg": "error 410/3907: no_such_ask Instance type 1234567 is no longer
    available.", ...}``; an id that is not a number is 400 "error 400/3467: Invalid args: 'id' is required
    and must be a valid offer ID";
  - ``env`` must be a JSON object ("For instance creation, the env field must be a JSON object (dict), not
    a Docker flag string", the guide's Common Pitfalls). vast.ai does not apply a string (the env "isn't
    taking effect"); this fake refuses it with 400 ``invalid_args`` so the mistake is loud. Port mappings
    are keys such as ``"-p 8000:8000": "1"``, kept with the variables: the instance's ``extra_env`` lists
    every pair, ports included (``show_instances.yaml``: ``[["DOG", "CAT"], ["-p 70001:70001", "1"]]``);
  - the limits of ``x-input-validation``: ``image`` at most 1024 characters, required unless
    ``template_hash_id``; ``args``, ``args_str`` and ``onstart`` at most 4096 together; ``label`` at most
    256; each ``env`` value at most 256 and all of ``env`` at most 32768; ``disk`` at least 8 (GB);
    ``price`` 0.001 to 128 (``invalid_price``); ``runtype`` one of ssh, jupyter, args, ssh_proxy,
    ssh_direct, jupyter_proxy, jupyter_direct. Over a limit is 400 ``{"success": false, "error":
    "invalid_args", "msg": ...}``; vast.ai does not document the text of these messages, so ``msg`` here is
    ours;
  - success is 200 ``{"success": true, "new_contract": N}``.
* An image that does not exist (``missing_images``): the create succeeds, and the instance then stays
  ``actual_status: "created"`` with ``status_msg`` "Error response from daemon: manifest for IMAGE not
  found: manifest unknown: manifest unknown" (Docker's pull error, which vast shows as the status message;
  reported in our issue "Real-world truth", not in vast's documentation). It never runs.
* Destroy of an instance that is not there: 404 ``{"success": false, "error": "not_found", "msg":
  "Instance not found"}``; a non-numeric id: 400 ``invalid_args`` "invalid instance_id"
  (``destroy_instance.yaml``).
* Throttling (``throttle_next``): 429 with a JSON body: ``{"detail": "API requests too frequent endpoint
  threshold=4.5"}`` for create (threshold 2.0 for show, 1.0 for list; search's is not documented and
  answers the same form), and for destroy ``{"success": false, "error": "rate_limit_exceeded", "msg": "API
  requests too frequent endpoint threshold=3.0"}``.

Other knobs on ``VastAiState``: ``quota_exhausted`` (search answers a daily-quota 429; its body is not
documented by vast.ai), ``fail_create_with_contract`` (create leaves a stopped instance and answers 400
naming it), ``cannot_start`` (see above; without ``cancel_unavail`` the instance is created and never
scheduled, which is not documented either), ``crash_create`` (create makes the instance, then answers 500),
``delay_s`` (every answer is that late). ``create_payloads`` records every create body as sent, by ask id.
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
RUNTYPES = frozenset({"ssh", "jupyter", "args", "ssh_proxy", "ssh_direct", "jupyter_proxy", "jupyter_direct"})
# create_instance.yaml's x-input-validation
MAX_IMAGE, MAX_ARGS, MAX_LABEL, MAX_ENV_VALUE, MAX_ENV_TOTAL, MIN_DISK = 1024, 4096, 256, 256, 32768, 8.0
MIN_PRICE, MAX_PRICE = 0.001, 128.0
# 429 "endpoint threshold" per endpoint, from each OpenAPI file's x-rate-limit (search: not documented)
THRESHOLDS = {"search": "3.0", "create": "4.5", "show": "2.0", "list": "1.0", "destroy": "3.0"}

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
    cannot_start: set[str] = field(default_factory=set)  # asks whose machine cannot start an instance now
    missing_images: set[str] = field(default_factory=set)  # images no registry has: they never pull
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


def _too_frequent(endpoint: str) -> JSONResponse:
    msg = f"API requests too frequent endpoint threshold={THRESHOLDS[endpoint]}"
    if endpoint == "destroy":
        return _error(429, "rate_limit_exceeded", msg)
    return JSONResponse({"detail": msg}, status_code=429)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _invalid_create(payload: Any) -> tuple[str, str] | None:
    """``(error, msg)`` for a create body vast.ai refuses with 400, else ``None``."""
    if not isinstance(payload, dict):
        return "invalid_args", f"error 400/1782: Invalid args: invalid json: {payload!r}"
    image, label = payload.get("image"), payload.get("label")
    if not image and not payload.get("template_hash_id"):
        return "invalid_args", "Invalid args: image is required (or template_hash_id)"
    if image is not None and (not isinstance(image, str) or len(image) > MAX_IMAGE):
        return "invalid_args", f"Invalid args: image must be a string of at most {MAX_IMAGE} characters"
    if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL):
        return "invalid_args", f"Invalid args: label must be a string of at most {MAX_LABEL} characters"
    args = payload.get("args") or []
    parts = [*(args if isinstance(args, list) else [args]), payload.get("args_str"), payload.get("onstart")]
    if sum(len(str(part)) for part in parts if part is not None) > MAX_ARGS:
        return "invalid_args", f"Invalid args: args, args_str and onstart exceed {MAX_ARGS} characters"
    env = payload.get("env")
    if env is not None:
        if not isinstance(env, dict):
            return "invalid_args", "Invalid args: env must be a JSON object, not a Docker flag string"
        if any(len(str(value)) > MAX_ENV_VALUE for value in env.values()):
            return "invalid_args", f"Invalid args: an env value exceeds {MAX_ENV_VALUE} characters"
        if sum(len(str(k)) + len(str(v)) for k, v in env.items()) > MAX_ENV_TOTAL:
            return "invalid_args", f"Invalid args: env exceeds {MAX_ENV_TOTAL} characters"
    disk = payload.get("disk")
    if disk is not None and ((size := _number(disk)) is None or size < MIN_DISK):
        return "invalid_args", f"Invalid args: disk must be at least {MIN_DISK:g} GB"
    runtype = payload.get("runtype")
    if runtype is not None and runtype not in RUNTYPES:
        return "invalid_args", f"Invalid args: runtype must be one of {', '.join(sorted(RUNTYPES))}"
    price = payload.get("price")
    if price is not None and ((bid := _number(price)) is None or not MIN_PRICE <= bid <= MAX_PRICE):
        return "invalid_price", f"Invalid price: the bid must be {MIN_PRICE:g} to {MAX_PRICE:g} $/hour"
    return None


def _manifest_unknown(image: str) -> str:
    tagged = image if ":" in image.rsplit("/", 1)[-1] or "@" in image else f"{image}:latest"
    return f"Error response from daemon: manifest for {tagged} not found: manifest unknown: manifest unknown"


def vastai_app(state: VastAiState) -> Starlette:
    """The fake vast.ai API over ``state``."""

    async def gate(request: Request, endpoint: str, *, auth: bool) -> Response | None:
        state.requests.append((request.method, request.url.path))
        header = request.headers.get("authorization")
        state.authorizations.append(header)
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.throttle_next > 0:
            state.throttle_next -= 1
            return _too_frequent(endpoint)
        if auth and header != f"Bearer {state.api_key}":
            return _error(401, "auth_error", "Invalid user key")
        return None

    async def search(request: Request) -> Response:
        if refused := await gate(request, "search", auth=False):
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
        if refused := await gate(request, "create", auth=True):
            return refused
        ask = request.path_params["ask"]
        try:
            payload = await request.json()
        except ValueError:
            return _error(400, "invalid_args", "error 400/1782: Invalid args: invalid json")
        if isinstance(payload, dict):
            state.create_payloads[ask] = payload
        if not ask.isdigit():
            return _error(
                400,
                "invalid_args",
                "error 400/3467: Invalid args: 'id' is required and must be a valid offer ID",
            )
        if invalid := _invalid_create(payload):
            return _error(400, *invalid, ask_id=int(ask))
        offer = next((o for o in state.offers if str(o.get("id")) == ask), None)
        if offer is None or offer.get("rented") or not offer.get("rentable") or ask in state.refuse_create:
            return _error(
                404,
                "invalid_args",
                f"error 404/3603: no_such_ask Instance type by id {ask} is not available.",
                ask_id=int(ask),
            )
        if ask in state.cannot_start and payload.get("cancel_unavail"):
            return _error(
                410,
                "no_such_ask",
                f"error 410/3907: no_such_ask Instance type {ask} is no longer available.",
                ask_id=int(ask),
            )
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
            "extra_env": [[key, value] for key, value in env.items()],
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
        if ask in state.cannot_start:  # without cancel_unavail: created, never scheduled
            instance.update(actual_status=None, cur_state="stopped", status_msg=None)
        else:
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
        image = instance.get("image_uuid")
        if image in state.missing_images:
            instance.update(actual_status="created", status_msg=_manifest_unknown(str(image)))
            return
        instance.update(actual_status="running", status_msg="success, running", public_ipaddr=" 127.0.0.1 ")
        instance["ports"] = {
            f"{port}/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(state.host_port + i)}]
            for i, port in enumerate(state.exposed_ports.pop(instance["id"], []))
        }

    async def show(request: Request) -> Response:
        if refused := await gate(request, "show", auth=True):
            return refused
        instance = state.instances.get(int(request.path_params["id"]))
        if instance is not None:
            advance(instance)
        return JSONResponse({"instances": instance})

    async def list_instances(request: Request) -> Response:
        if refused := await gate(request, "list", auth=True):
            return refused
        return JSONResponse({"instances": list(state.instances.values())})

    async def destroy(request: Request) -> Response:
        if refused := await gate(request, "destroy", auth=True):
            return refused
        contract = int(request.path_params["id"])
        gone = state.instances.pop(contract, None)
        if gone is None:
            return _error(404, "not_found", "Instance not found")
        state.destroyed.append(contract)
        state.loading_shows.pop(contract, None)
        for offer in state.offers:
            if offer.get("machine_id") == gone.get("machine_id") and offer.get("rented"):
                offer["rented"] = False
        return JSONResponse({"success": True, "msg": "Instance destroyed successfully"})

    async def bad_instance_id(request: Request) -> Response:
        endpoint = "destroy" if request.method == "DELETE" else "show"
        if refused := await gate(request, endpoint, auth=True):
            return refused
        return _error(400, "invalid_args", "invalid instance_id")

    return Starlette(
        routes=[
            Route("/api/v0/bundles/", search, methods=["POST", "GET"]),
            Route("/api/v0/search/asks/", search, methods=["PUT"]),
            Route("/api/v0/asks/{ask}/", create, methods=["PUT"]),
            Route("/api/v0/instances/", list_instances, methods=["GET"]),
            Route("/api/v0/instances/{id:int}/", show, methods=["GET"]),
            Route("/api/v0/instances/{id:int}/", destroy, methods=["DELETE"]),
            Route("/api/v0/instances/{id}/", bad_instance_id, methods=["GET", "DELETE"]),
        ]
    )
