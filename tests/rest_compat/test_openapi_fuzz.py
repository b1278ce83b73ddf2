"""The REST API against its own OpenAPI document: schemathesis fuzzes every operation of a served app (no
5xx, every answer as documented, invalid input refused, valid input accepted), and the findings that
started it stay fixed."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
import uvicorn
from sqlalchemy.engine import make_url
from starlette.applications import Starlette

from aiserve_mcp.app import create_app
from aiserve_mcp.bootstrap import Services
from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.core.principal import SCOPES
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.money.guardrails import MAX_WINDOW_S, window_seconds
from aiserve_mcp.rest_compat.openapi import openapi_document
from aiserve_mcp.rest_compat.routes import ROUTES
from aiserve_mcp.tools import REGISTRY
from aiserve_mcp.tools.guardrails import MAX_DURATION_COUNT, UNIT_SECONDS, WINDOW_PATTERN
from aiserve_mcp.tools.inference_v2 import DATATYPES
from aiserve_mcp.traffic.balancer import STRATEGIES
from tests.conftest import PASSWORD, PG_ADMIN_URL, REDIS_URL, Account, _asyncpg_dsn, free_port
from tests.serving.test_models import mlp_bytes

EXAMPLES_PER_OPERATION = 15
SEED = 20260113  # with deterministic generation: the same requests on every run
# Left out of the fuzzing, each for a reason of its own:
EXCLUDED = {
    # It could revoke the very API key the run is made with (key ids are in list_api_keys' answers).
    "revoke_api_key",
    # Every event must carry a Stripe signature made with the webhook secret: fuzzed bodies are all refused.
    "payment_webhook",
}
# Answers to well-formed input: schemathesis' default (5xx are not_a_server_error's to judge) and 402, as
# spending guardrails and declined cards refuse well-formed requests.
ACCEPTED = ["2xx", "3xx", "401", "402", "403", "404", "409", "429", "5xx"]
# Well-formed input these operations refuse (400) for reasons no schema can state:
REFUSED_WHEN_WELL_FORMED = [
    "create_api_key",  # expires_at must lie in the future
    "create_payment",  # the gateway named must be this server's, the card a test card of the sandbox
    "reset_spending",  # the window must be one of the caller's
    "upload_model",  # the file's bytes must be a model (of the declared format, if one is)
    "configure_model",  # replicas up to this server's AISERVE_MODEL_MAX_REPLICAS (the document: any server's)
    "predict",  # inputs must match the model's signature: names, dtypes and shapes
    "v2_infer",  # tensors must match the model's signature and fill their shapes
    "rent_gpu_instance",  # a prepaid provider (io.net) cannot auto-renew
    "get_approval_policy",  # api_key_id or client_id, not both
    "set_approval_policy",  # the same, and a threshold with mode 'above' only
    "set_approval_webhook",  # an https URL (http for allowed hosts) whose host is at a public address
]
NO_SERVER_ERROR = ["2xx", "3xx", "4xx"]
# Documented 503s this run meets by design (no marketplace is configured, models load in the background):
UNAVAILABLE_BY_DESIGN = [
    "rent_gpu_instance",  # vast.ai and io.net are not configured
    "predict",  # the model is still loading
    "v2_infer",
    "v2_model_ready",  # the model is not ready (answered with its readiness body)
    "proxy_request",  # no instance of the caller is running
]


@dataclass(frozen=True)
class Target:
    url: str
    document: dict[str, Any]
    api_key: str


@contextmanager
def served_in_thread(app: Starlette) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """Serve ``app`` with uvicorn on a loopback port from a thread of its own, as schemathesis calls it
    synchronously; yields the base URL and the server's event loop."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}", loop
    finally:
        server.should_exit = True
        thread.join(30)
        loop.close()


def signed_in_admin(http: httpx.Client, app: Starlette, loop: asyncio.AbstractEventLoop) -> dict[str, str]:
    """A new account, made an administrator (so admin routes run to their end); its login headers."""
    email = "fuzz@example.com"
    registered = http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    services: Services = app.state.services
    asyncio.run_coroutine_threadsafe(services.accounts.set_admin(email, True), loop).result(10)
    login = http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['tokens']['access_token']}"}


