"""A local io.net VMaaS API: the paths, field names, units and FastAPI-style errors of
``https://api.io.solutions/enterprise/v1/io-cloud/vmaas/*`` (io.net/docs/reference/vmaas/*).

Serve ``ionet_app(IoNetState(...))`` with ``tests.conftest.serve``. Knobs on the state: ``hardware`` (rows as
the real hardware list returns them), ``api_key`` (missing header -> 401, wrong key -> 403), ``throttle_next``
(that many 429s, with ``Retry-After: retry_after`` when set), ``fail_next`` (that many 500s),
``deploy_failures`` (statuses the next valid deploys answer instead of deploying), ``stale`` (row ids the list
shows available but whose deploy answers 400 sold out, as a stale listing does), ``polls_until_running``
(VM-list polls that still answer ``deploying``), ``public_ip`` / ``public_port`` (what every running VM
publishes; the port defaults to one per deployment from 30000). ``requests`` logs every (method, path);
``deployments`` holds what was deployed, by id (set ``vm_status`` on one to force its worker status).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

API = "/enterprise/v1/io-cloud/vmaas"
MAX_DURATION_HOURS = 8760
DEPLOY_FIELDS = frozenset(
    {
        "ssh_keys",
        "resource_private_name",
        "node_pool_id",
        "duration_hours",
        "gpus_per_vm",
        "hardware_id",
        "location_ids",
        "vms_qty",
        "github_ids",
        "vm_image_type",
        "network_services",
    }
)
REQUIRED = ("resource_private_name", "duration_hours", "gpus_per_vm", "hardware_id")


def sample_hardware() -> list[dict[str, Any]]:
    """A few rows shaped as the docs' example: two internal RTX 4090 sizes, external B200 and H100, a sold-out
    A100 and a CPU-only row the client must skip."""
    return [
        _row("12__1", 12, "GeForce RTX 4090", 1, "internal", 0.3, 24, 500, 39, 125, "US"),
        _row("12__2", 12, "GeForce RTX 4090", 2, "internal", 0.6, 24, 1000, 39, 125, "US"),
        _row("B200_sxm6x8__US", "B200_sxm6x8", "B200", 8, "external", 39.92, 192, 22528, 208, 2900, "US"),
        _row(
            "8H100.80S.176V__FI",
            "8H100.80S.176V",
            "H100 80GB HBM3",
            8,
            "external",
            27.875342,
            80,
            2000,
            176,
            1480,
            "FI",
            interconnect="sxm5",
            nvlink=True,
        ),
        _row("31__4", 31, "A100-SXM4-80GB", 4, "internal", 5.2, 80, 2000, 64, 500, "DE", sold_out=True),
        _row("1CPU__US", "1CPU", "", 0, "external", 0.1, 0, None, None, None, "US"),
    ]


def _row(
    row_id: str,
    deploy_id: int | str,
    name: str,
    num_cards: int,
    supplier: str,
    price: float,
    vram_per_card: int | None,
    storage: int | None,
    vcpu: int | None,
    memory: int | None,
    location: str | None,
    *,
    sold_out: bool = False,
    interconnect: str | None = None,
    nvlink: bool = False,
) -> dict[str, Any]:
    return {
        "id": row_id,
        "deploy_id": deploy_id,
        "name": name,
        "num_cards": num_cards,
        "supplier": supplier,
        "sold_out": sold_out,
        "price": price,
        "vram_per_card": vram_per_card,
        "interconnect": interconnect,
        "nvlink": nvlink,
        "storage": storage,
        "vcpu": vcpu,
        "memory": memory,
        "location": location,
    }


# name, short code for external ids, GB per card, USD per card-hour range, interconnect
_MODELS: tuple[tuple[str, str, int, float, float, str | None], ...] = (
    ("GeForce RTX 4090", "RTX4090", 24, 0.25, 0.45, None),
    ("GeForce RTX 3090", "RTX3090", 24, 0.13, 0.25, None),
    ("RTX A6000", "A6000", 48, 0.40, 0.65, None),
    ("L40S", "L40S", 48, 0.70, 1.05, None),
    ("A100-SXM4-80GB", "A100.80S", 80, 1.10, 1.65, "sxm4"),
    ("H100 80GB HBM3", "H100.80S", 80, 1.85, 2.70, "sxm5"),
    ("H200", "H200.141S", 141, 2.80, 3.70, "sxm5"),
)
_LOCATIONS = ("US", "US", "US", "DE", "SG", "CA", "FI", "GB", "JP", "AU", "NL", "FR")


def make_hardware(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` realistic hardware rows with unique ids: internal rows ``"<deploy_id>__<cards>"``, external rows
    ``"<cards><model>.<vcpu>V__<location>"``; whole-configuration prices; about one in ten sold out."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(rows) < n:
        name, code, vram, low, high, interconnect = rng.choice(_MODELS)
        cards = rng.choice((1, 1, 2, 4, 8) if vram < 80 else (1, 2, 4, 8, 8))
        location = rng.choice(_LOCATIONS)
        vcpu = cards * rng.choice((8, 12, 16, 22))
        memory = cards * rng.choice((32, 48, 64, 125, 185))
        storage = cards * rng.choice((250, 500, 1000))
        price = round(cards * rng.uniform(low, high), 6)
        external = rng.random() < 0.3
        deploy_id: int | str = f"{cards}{code}.{vcpu}V" if external else 100 + len(rows)
        row_id = f"{deploy_id}__{location}" if external else f"{deploy_id}__{cards}"
        if row_id in seen:
            continue
        seen.add(row_id)
        rows.append(
            _row(
                row_id,
                deploy_id,
                name,
                cards,
                "external" if external else "internal",
                price,
                vram,
                storage,
                vcpu,
                memory,
                location,
                sold_out=rng.random() < 0.1,
                interconnect=interconnect if cards > 1 else None,
                nvlink=interconnect is not None and cards == 8,
            )
        )
    return rows


@dataclass
class FakeDeployment:
    id: str
    row: dict[str, Any]
    body: dict[str, Any]
    public_port: int
    created_at: str
    polls: int = 0
    vm_status: str | None = None  # set to force a worker status ("failed", "destroyed", ...)


@dataclass
class IoNetState:
    hardware: list[dict[str, Any]] = field(default_factory=sample_hardware)
    api_key: str = "ionet-test-key"
    throttle_next: int = 0
    fail_next: int = 0
    deploy_failures: list[int] = field(default_factory=list)
    retry_after: float | None = None
    stale: set[str] = field(default_factory=set)
    polls_until_running: int = 1
    public_ip: str = "127.0.0.1"
    public_port: int | None = None
    deployments: dict[str, FakeDeployment] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    next_port: int = 30000


def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _invalid(errors: list[dict[str, Any]]) -> JSONResponse:
    return _error(422, errors)


def _issue(kind: str, loc: Sequence[str | int], msg: str, value: Any, **ctx: Any) -> dict[str, Any]:
    issue: dict[str, Any] = {"type": kind, "loc": list(loc), "msg": msg, "input": value}
    if ctx:
        issue["ctx"] = ctx
    return issue


def _int_issues(
    body: dict[str, Any], name: str, low: int, high: int, exclusive_low: bool
) -> list[dict[str, Any]]:
    value, loc = body[name], ["body", name]
    if not isinstance(value, int) or isinstance(value, bool):
        return [_issue("int_type", loc, "Input should be a valid integer", value)]
    if exclusive_low and value <= low:
        return [_issue("greater_than", loc, f"Input should be greater than {low}", value, gt=low)]
    if not exclusive_low and value < low:
        return [
            _issue(
                "greater_than_equal", loc, f"Input should be greater than or equal to {low}", value, ge=low
            )
        ]
    if value > high:
        return [
            _issue("less_than_equal", loc, f"Input should be less than or equal to {high}", value, le=high)
        ]
    return []


def _validate_deploy(body: Any) -> list[dict[str, Any]]:
    """The checks of the ``VMaasDeployRequest`` schema (``additionalProperties: false``)."""
    if not isinstance(body, dict):
        return [_issue("model_attributes_type", ["body"], "Input should be a valid dictionary", body)]
    issues = [
        _issue("extra_forbidden", ["body", k], "Extra inputs are not permitted", v)
        for k, v in body.items()
        if k not in DEPLOY_FIELDS
    ]
    issues += [_issue("missing", ["body", k], "Field required", body) for k in REQUIRED if k not in body]
    if "duration_hours" in body:
        issues += _int_issues(body, "duration_hours", 0, MAX_DURATION_HOURS, exclusive_low=True)
    if "gpus_per_vm" in body:
        issues += _int_issues(body, "gpus_per_vm", 1, 8, exclusive_low=False)
    if "resource_private_name" in body and not isinstance(body["resource_private_name"], str):
        value = body["resource_private_name"]
        issues.append(
            _issue("string_type", ["body", "resource_private_name"], "Input should be a valid string", value)
        )
    locations = body.get("location_ids")
    if locations is not None and (not isinstance(locations, list) or len(locations) != 1):
        issues.append(
            _issue("too_long", ["body", "location_ids"], "List should have exactly 1 item", locations)
        )
    image = body.get("vm_image_type", "general")
    if image not in ("general", "datascience"):
        issues.append(
            _issue("enum", ["body", "vm_image_type"], "Input should be 'general' or 'datascience'", image)
        )
    services = body.get("network_services", {})
    if not isinstance(services, dict):
        return [
            *issues,
            _issue("dict_type", ["body", "network_services"], "Input should be a valid dictionary", 0),
        ]
    for name, service in services.items():
        loc: list[str | int] = ["body", "network_services", name]
        if not isinstance(service, dict) or set(service) - {"port", "protocol", "whitelist"}:
            issues.append(_issue("model_type", loc, "Input should be a valid NetworkService", service))
            continue
        port = service.get("port")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            issues.append(_issue("less_than_equal", [*loc, "port"], "Input should be a port 1..65535", port))
        if service.get("protocol") not in ("tcp", "udp"):
            issues.append(
                _issue("enum", [*loc, "protocol"], "Input should be 'tcp' or 'udp'", service.get("protocol"))
            )
        whitelist = service.get("whitelist")
        if not isinstance(whitelist, list) or not whitelist:
            issues.append(
                _issue("too_short", [*loc, "whitelist"], "List should have at least 1 item", whitelist)
            )
    return issues


def _valid_uuid(value: str) -> JSONResponse | None:
    try:
        uuid.UUID(value)
    except ValueError:
        msg = "Input should be a valid UUID, invalid character: expected an optional prefix of `urn:uuid:`"
        return _invalid([_issue("uuid_parsing", ["path", "deployment_id"], msg, value)])
    return None


def ionet_app(state: IoNetState) -> Starlette:
    def gate(request: Request) -> JSONResponse | None:
        state.requests.append((request.method, request.url.path))
        if state.throttle_next > 0:
            state.throttle_next -= 1
            headers = {"Retry-After": str(state.retry_after)} if state.retry_after is not None else None
            return _error(429, "Too Many Requests", headers)
        key = request.headers.get("x-api-key")
        if not key:
            return _error(401, "Not authenticated")
        if key != state.api_key:
            return _error(403, "Invalid API key")
        if state.fail_next > 0:
            state.fail_next -= 1
            return _error(500, "Internal Server Error")
        return None

    async def hardware(request: Request) -> JSONResponse:
        if refused := gate(request):
            return refused
        return JSONResponse({"data": {"hardware": state.hardware}})

    async def deploy(request: Request) -> JSONResponse:
        if refused := gate(request):
            return refused
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _invalid([_issue("json_invalid", ["body", 0], "JSON decode error", {})])
        if issues := _validate_deploy(body):
            return _invalid(issues)
        if state.deploy_failures:
            return _error(state.deploy_failures.pop(0), "Upstream scheduler error")
        locations = body.get("location_ids") or []
        row = next(
            (
                r
                for r in state.hardware
                if str(r["deploy_id"]) == str(body["hardware_id"])
                and r["num_cards"] == body["gpus_per_vm"]
                and (not locations or r["location"] == locations[0])
            ),
            None,
        )
        if row is None:
            return _error(404, "Hardware not found for this hardware_id, gpus_per_vm and location")
        if row["sold_out"] or row["id"] in state.stale:
            return _error(
                400, f"Not enough available hardware: {row['name']} x{row['num_cards']} is sold out"
            )
        port = state.public_port
        if port is None:
            port, state.next_port = state.next_port, state.next_port + 1
        deployment_id = str(uuid.uuid4())
        created = datetime.now(UTC).isoformat()
        state.deployments[deployment_id] = FakeDeployment(deployment_id, row, body, port, created)
        return JSONResponse({"status": "success", "deployment_id": deployment_id})

    def worker(dep: FakeDeployment) -> dict[str, Any]:
        status = dep.vm_status or ("deploying" if dep.polls <= state.polls_until_running else "running")
        services = {
            name: {**spec, "public_port": dep.public_port, "public_ip": state.public_ip, "srv_record": ""}
            for name, spec in dep.body.get("network_services", {}).items()
        }
        return {
            "device_id": str(uuid.uuid5(uuid.NAMESPACE_URL, dep.id)),
            "vm_id": f"vm-{dep.id[:8]}",
            "hardware": dep.row["name"],
            "brand_name": "NVIDIA",
            "created_at": dep.created_at,
            "uptime_percent": 100.0 if status == "running" else 0.0,
            "gpus_per_vm": dep.body["gpus_per_vm"],
            "status": status,
            "vm_events": [{"time": dep.created_at, "message": "VM deployment requested"}],
            "network_services": services if status == "running" else {},
            "ssh_access": f"ssh ubuntu@{state.public_ip}" if status == "running" else "",
            "is_external": dep.row["supplier"] == "external",
        }

    async def vms(request: Request) -> JSONResponse:
        if refused := gate(request):
            return refused
        deployment_id = request.path_params["deployment_id"]
        if bad := _valid_uuid(deployment_id):
            return bad
        dep = state.deployments.get(deployment_id)
        if dep is None:
            return _error(404, "Deployment not found")
        dep.polls += 1
        return JSONResponse({"data": {"total": 1, "workers": [worker(dep)]}})

    async def destroy(request: Request) -> JSONResponse:
        if refused := gate(request):
            return refused
        deployment_id = request.path_params["deployment_id"]
        if bad := _valid_uuid(deployment_id):
            return bad
        if state.deployments.pop(deployment_id, None) is None:
            return _error(404, "Deployment not found")
        return JSONResponse({"status": "success"})

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, exc.detail)

    return Starlette(
        exception_handlers={HTTPException: http_error},
        routes=[
            Route(f"{API}/hardware", hardware, methods=["GET"]),
            Route(f"{API}/deploy", deploy, methods=["POST"]),
            Route(f"{API}/deployment/{{deployment_id}}/vms", vms, methods=["GET"]),
            Route(f"{API}/deployment/{{deployment_id}}", destroy, methods=["DELETE"]),
        ],
    )
