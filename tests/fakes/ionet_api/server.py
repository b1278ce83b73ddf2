"""The fake's HTTP face: the routes under ``API``, their authentication and what each answers.

* io.net's API reference (io.net/docs/reference/caas/*): ``deploy-a-container`` ("Only HTTP server
  containers are supported. Only a single traffic port is allowed. Each container must use a minimum of
  1 GPU"; 200 ``{"status", "deployment_id": "<uuid>"}``), ``get-deployment-details`` (``{"data": {"id",
  "status", "created_at", "started_at", "finished_at", "amount_paid", "completed_percent", "total_gpus",
  "gpus_per_container", "total_containers", "hardware_name", "hardware_id", "locations": [{"id", "iso2",
  "name"}], "brand_name", "compute_minutes_served", "compute_minutes_remaining", "container_config":
  {"entrypoint", "env_variables", "traffic_port", "image_url", "secret_env_keys"}}}``),
  ``destroy-container`` (``DELETE .../deployment/{deployment_id}``), ``price-estimation`` (not served
  here).
* The official SDK ``ionet-cloud`` (``iocloud/types.py``): deployment statuses: ``deployment requested``,
  ``deploying``, ``running``, ``completed``, ``failed``, ``termination requested``, ``terminated``,
  ``destroyed``. A container's ``public_url`` "stays None until the network stack's own health check passes
  - always poll it".
* Clients of the same API (tokenrouter's Go client and its wire test): ``GET .../available-replicas
  ?hardware_id=&hardware_qty=`` answers ``{"data": [{"id", "iso2", "name", "available_replicas"}]}`` (the
  location ids a deploy takes); a container is ``{"device_id", "container_id", "hardware", "brand_name",
  "created_at", "uptime_percent", "gpus_per_container", "status", "container_events", "public_url"}``
  (``https://...``), listed as ``{"data": {"total", "workers": [...]}}``.
* ``GET .../caas/hardware`` answers ``{"data": {"hardware": [row, ...]}}``; its rows, unverified against a
  live account, are described in ``hardware``.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fakes.ionet_api.hardware import LOCATIONS
from tests.fakes.ionet_api.state import FakeDeployment, IoNetState
from tests.fakes.ionet_api.validation import error, failed, invalid, issue, valid_uuid, validate_deploy

API = "/enterprise/v1/io-cloud/caas"


def ionet_app(state: IoNetState) -> Starlette:
    """A Starlette app answering io.net's CaaS routes from ``state``."""

    def gate(request: Request) -> JSONResponse | None:
        state.requests.append((request.method, request.url.path))
        if state.throttle_next > 0:
            state.throttle_next -= 1
            headers = {"Retry-After": str(state.retry_after)} if state.retry_after is not None else None
            return error(429, "Too Many Requests", headers)
        key = request.headers.get("x-api-key")
        if not key:
            return error(401, "Not authenticated")
        if key != state.api_key:
            return error(401, "Invalid API key")
        if state.fail_next > 0:
            state.fail_next -= 1
            return error(500, "Internal Server Error")
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
                issues.append(issue("missing", ["query", name], "Field required", None))
            elif not text.isdigit():
                issues.append(issue("int_parsing", ["query", name], "Input should be a valid integer", text))
            else:
                wanted[name] = int(text)
        if issues:
            return invalid(issues)
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
            return invalid([issue("json_invalid", ["body", 0], "JSON decode error", {})])
        if issues := validate_deploy(body):
            return invalid(issues)
        if state.deploy_failures:
            status = state.deploy_failures.pop(0)
            if status >= 500:
                return error(status, "Internal Server Error")
            return failed("Upstream scheduler error", status)
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
            return failed("No hardware matches this hardware_id, gpus_per_container and location")
        replicas = body["container_config"]["replica_count"]
        if row["sold_out"] or row["id"] in state.stale or row["available_replicas"] < replicas:
            return failed(f"Not enough available hardware: {row['name']} x{row['num_cards']} is sold out")
        deployment_id = str(uuid.uuid4())
        created = datetime.now(UTC).isoformat()
        state.deployments[deployment_id] = FakeDeployment(deployment_id, row, body, created)
        return JSONResponse({"status": "deployment requested", "deployment_id": deployment_id})

    def found(request: Request) -> FakeDeployment | JSONResponse:
        if refused := gate(request):
            return refused
        deployment_id = request.path_params["deployment_id"]
        if bad := valid_uuid(deployment_id):
            return bad
        dep = state.deployments.get(deployment_id)
        return error(404, "Deployment not found") if dep is None else dep

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
        return error(exc.status_code, exc.detail)

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