def ready_model(http: httpx.Client, headers: dict[str, str]) -> None:
    """Upload a small ONNX model and wait until it serves, so model routes have one to find."""
    uploaded = http.post(
        "/api/v1/models/upload",
        files={"model": ("mlp.onnx", mlp_bytes())},
        data={"name": "mlp"},
        headers=headers,
    )
    assert uploaded.status_code == 201, uploaded.text
    for _ in range(300):
        status = http.get(f"/api/v1/models/{uploaded.json()['model_id']}", headers=headers).json()["status"]
        if status != "loading":
            assert status == "ready"
            return
        time.sleep(0.05)
    raise AssertionError("the model never loaded")


async def _on_postgres(statement: str) -> None:
    assert PG_ADMIN_URL is not None
    connection = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def fuzz_database(data_dir: Path) -> Iterator[str]:
    """SQLite in ``data_dir``, or a database of its own on PostgreSQL when the suite runs there."""
    if PG_ADMIN_URL is None:
        yield f"sqlite+aiosqlite:///{data_dir / 'fuzz.db'}"
        return
    name = f"aiserve_fuzz_{uuid.uuid4().hex[:12]}"
    asyncio.run(_on_postgres(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_on_postgres(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The app served with what makes a fuzz run meaningful: payments through the sandbox gateway, rate
    limits too high to hide answers behind 429, no CPU slots to rent (renting one starts a worker
    process), and a signed-in administrator's API key with a ready model. One server for the module: each
    operation is a test of its own."""
    data_dir = tmp_path_factory.mktemp("fuzz")
    with fuzz_database(data_dir) as database_url:
        settings = Settings(
            data_dir=data_dir,
            database_url=database_url,
            redis_url=REDIS_URL,
            redis_prefix=f"aiserve-test:{uuid.uuid4().hex[:8]}:",
            log_level="WARNING",
            billing_sandbox=True,
            stripe_api_key=None,  # nothing leaves this machine, whatever the environment holds
            vastai_api_key=None,
            ionet_api_key=None,
            rate_limit=1_000_000,
            auth_rate_limit=1_000_000,
            local_cpu_slots=0,
            model_threads=1,
        )
        app = create_app(settings)
        with served_in_thread(app) as (url, loop), httpx.Client(base_url=url, timeout=30) as http:
            headers = signed_in_admin(http, app, loop)
            ready_model(http, headers)
            key = http.post("/api/v1/auth/apikey", json={"name": "fuzz"}, headers=headers)
            assert key.status_code == 201, key.text
            yield Target(url, http.get("/openapi.json").json(), key.json()["api_key"])


def per_operation(names: list[str], check: str, statuses: list[str]) -> dict[str, Any]:
    return {"include-operation-id": names, "checks": {check: {"expected-statuses": statuses}}}


CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {
            "max-examples": EXAMPLES_PER_OPERATION,
            "deterministic": True,
            "with-security-parameters": False,  # every request carries the run's API key
            "database": "none",
        },
        "phases": {"stateful": {"enabled": False}},
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ACCEPTED},
            "not_a_server_error": {"expected-statuses": NO_SERVER_ERROR},
        },
        "operations": [
            per_operation(REFUSED_WHEN_WELL_FORMED, "positive_data_acceptance", [*ACCEPTED, "400"]),
            per_operation(UNAVAILABLE_BY_DESIGN, "not_a_server_error", [*NO_SERVER_ERROR, "503"]),
        ],
    }
)
# The document the server serves (test_the_served_document_is_the_one_fuzzed checks they are equal).
DOCUMENT = json.loads(json.dumps(openapi_document(REGISTRY)))
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).exclude(operation_id=sorted(EXCLUDED))


def test_the_served_document_is_the_one_fuzzed(target: Target) -> None:
    assert target.document == DOCUMENT


@SCHEMA.parametrize()
def test_every_operation_keeps_its_document(case: schemathesis.Case[Any], target: Target) -> None:
    case.call_and_validate(base_url=target.url, headers={"Authorization": f"Bearer {target.api_key}"})


# The findings that started the fuzzing, each pinned.

BEYOND_BIGINT = 2**63  # 9223372036854775808: the driver could not even send it to PostgreSQL


@pytest.mark.parametrize("path", ["/api/v1/billing/transactions", "/api/v1/admin/users"])
async def test_offsets_the_storage_cannot_hold_are_refused(
    path: str, client: httpx.AsyncClient, app: Starlette, account: Account
) -> None:
    await app.state.services.accounts.set_admin(account.email, True)
    refused = await client.get(f"{path}?offset={BEYOND_BIGINT}", headers=account.headers)
    assert refused.status_code == 400 and refused.json()["code"] == "VALIDATION_ERROR", refused.text
    assert refused.json()["details"]["fields"][0]["field"] == "offset"
    largest = await client.get(f"{path}?offset={2**31 - 1}&limit=1", headers=account.headers)
    assert largest.status_code == 200, largest.text


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/api/v1/gpu/preferences", {"min_vram": False}, "min_vram"),
        ("POST", "/api/v1/gpu/preferences/test", {"alternatives": False}, "alternatives"),
        ("POST", "/api/v1/gpu/instances/batch", {"config": {"auto_renew": 0}}, "config.auto_renew"),
        (
            "POST",
            "/api/v1/gpu/instances/reserve",
            {"count": 1, "config": {"auto_renew": 0}},
            "config.auto_renew",
        ),
        ("POST", "/api/v1/gpu/instances/reserve", {"count": "2"}, "count"),
        ("PATCH", "/api/v1/models/any-model", {"gpu_required": 0}, "gpu_required"),
        ("PATCH", "/api/v1/models/any-model", {"replicas": True}, "replicas"),
        ("POST", "/api/v1/guardrails/spending/check", {"estimated_cost": "5"}, "estimated_cost"),
        ("POST", "/api/v1/guardrails/spending/record", {"amount": True}, "amount"),
    ],
)
async def test_wrong_types_are_refused_not_converted(
    method: str, path: str, body: dict[str, Any], field: str, client: httpx.AsyncClient, account: Account
) -> None:
    refused = await client.request(method, path, json=body, headers=account.headers)
    assert refused.status_code == 400 and refused.json()["code"] == "VALIDATION_ERROR", refused.text
    assert refused.json()["details"]["fields"][0]["field"] == field


async def test_query_strings_and_json_numbers_still_parse(
    client: httpx.AsyncClient, account: Account
) -> None:
    for query in (
        "/api/v1/billing/transactions?limit=5&offset=0",
        "/api/v1/gpu/contracts?active=false",
        "/api/v1/gpu/available?vendor=amd&min_vram=128",
        "/api/v1/gpu/instances?min_vram=24&max_price=2.5&limit=3",
    ):
        answer = await client.get(query, headers=account.headers)
        assert answer.status_code == 200, (query, answer.text)
    assert (await client.get("/api/v1/gpu/contracts?active=0", headers=account.headers)).status_code == 400
    assert (
        await client.get("/api/v1/billing/transactions?limit=1.5", headers=account.headers)
    ).status_code == 400
    for cost in (5, 25.5, 1.0):
        checked = await client.post(
            "/api/v1/guardrails/spending/check", json={"estimated_cost": cost}, headers=account.headers
        )
        assert checked.status_code == 200 and checked.json()["allowed"] is True, checked.text


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = DOCUMENT["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def test_path_parameters_are_not_body_fields_and_bodies_are_required_only_when_they_must_be() -> None:
    for route in ROUTES:
        operation = DOCUMENT["paths"][route.path][route.method.lower()]
        in_path = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
        assert in_path == set(re.findall(r"{(\w+)}", route.path)), route
        if "requestBody" not in operation:
            continue
        body = resolve(operation["requestBody"]["content"]["application/json"]["schema"])
        assert not in_path & set(body.get("properties", {})), route
        # Required when a body field is, or when the route exists to set something (an empty body
        # would otherwise apply every default silently).
        required = bool(body.get("required")) or route.body_required
        assert operation["requestBody"]["required"] == required, route
    configure = DOCUMENT["paths"]["/api/v1/models/{model_id}"]["patch"]
    rent = DOCUMENT["paths"]["/api/v1/gpu/instances/{provider}/{instance_id}"]["post"]
    assert configure["requestBody"]["required"] is True and rent["requestBody"]["required"] is True
    test = DOCUMENT["paths"]["/api/v1/gpu/preferences/test"]["post"]  # the API reference sends no body
    assert test["requestBody"]["required"] is False
    payment = DOCUMENT["paths"]["/api/v1/billing/payment"]["post"]
    headers = {p["name"] for p in payment["parameters"] if p["in"] == "header"}
    assert headers == {"X-Billing", "X-Preferred-Payment", "Idempotency-Key"}
    body = resolve(payment["requestBody"]["content"]["application/json"]["schema"])
    assert not {"billing_provider", "preferred_payment", "idempotency_key"} & set(body["properties"])


def test_the_upload_body_is_one_satisfiable_object() -> None:
    form = DOCUMENT["paths"]["/api/v1/models/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]
    schema = form["schema"]
    assert "allOf" not in schema and schema["type"] == "object" and schema["required"] == ["model"]
    assert schema["properties"]["model"] == {
        "type": "string",
        "format": "binary",
        "description": "The model file.",
    }
    assert {"name", "format", "version", "gpu_required", "replicas"} <= set(schema["properties"])
    assert all("null" not in json.dumps(p) for p in schema["properties"].values())


def test_fixed_sets_patterns_and_formats_are_in_the_document() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    rent = DOCUMENT["paths"]["/api/v1/gpu/instances/{provider}/{instance_id}"]["post"]
    assert rent["parameters"][0]["schema"]["enum"] == ["vastai", "ionet", "local"]
    assert set(schemas["InferTensor"]["properties"]["datatype"]["enum"]) == set(DATATYPES)
    assert schemas["SetStrategyInput"]["properties"]["strategy"]["enum"] == list(STRATEGIES)
    assert schemas["RegisterInput"]["properties"]["email"]["format"] == "email"
    assert schemas["ResetInput"]["properties"]["window_name"]["anyOf"][0]["pattern"] == WINDOW_PATTERN
    limits = schemas["SetLimitsInput"]["properties"]["limits"]
    assert list(limits["patternProperties"]) == [WINDOW_PATTERN] and limits["additionalProperties"] is False
    amount = {"type": "number", "exclusiveMinimum": 0, "maximum": 100_000, "multipleOf": 0.01}
    assert amount.items() <= schemas["PaymentInput"]["properties"]["amount"].items()
    scopes = schemas["CreateApiKeyInput"]["properties"]["scopes"]["anyOf"][0]["items"]
    assert scopes["enum"] == sorted(SCOPES)
    transactions = DOCUMENT["paths"]["/api/v1/billing/transactions"]["get"]["parameters"]
    offset = next(p for p in transactions if p["name"] == "offset")
    assert offset["in"] == "query" and offset["schema"]["maximum"] == 2**31 - 1


def test_answers_are_documented_as_they_are_sent() -> None:
    proxy = DOCUMENT["paths"]["/api/v1/gpu/proxy"]["post"]["responses"]
    assert {proxy[s]["content"] == {"*/*": {}} for s in ("2XX", "3XX", "4XX", "5XX")} == {True}
    unhealthy = DOCUMENT["paths"]["/health"]["get"]["responses"]["503"]["content"]["application/json"]
    assert {"$ref": "#/components/schemas/HealthOutput"} in unhealthy["schema"]["anyOf"]
    payment = DOCUMENT["paths"]["/api/v1/billing/payment"]["post"]["responses"]
    assert {"201", "400", "401", "402", "403", "409", "413", "429", "500", "503", "default"} <= set(payment)
    examples = DOCUMENT["paths"]["/api/v1/gpu/examples"]["get"]["responses"]
    assert "403" not in examples and "400" not in examples and {"401", "429"} <= set(examples)


def test_window_names_in_the_document_are_the_ones_the_server_accepts() -> None:
    accepts = re.compile(WINDOW_PATTERN)
    for unit, seconds in UNIT_SECONDS.items():
        longest = min(MAX_DURATION_COUNT, MAX_WINDOW_S // seconds)
        for count in (1, 9, 10, longest // 2, longest - 1, longest):
            assert accepts.match(f"{count}{unit}") and window_seconds(f"{count}{unit}")
        too_long = f"{longest + 1}{unit}"
        assert not accepts.match(too_long)
        with pytest.raises(ValidationFailed):
            window_seconds(too_long)
    for name in ("hourly", "monthly"):
        assert accepts.match(name) and window_seconds(name)
    for name in ("0m", "05m", "1y", "*", "hourly ", "5M"):
        assert not accepts.match(name)
        with pytest.raises(ValidationFailed):
            window_seconds(name)
