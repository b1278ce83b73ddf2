"""A local io.net Container-as-a-Service API: the paths, fields, statuses and errors of
``https://api.io.solutions/enterprise/v1/io-cloud/caas/*``.

Sources, and what each one settles:

* io.net's API reference (io.net/docs/reference/caas/*): ``deploy-a-container`` ("Only HTTP server
  containers are supported. Only a single traffic port is allowed. Each container must use a minimum of
  1 GPU"; 200 ``{"status", "deployment_id": "<uuid>"}``, 422 ``{"detail": [{"loc", "msg", "type"}]}``),
  ``get-deployment-details`` (``{"data": {"id", "status", "created_at", "started_at", "finished_at",
  "amount_paid", "completed_percent", "total_gpus", "gpus_per_container", "total_containers",
  "hardware_name", "hardware_id", "locations": [{"id", "iso2", "name"}], "brand_name",
  "compute_minutes_served", "compute_minutes_remaining", "container_config": {"entrypoint",
  "env_variables", "traffic_port", "image_url", "secret_env_keys"}}}``), ``destroy-container`` (``DELETE
  .../deployment/{deployment_id}``, the id a UUID), ``price-estimation`` (not served here).
* The official SDK ``ionet-cloud`` (``iocloud/types.py``, ``DeployRequest``; its backend model is
  ``extra="forbid"``): the deploy body is exactly ``resource_private_name``, ``hardware_id``,
  ``duration_hours`` (1..8760), ``gpus_per_container``, ``location_ids`` (one), ``container_config``
  (``replica_count``, ``traffic_port``, ``env_variables``, ``secret_env_variables``, ``entrypoint``,
  ``args``) and ``registry_config`` (``image_url``, ``registry_username``, ``registry_secret``); an unknown
  field anywhere is a 422 ``extra_forbidden``. Deployment statuses: ``deployment requested``,
  ``deploying``, ``running``, ``completed``, ``failed``, ``termination requested``, ``terminated``,
  ``destroyed``. A container's ``public_url`` "stays None until the network stack's own health check passes
  - always poll it". Business errors are ``{"status": "failed", "error": "<detail>"}``; a missing or wrong
  key is 401 ``{"detail": "..."}``.
* Clients of the same API (tokenrouter's Go client and its wire test): ``GET .../available-replicas
  ?hardware_id=&hardware_qty=`` answers ``{"data": [{"id", "iso2", "name", "available_replicas"}]}`` (the
  location ids a deploy takes); a container is ``{"device_id", "container_id", "hardware", "brand_name",
  "created_at", "uptime_percent", "gpus_per_container", "status", "container_events", "public_url"}``
  (``https://...``), listed as ``{"data": {"total", "workers": [...]}}``.
* ``GET .../caas/hardware`` is not in the reference pages read: its rows are taken to be the VMaaS
  hardware list's (io.net/docs/reference/vmaas/get-hardware: ``id``, ``name``, ``num_cards``,
  ``vram_per_card`` GB, ``price`` USD/hour for the whole configuration, ``location`` ISO code,
  ``sold_out``, ...) with CaaS's integer ``hardware_id`` and, as the public ``/v1/io-cloud/caas/hardware``
  shows, ``brand_name`` and ``available_replicas``. Unverified against a live account.

Serve ``ionet_app(IoNetState(...))`` with ``tests.conftest.serve``. Knobs on the state: ``hardware``,
``api_key``, ``throttle_next`` (that many 429s, with ``Retry-After: retry_after`` when set), ``fail_next``
(that many 500s), ``deploy_failures`` (statuses the next valid deploys answer instead of deploying),
``stale`` (row ids that still show free replicas but whose deploy is refused as sold out),
``polls_until_running`` (status reads that still answer ``deploying``), ``url_after_checks`` (container
reads of a running deployment before its ``public_url`` appears), ``public_url`` (every container's URL;
default ``https://<id>.caas.ionet.test``). ``requests`` logs every (method, path); ``deployments`` holds what
was deployed, by id (set ``status`` on one to force its status).
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

API = "/enterprise/v1/io-cloud/caas"
MAX_DURATION_HOURS = 8760
DEPLOY_FIELDS = frozenset(
    {
        "resource_private_name",
        "hardware_id",
        "duration_hours",
        "gpus_per_container",
        "location_ids",
        "container_config",
        "registry_config",
    }
)
CONTAINER_FIELDS = frozenset(
    {"replica_count", "traffic_port", "env_variables", "secret_env_variables", "entrypoint", "args"}
)
REGISTRY_FIELDS = frozenset({"image_url", "registry_username", "registry_secret"})
LOCATIONS: dict[str, tuple[int, str]] = {
    "US": (1, "United States"),
    "DE": (2, "Germany"),
    "FI": (3, "Finland"),
    "SG": (4, "Singapore"),
    "CA": (5, "Canada"),
    "GB": (6, "United Kingdom"),
    "JP": (7, "Japan"),
    "AU": (8, "Australia"),
    "NL": (9, "Netherlands"),
    "FR": (10, "France"),
}


def sample_hardware() -> list[dict[str, Any]]:
    """A few rows: two RTX 4090 sizes, a B200 and an H100 configuration, a sold-out A100 and a CPU-only row
    the client must skip."""
    return [
        _row("12__1", 12, "GeForce RTX 4090", 1, "internal", 0.3, 24, 500, 39, 125, "US"),
        _row("12__2", 12, "GeForce RTX 4090", 2, "internal", 0.6, 24, 1000, 39, 125, "US"),
        _row("B200_sxm6x8__US", 401, "B200", 8, "external", 39.92, 192, 22528, 208, 2900, "US"),
        _row(
            "8H100.80S.176V__FI",
            402,
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
        _row("1CPU__US", 900, "", 0, "external", 0.1, 0, None, None, None, "US"),
    ]


def _row(
    row_id: str,
    hardware_id: int,
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
        "hardware_id": hardware_id,
        "name": name,
        "brand_name": "NVIDIA" if name else "",
        "num_cards": num_cards,
        "supplier": supplier,
        "sold_out": sold_out,
        "available_replicas": 0 if sold_out else 3,
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
_ROW_LOCATIONS = ("US", "US", "US", "DE", "SG", "CA", "FI", "GB", "JP", "AU", "NL", "FR")


def make_hardware(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` realistic rows with unique ids: internal rows ``"<hardware_id>__<cards>"``, external rows
    ``"<cards><model>.<vcpu>V__<location>"``; whole-configuration prices; about one in ten sold out."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(rows) < n:
        name, code, vram, low, high, interconnect = rng.choice(_MODELS)
        cards = rng.choice((1, 1, 2, 4, 8) if vram < 80 else (1, 2, 4, 8, 8))
        location = rng.choice(_ROW_LOCATIONS)
        vcpu = cards * rng.choice((8, 12, 16, 22))
        external = rng.random() < 0.3
        row_id = f"{cards}{code}.{vcpu}V__{location}" if external else f"{100 + len(rows)}__{cards}"
        if row_id in seen:
            continue
        seen.add(row_id)
        rows.append(
            _row(
                row_id,
                100 + len(rows),
                name,
                cards,
                "external" if external else "internal",
                round(cards * rng.uniform(low, high), 6),
                vram,
                cards * rng.choice((250, 500, 1000)),
                vcpu,
                cards * rng.choice((32, 48, 64, 125, 185)),
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
    created_at: str
    polls: int = 0
    checks: int = 0  # container reads while running (io.net's own health checks, as far as we can tell)
    status: str | None = None  # set to force the deployment's status ("failed", "destroyed", ...)


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
    url_after_checks: int = 0
    public_url: str | None = None
    deployments: dict[str, FakeDeployment] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)


def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _failed(detail: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"status": "failed", "error": detail}, status_code=status)


def _invalid(errors: list[dict[str, Any]]) -> JSONResponse:
    return _error(422, errors)


def _issue(kind: str, loc: Sequence[str | int], msg: str, value: Any, **ctx: Any) -> dict[str, Any]:
    issue: dict[str, Any] = {"type": kind, "loc": list(loc), "msg": msg, "input": value}
    if ctx:
        issue["ctx"] = ctx
    return issue


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_issues(value: Any, loc: list[str | int], low: int, high: int | None) -> list[dict[str, Any]]:
    if not _is_int(value):
        return [_issue("int_type", loc, "Input should be a valid integer", value)]
    if value < low:
        msg = f"Input should be greater than or equal to {low}"
        return [_issue("greater_than_equal", loc, msg, value, ge=low)]
    if high is not None and value > high:
        return [
            _issue("less_than_equal", loc, f"Input should be less than or equal to {high}", value, le=high)
        ]
    return []


def _object_issues(
    value: Any, loc: list[str | int], allowed: frozenset[str], required: Sequence[str]
) -> list[dict[str, Any]]:
    """A pydantic model with ``extra="forbid"``: a dict, no unknown keys, the required ones present."""
    if not isinstance(value, dict):
        return [_issue("model_attributes_type", loc, "Input should be a valid dictionary", value)]
    issues = [
        _issue("extra_forbidden", [*loc, k], "Extra inputs are not permitted", v)
        for k, v in value.items()
        if k not in allowed
    ]
    return issues + [
        _issue("missing", [*loc, k], "Field required", value) for k in required if k not in value
    ]


def _strings_issues(value: Any, loc: list[str | int], mapping: bool) -> list[dict[str, Any]]:
    if value is None:
        return []
    if mapping:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return [_issue("dict_type", loc, "Input should be a valid dictionary of strings", value)]
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return [_issue("list_type", loc, "Input should be a valid list of strings", value)]
    return []


def _validate_deploy(body: Any) -> list[dict[str, Any]]:
    """The checks of ``DeployRequest`` and its nested models, every one ``extra="forbid"``."""
    required = ("resource_private_name", "hardware_id", "duration_hours", "gpus_per_container")
    issues = _object_issues(body, ["body"], DEPLOY_FIELDS, (*required, "container_config", "registry_config"))
    if not isinstance(body, dict):
        return issues
    if "resource_private_name" in body and not isinstance(body["resource_private_name"], str):
        value = body["resource_private_name"]
        issues.append(
            _issue("string_type", ["body", "resource_private_name"], "Input should be a valid string", value)
        )
    if "hardware_id" in body:
        issues += _int_issues(body["hardware_id"], ["body", "hardware_id"], 1, None)
    if "duration_hours" in body:
        issues += _int_issues(body["duration_hours"], ["body", "duration_hours"], 1, MAX_DURATION_HOURS)
    if "gpus_per_container" in body:
        issues += _int_issues(body["gpus_per_container"], ["body", "gpus_per_container"], 1, None)
    locations = body.get("location_ids")
    if locations is not None and (
        not isinstance(locations, list) or len(locations) != 1 or not all(_is_int(i) for i in locations)
    ):
        issues.append(
            _issue("too_long", ["body", "location_ids"], "List should have exactly 1 integer", locations)
        )
    if "container_config" in body:
        config = body["container_config"]
        loc: list[str | int] = ["body", "container_config"]
        issues += _object_issues(config, loc, CONTAINER_FIELDS, ("replica_count", "traffic_port"))
        if isinstance(config, dict):
            if "replica_count" in config:
                issues += _int_issues(config["replica_count"], [*loc, "replica_count"], 1, None)
            if "traffic_port" in config:
                issues += _int_issues(config["traffic_port"], [*loc, "traffic_port"], 1, 65535)
            for name in ("env_variables", "secret_env_variables"):
                issues += _strings_issues(config.get(name), [*loc, name], mapping=True)
            for name in ("entrypoint", "args"):
                issues += _strings_issues(config.get(name), [*loc, name], mapping=False)
    if "registry_config" in body:
        registry = body["registry_config"]
        loc = ["body", "registry_config"]
        issues += _object_issues(registry, loc, REGISTRY_FIELDS, ("image_url",))
        if isinstance(registry, dict):
            for name in REGISTRY_FIELDS:
                value = registry.get(name)
                if value is not None and not isinstance(value, str):
                    issues.append(
                        _issue("string_type", [*loc, name], "Input should be a valid string", value)
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
            return _error(401, "Invalid API key")
        if state.fail_next > 0:
            state.fail_next -= 1
            return _error(500, "Internal Server Error")
        return None

    def status_of(dep: FakeDeployment) -> str:
        if dep.status is not None:
            return dep.status
        return "deploying" if dep.polls <= state.polls_until_running else "running"

    async def hardware(request: Request) -> JSONResponse:
        if refused := gate(request):
            return refused
        return JSONResponse({"data": {"hardware": state.hardware}})

    async def available_replicas(request: Request) -> JSONResponse:
        if refused := gate(request):
            return refused
        issues = []
        wanted: dict[str, int] = {}
        for name in ("hardware_id", "hardware_qty"):
            text = request.query_params.get(name)
            if text is None:
                issues.append(_issue("missing", ["query", name], "Field required", None))
            elif not text.isdigit():
                issues.append(_issue("int_parsing", ["query", name], "Input should be a valid integer", text))
            else:
                wanted[name] = int(text)
        if issues:
            return _invalid(issues)
        places = []
        for row in state.hardware:
            if row["hardware_id"] != wanted["hardware_id"] or row["num_cards"] != wanted["hardware_qty"]:
                continue
            location_id, name = LOCATIONS.get(str(row["location"]), (0, ""))
            if location_id:
                free = 0 if row["sold_out"] else row["available_replicas"]
                places.append(
                    {"id": location_id, "iso2": row["location"], "name": name, "available_replicas": free}
                )
        return JSONResponse({"data": places})

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
            status = state.deploy_failures.pop(0)
            if status >= 500:
                return _error(status, "Internal Server Error")
            return _failed("Upstream scheduler error", status)
        location_id = body["location_ids"][0] if body.get("location_ids") else None
        row = next(
            (
                r
                for r in state.hardware
                if r["hardware_id"] == body["hardware_id"]
                and r["num_cards"] == body["gpus_per_container"]
                and (location_id is None or LOCATIONS.get(str(r["location"]), (0,))[0] == location_id)
            ),
            None,
        )
        if row is None:
            return _failed("No hardware matches this hardware_id, gpus_per_container and location")
        replicas = body["container_config"]["replica_count"]
        if row["sold_out"] or row["id"] in state.stale or row["available_replicas"] < replicas:
            return _failed(f"Not enough available hardware: {row['name']} x{row['num_cards']} is sold out")
        deployment_id = str(uuid.uuid4())
        created = datetime.now(UTC).isoformat()
        state.deployments[deployment_id] = FakeDeployment(deployment_id, row, body, created)
        return JSONResponse({"status": "deployment requested", "deployment_id": deployment_id})

    def found(request: Request) -> FakeDeployment | JSONResponse:
        if refused := gate(request):
            return refused
        deployment_id = request.path_params["deployment_id"]
        if bad := _valid_uuid(deployment_id):
            return bad
        dep = state.deployments.get(deployment_id)
        return _error(404, "Deployment not found") if dep is None else dep

    async def details(request: Request) -> JSONResponse:
        dep = found(request)
        if isinstance(dep, JSONResponse):
            return dep
        dep.polls += 1
        status = status_of(dep)
        config = dep.body["container_config"]
        location_id, name = LOCATIONS.get(str(dep.row["location"]), (0, ""))
        return JSONResponse(
            {
                "data": {
                    "id": dep.id,
                    "status": status,
                    "created_at": dep.created_at,
                    "started_at": dep.created_at if status == "running" else None,
                    "finished_at": None,
                    "amount_paid": round(dep.row["price"] * dep.body["duration_hours"], 6),
                    "completed_percent": 0.0,
                    "total_gpus": dep.body["gpus_per_container"] * config["replica_count"],
                    "gpus_per_container": dep.body["gpus_per_container"],
                    "total_containers": config["replica_count"],
                    "hardware_name": dep.row["name"],
                    "hardware_id": dep.row["hardware_id"],
                    "locations": [{"id": location_id, "iso2": dep.row["location"], "name": name}],
                    "brand_name": dep.row["brand_name"],
                    "compute_minutes_served": 0,
                    "compute_minutes_remaining": dep.body["duration_hours"] * 60,
                    "container_config": {
                        "entrypoint": config.get("entrypoint"),
                        "env_variables": config.get("env_variables"),
                        "traffic_port": config["traffic_port"],
                        "image_url": dep.body["registry_config"]["image_url"],
                        "secret_env_keys": sorted(config.get("secret_env_variables") or {}),
                    },
                }
            }
        )

    async def containers(request: Request) -> JSONResponse:
        dep = found(request)
        if isinstance(dep, JSONResponse):
            return dep
        status = status_of(dep)
        url = None
        if status == "running":
            dep.checks += 1
            if dep.checks > state.url_after_checks:
                url = state.public_url or f"https://{dep.id}.caas.ionet.test"
        worker = {
            "device_id": str(uuid.uuid5(uuid.NAMESPACE_URL, dep.id)),
            "container_id": f"ctr-{dep.id[:8]}",
            "hardware": dep.row["name"],
            "brand_name": dep.row["brand_name"],
            "created_at": dep.created_at,
            "uptime_percent": 100.0 if status == "running" else 0.0,
            "gpus_per_container": dep.body["gpus_per_container"],
            "status": status,
            "container_events": [{"time": dep.created_at, "message": "Container deployment requested"}],
            "public_url": url,
        }
        return JSONResponse({"data": {"total": 1, "workers": [worker]}})

    async def destroy(request: Request) -> JSONResponse:
        dep = found(request)
        if isinstance(dep, JSONResponse):
            return dep
        del state.deployments[dep.id]
        return JSONResponse({"status": "termination requested", "deployment_id": dep.id})

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, exc.detail)

    return Starlette(
        exception_handlers={HTTPException: http_error},
        routes=[
            Route(f"{API}/hardware", hardware, methods=["GET"]),
            Route(f"{API}/available-replicas", available_replicas, methods=["GET"]),
            Route(f"{API}/deploy", deploy, methods=["POST"]),
            Route(f"{API}/deployment/{{deployment_id}}", details, methods=["GET"]),
            Route(f"{API}/deployment/{{deployment_id}}/containers", containers, methods=["GET"]),
            Route(f"{API}/deployment/{{deployment_id}}", destroy, methods=["DELETE"]),
        ],
    )
