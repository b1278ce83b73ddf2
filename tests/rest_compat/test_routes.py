"""The REST route table against the API reference: every documented route is served."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute

from aiserve_mcp.rest_compat.routes import ROUTES
from aiserve_mcp.tools import REGISTRY
from tests.conftest import Account

SPEC = Path(__file__).resolve().parents[2] / "docs" / "api-reference.md"
SPEC_ROUTE = re.compile(r"```http\n(GET|POST|PUT|DELETE|PATCH) (\S+)")


def spec_routes() -> set[tuple[str, str]]:
    text = SPEC.read_text()
    routes = set()
    for method, path in SPEC_ROUTE.findall(text):
        path = path.split("?")[0]
        routes.add((method, re.sub(r"{\w+}", "{}", path)))
    return routes


def normalise(path: str) -> str:
    return re.sub(r"{\w+}", "{}", path)


@pytest.fixture(scope="module")
def documented() -> set[tuple[str, str]]:
    routes = spec_routes()
    assert len(routes) >= 40, routes
    return routes


def app_routes(app: Starlette) -> set[tuple[str, str]]:
    served = set()
    for route in app.routes:
        if isinstance(route, Route):
            for method in route.methods or ():
                served.add((method, normalise(route.path)))
        elif isinstance(route, WebSocketRoute):  # the handshake is a GET
            served.add(("GET", normalise(route.path)))
    return served


def test_every_documented_route_is_in_the_table_or_the_protocol_layer(
    documented: set[tuple[str, str]], app: Starlette
) -> None:
    table = {(r.method, normalise(r.path)) for r in ROUTES}
    protocol = {
        ("POST", "/api/v1/mcp"),
        ("GET", "/api/v1/mcp/sse"),
        ("GET", "/metrics"),
        ("POST", "/api/v1/models/upload"),
        ("GET", "/ws"),
        ("POST", "/api/v1/agent"),
    }
    missing = documented - table - protocol
    assert not missing, f"spec routes with no entry: {sorted(missing)}"
    assert not (documented - app_routes(app)), sorted(documented - app_routes(app))


def test_table_names_registered_tools_once() -> None:
    for route in ROUTES:
        REGISTRY.get(route.tool)
    keys = [(r.method, r.path) for r in ROUTES]
    assert len(keys) == len(set(keys))


def test_every_tool_has_a_description_and_models() -> None:
    assert len(REGISTRY) >= 10
    for tool in REGISTRY:
        assert len(tool.description) > 20, tool.name
        assert tool.input_model.model_json_schema()["type"] == "object"


async def test_openapi_describes_every_route(client: httpx.AsyncClient, app: Starlette) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    described = {(m.upper(), normalise(p)) for p, ops in document["paths"].items() for m in ops}
    table = {(r.method, normalise(r.path)) for r in ROUTES}
    assert table <= described
    login = document["paths"]["/api/v1/auth/login"]["post"]
    assert login["operationId"] == "auth_login"
    ref = login["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.split("/")[-1] in document["components"]["schemas"]
    assert not [r for r in app.routes if isinstance(r, Mount) and r.path == ""]


async def test_a_wrong_method_lists_the_methods_the_path_takes(client: httpx.AsyncClient) -> None:
    refused = await client.patch("/api/v1/gpu/preferences", json={})
    assert refused.status_code == 405 and refused.json()["code"] == "METHOD_NOT_ALLOWED"
    assert set(refused.headers["Allow"].split(", ")) >= {"GET", "POST"}


async def test_an_empty_body_is_refused_where_the_route_needs_one(
    client: httpx.AsyncClient, account: Account
) -> None:
    for body in (b"", b"\r\n "):
        refused = await client.post("/api/v1/gpu/preferences", content=body, headers=account.headers)
        assert refused.status_code == 400 and refused.json()["code"] == "VALIDATION_ERROR"
        assert "needs a JSON object body" in refused.json()["error"]
    assert (await client.post("/api/v1/auth/login", content=b"")).status_code == 400
    # {} is an explicit "every default"; a route whose body the API reference leaves out takes none.
    assert (await client.post("/api/v1/gpu/preferences", json={}, headers=account.headers)).status_code == 200
    tested = await client.post("/api/v1/gpu/preferences/test", headers=account.headers)
    assert tested.status_code == 200, tested.text
