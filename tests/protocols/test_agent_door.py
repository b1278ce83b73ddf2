"""``POST /api/v1/agent``: detection, and each protocol through the app. The message formats' parsers and
replies are in test_agent_messages; the calls every surface shares, through the envelope and MCP at the
door, are in test_every_surface."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import pytest
from starlette.datastructures import Headers
from starlette.routing import Route

from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.a2a.card import A2A_PATH
from aiserve_mcp.protocols.agent_door.acp import AcpRun
from aiserve_mcp.protocols.agent_door.door import (
    A2A,
    AGENT_PATH,
    MCP,
    PROTOCOL_HEADER,
    SUPPORTED,
    AgentDoor,
    detect,
)
from aiserve_mcp.protocols.agent_door.envelope import Envelope
from aiserve_mcp.protocols.agent_door.fipa import FipaMessage
from aiserve_mcp.protocols.agent_door.kqml import KqmlMessage
from aiserve_mcp.protocols.agent_door.sexp import Symbol, format_sexp, parse_sexp
from aiserve_mcp.protocols.mcp.http import MCP_PATH
from aiserve_mcp.tools import REGISTRY
from tests.conftest import Account, LiveServer, api_key, app_client, sign_up
from tests.mcp_clients import Transport, mcp_client

PROTOCOLS = {name for name, _ in SUPPORTED}
WHOAMI = {"tool": "whoami", "arguments": {}}
NEGATIVE_PAYMENT = {"amount": -5, "payment_preference": {"type": "card", "card_token": "tok_visa"}}


def detected(body: Any, headers: dict[str, str] | None = None) -> Any:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return detect(Headers(headers or {}), raw)


# Detection


def test_headers_win_over_the_body() -> None:
    envelope = {"protocol": "a2a", "action": "whoami"}
    assert detected(envelope, {"MCP-Protocol-Version": "2025-11-25"}) == MCP
    assert detected(envelope, {"Mcp-Session-Id": "s"}) == MCP
    assert detected(envelope, {"Mcp-Method": "tools/list"}) == MCP
    assert detected(envelope, {"A2A-Version": "1.0"}) == A2A
    assert detected("not even json", {"mcp-protocol-version": "2026-07-28"}) == MCP


@pytest.mark.parametrize(
    ("method", "params", "target"),
    [
        ("initialize", {}, MCP),
        ("server/discover", {}, MCP),
        ("tools/call", {"name": "whoami"}, MCP),
        ("resources/read", {"uri": "x"}, MCP),
        ("prompts/get", {}, MCP),
        ("notifications/initialized", None, MCP),
        ("logging/setLevel", {}, MCP),
        ("tasks/get", {"taskId": "t"}, MCP),
        ("tasks/get", {"id": "t"}, A2A),
        ("tasks/cancel", {"id": "t"}, A2A),
        ("SendMessage", {}, A2A),
        ("GetExtendedAgentCard", {}, A2A),
        ("message/send", {}, A2A),
        ("tasks/pushNotificationConfig/set", {}, A2A),
        ("agent/getAuthenticatedExtendedCard", {}, A2A),
    ],
)
def test_json_rpc_methods(method: str, params: Any, target: Any) -> None:
    assert detected({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}) == target


def test_a_batch_follows_its_first_element() -> None:
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": 2, "method": "GetTask"}]
    assert detected(batch) == MCP
    assert detected(list(reversed(batch))) == A2A


def test_shapes() -> None:
    assert isinstance(
        detected({"protocol": "a2a", "from_agent": "x", "action": "whoami", "data": {}}), Envelope
    )
    acp = {"agent_name": "whoami", "input": [{"role": "user", "parts": [{"content": "{}"}]}]}
    assert isinstance(detected(acp), AcpRun)
    fipa = {"performative": "REQUEST", "sender": "a", "receiver": "b", "content": WHOAMI}
    assert isinstance(fipa_message := detected(fipa), FipaMessage) and fipa_message.performative == "request"
    kqml_json = detected({"performative": "ask-one", "sender": "a", "content": json.dumps(WHOAMI)})
    assert isinstance(kqml_json, KqmlMessage) and not kqml_json.sexp
    kqml_text = detected("  (ask-one :sender a :content (whoami))")
    assert isinstance(kqml_text, KqmlMessage) and kqml_text.sexp
    kqml_in_json = detected(json.dumps("(tell :sender a :content x)"))
    assert isinstance(kqml_in_json, KqmlMessage) and kqml_in_json.performative == "tell"


def test_subscribe_is_fipa_unless_a_kqml_only_parameter_says_otherwise() -> None:
    assert isinstance(detected({"performative": "subscribe", "sender": "a", "receiver": "b"}), FipaMessage)
    kqml = {"performative": "subscribe", "sender": "a", "receiver": "b", "force": "permanent"}
    assert isinstance(detected(kqml), KqmlMessage)
    assert isinstance(detected({"performative": "subscribe", "sender": "a"}), KqmlMessage)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"protocol": ', "neither JSON nor"),
        ({"hello": "world"}, "none of the shapes"),
        ([1, 2], "not an object"),
        ({"jsonrpc": "2.0", "id": 1, "method": "eth_call"}, "neither MCP's nor A2A's"),
        ({"performative": "request", "sender": "a"}, "none of the shapes"),  # FIPA needs a receiver
        ({"performative": "tell", "receiver": "a"}, "none of the shapes"),  # KQML needs a sender
        ("(ask-one :sender a :content (whoami)", "'(' is not closed"),
        ("(ask-one :sender a))", "text after the end"),
        ("(" * 40 + ")" * 40, "deeper than"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("(inform :sender a)", "not a KQML performative"),
        ("(ask-one :receiver a :content x)", "no :sender"),
        ("(ask-one :sender)", "pairs"),
    ],
)
def test_unsupported_bodies_name_every_protocol(body: Any, reason: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        detected(body)
    assert reason in refused.value.details["reason"]
    assert {p["protocol"] for p in refused.value.details["supported"]} == PROTOCOLS
    assert all(name in refused.value.message for name in PROTOCOLS)


# S-expressions


@pytest.fixture
async def door(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Account]]:
    async with app_client(settings.model_copy(update={"billing_sandbox": True})) as (_, client):
        yield client, await sign_up(client)


async def post(client: httpx.AsyncClient, account: Account, body: Any, **headers: str) -> httpx.Response:
    if isinstance(body, str):
        return await client.post(AGENT_PATH, content=body, headers={**account.headers, **headers})
    return await client.post(AGENT_PATH, json=body, headers={**account.headers, **headers})


def protocol_of(response: httpx.Response) -> str | None:
    protocol: str | None = response.headers.get(PROTOCOL_HEADER)
    return protocol


@pytest.mark.parametrize("transport", ["streamable-modern", "streamable-legacy"])
async def test_mcp_sdk_client_through_the_door(live_server: LiveServer, transport: Transport) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        key = await api_key(http, await sign_up(http), scopes=["account:read", "system:read"])
    tagged: list[str | None] = []

    async def record(response: httpx2.Response) -> None:
        tagged.append(response.headers.get(PROTOCOL_HEADER))

    async with mcp_client(
        live_server.url, None, transport, path=AGENT_PATH, headers={"X-API-Key": key}, on_response=record
    ) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"whoami", "system_stats"} <= names and "create_api_key" not in names
    assert tagged and set(tagged) == {"mcp"}


async def test_bare_mcp_post_answers_as_the_mcp_endpoint(door: tuple[httpx.AsyncClient, Account]) -> None:
    client, account = door
    listing = {"jsonrpc": "2.0", "method": "tools/list", "params": {}, "id": 1}
    through_door = await post(client, account, listing)
    direct = await client.post(MCP_PATH, json=listing, headers=account.headers)
    assert through_door.status_code == 200 and protocol_of(through_door) == "mcp"
    assert through_door.json() == direct.json()
    assert "x-ratelimit-limit" in through_door.headers  # HTTP admission's headers, once


async def test_a2a_json_rpc_through_the_door(door: tuple[httpx.AsyncClient, Account]) -> None:
    client, account = door
    send = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {
                "role": "ROLE_USER",
                "messageId": "m-1",
                "parts": [{"data": {"tool": "whoami", "arguments": {}}}],
            }
        },
    }
    response = await post(client, account, send, **{"A2A-Version": "1.0"})
    assert protocol_of(response) == "a2a"
    assert response.status_code == 200, response.text
    task = response.json()["result"]["task"]
    fetched = await client.post(
        A2A_PATH,
        json={"jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": {"id": task["id"]}},
        headers={**account.headers, "A2A-Version": "1.0"},
    )
    assert fetched.json()["result"]["id"] == task["id"]
    assert account.email in json.dumps(fetched.json()["result"])
    by_method = await post(
        client, account, {"jsonrpc": "2.0", "id": 3, "method": "tasks/get", "params": {"id": task["id"]}}
    )
    assert protocol_of(by_method) == "a2a" and by_method.json()["result"]["id"] == task["id"]


async def test_envelope_list_aliases_and_data_that_is_no_object(
    door: tuple[httpx.AsyncClient, Account],
) -> None:
    client, account = door
    base = {"protocol": "a2a", "from_agent": "agent1", "to_agent": "agent2"}
    for alias in ("query", "capabilities", "list_tools"):
        listed = await post(client, account, {**base, "action": alias, "data": {}})
        tools = {t["name"]: t for t in listed.json()["result"]["tools"]}
        assert "whoami" in tools and "auth_login" not in tools  # agents are authenticated already
        assert tools["create_payment"]["scope"] == "billing:write"
        assert "amount" in tools["create_payment"]["input_schema"]["properties"]

    bad_data = await post(client, account, {**base, "action": "whoami", "data": "x"})
    assert bad_data.status_code == 400 and bad_data.json()["error"]["code"] == "VALIDATION_ERROR"

    key = await api_key(client, account, scopes=["system:read"])
    scoped = {"Authorization": f"Bearer {key}"}
    listed = await client.post(AGENT_PATH, json={**base, "action": "query"}, headers=scoped)
    names = {t["name"] for t in listed.json()["result"]["tools"]}
    assert "system_stats" in names and "export_account" not in names


async def test_acp_run(door: tuple[httpx.AsyncClient, Account]) -> None:
    client, account = door
    run = {
        "agent_name": "whoami",
        "input": [{"role": "user", "parts": [{"content": "{}", "content_type": "application/json"}]}],
    }
    response = await post(client, account, run)
    assert response.status_code == 200 and protocol_of(response) == "acp"
    body = response.json()
    assert body["status"] == "completed" and body["error"] is None and body["agent_name"] == "whoami"
    part = body["output"][0]["parts"][0]
    assert body["output"][0]["role"] == "agent/whoami" and part["content_type"] == "application/json"
    assert json.loads(part["content"])["user"]["email"] == account.email

    via_aiserve = {
        "agent_name": "aiserve",
        "input": [{"role": "user", "parts": [{"content": json.dumps(WHOAMI)}]}],
    }
    assert (await post(client, account, via_aiserve)).json()["status"] == "completed"
    unknown = (await post(client, account, {**run, "agent_name": "nope"})).json()
    assert unknown["status"] == "failed" and unknown["error"]["code"] == "NOT_FOUND"


async def test_fipa_acl(door: tuple[httpx.AsyncClient, Account]) -> None:
    client, account = door
    base = {"sender": "buyer@host", "receiver": "aiserve@host", "conversation-id": "c1", "reply-with": "r1"}
    inform = await post(client, account, {**base, "performative": "request", "content": {"action": "whoami"}})
    assert inform.status_code == 200 and protocol_of(inform) == "fipa-acl"
    body = inform.json()
    assert (body["performative"], body["sender"], body["receiver"]) == (
        "inform",
        "aiserve@host",
        "buyer@host",
    )
    assert (body["conversation-id"], body["in-reply-to"], body["language"]) == ("c1", "r1", "json")
    assert body["content"]["user"]["email"] == account.email

    capabilities = (await post(client, account, {**base, "performative": "query-ref", "content": ""})).json()
    assert capabilities["performative"] == "inform"
    assert "whoami" in {t["name"] for t in json.loads(capabilities["content"])["tools"]}

    failure = await post(
        client,
        account,
        {
            **base,
            "performative": "request",
            "content": {"action": "create_api_key", "arguments": {"name": ""}},
        },
    )
    assert failure.json()["performative"] == "failure"
    assert failure.json()["content"]["code"] == "VALIDATION_ERROR"

    for content in ({"action": "whoami"}, "{not json"):
        performative = "inform" if isinstance(content, dict) else "request"
        refused = await post(client, account, {**base, "performative": performative, "content": content})
        assert refused.status_code == 200 and protocol_of(refused) == "fipa-acl"
        assert refused.json()["performative"] == "not-understood"
        assert refused.json()["in-reply-to"] == "r1"


async def test_kqml_sexp_and_json(door: tuple[httpx.AsyncClient, Account]) -> None:
    client, account = door
    tell = await post(
        client,
        account,
        "(ask-one :sender agent-a :receiver aiserve :reply-with q1 :language json :content (whoami))",
        **{"Content-Type": "text/plain"},
    )
    assert tell.status_code == 200 and protocol_of(tell) == "kqml"
    assert tell.headers["content-type"].startswith("text/plain")
    reply = parse_sexp(tell.text)
    assert isinstance(reply, list) and reply[0] == Symbol("tell")
    fields = dict(zip(reply[1::2], reply[2::2], strict=True))
    assert fields[Symbol(":receiver")] == Symbol("agent-a") and fields[Symbol(":in-reply-to")] == Symbol("q1")
    assert json.loads(str(fields[Symbol(":content")]))["user"]["email"] == account.email

    sorry = await post(client, account, "(ask-one :sender agent-a :content (no_such_tool :x 1))")
    assert protocol_of(sorry) == "kqml"
    reply = parse_sexp(sorry.text)
    assert isinstance(reply, list) and reply[0] == Symbol("sorry")
    assert json.loads(str(reply[reply.index(Symbol(":content")) + 1]))["code"] == "NOT_FOUND"

    as_json = await post(
        client,
        account,
        {"performative": "ask-all", "sender": "a", "reply-with": "q2", "content": json.dumps(WHOAMI)},
    )
    assert as_json.headers["content-type"].startswith("application/json") and protocol_of(as_json) == "kqml"
    assert as_json.json()["performative"] == "tell" and as_json.json()["in-reply-to"] == "q2"
    assert json.loads(as_json.json()["content"])["user"]["id"] == account.user_id
    not_acted = await post(client, account, {"performative": "tell", "sender": "a", "content": "x"})
    assert not_acted.json()["performative"] == "sorry"
    assert json.loads(not_acted.json()["content"])["code"] == "VALIDATION_ERROR"


async def test_a_negative_payment_is_refused_by_the_tool_in_acp_fipa_and_kqml(
    door: tuple[httpx.AsyncClient, Account],
) -> None:
    """The envelope's refusal of the same call is in test_every_surface."""
    client, account = door
    paid = await post(
        client,
        account,
        {"protocol": "x", "action": "create_payment", "data": {**NEGATIVE_PAYMENT, "amount": 20}},
    )
    assert paid.status_code == 200 and paid.json()["result"]["balance"] == 20  # the same call, paid

    call = {"tool": "create_payment", "arguments": NEGATIVE_PAYMENT}
    fipa = await post(
        client, account, {"performative": "request", "sender": "a", "receiver": "b", "content": call}
    )
    assert fipa.json()["performative"] == "failure"
    kqml = await post(client, account, f"(achieve :sender a :content {format_sexp(json.dumps(call))})")
    kqml_reply = parse_sexp(kqml.text)
    assert isinstance(kqml_reply, list) and kqml_reply[0] == Symbol("sorry")
    kqml_sexp = await post(client, account, "(achieve :sender a :content (create_payment :amount -5))")
    acp = await post(
        client,
        account,
        {"agent_name": "create_payment", "input": [{"parts": [{"content": json.dumps(NEGATIVE_PAYMENT)}]}]},
    )
    assert acp.json()["status"] == "failed"

    errors = [
        fipa.json()["content"],
        json.loads(str(kqml_reply[kqml_reply.index(Symbol(":content")) + 1])),
        acp.json()["error"]["data"],
    ]
    for error in errors:
        assert error["code"] == "VALIDATION_ERROR"
        assert [f["field"] for f in error["details"]["fields"]] == ["amount"]
    assert "amount" in kqml_sexp.text and "VALIDATION_ERROR" in kqml_sexp.text
    assert acp.json()["error"]["code"] == "VALIDATION_ERROR"
    transactions = await client.get("/api/v1/billing/transactions", headers=account.headers)
    assert [t["amount"] for t in transactions.json()["transactions"] if t["kind"] == "payment"] == [20.0]


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        '{"hello": "world"}',
        "(ask-one :sender a :content (whoami)",
        "[" * 50_000 + "]" * 50_000,
        "(" * 200 + ")" * 200,
        "",
    ],
    ids=["invalid-json", "unknown-shape", "unbalanced-parens", "deep-json", "deep-sexp", "empty"],
)
async def test_malformed_bodies_are_400_with_the_supported_list(
    door: tuple[httpx.AsyncClient, Account], body: str
) -> None:
    client, account = door
    response = await post(client, account, body)
    assert response.status_code == 400 and protocol_of(response) is None
    error = response.json()
    assert error["code"] == "VALIDATION_ERROR"
    assert {p["protocol"] for p in error["details"]["supported"]} == PROTOCOLS
    assert all(p["recognised_by"] for p in error["details"]["supported"])


async def test_forwarding_names_a_missing_route_and_never_loops(settings: Settings) -> None:
    async with app_client(settings) as (app, client):
        account = await sign_up(client)
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != A2A_PATH]
        a2a = {"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {}}
        missing = await post(client, account, a2a)
        assert missing.status_code == 501 and protocol_of(missing) == "a2a"
        assert missing.json()["code"] == "NOT_IMPLEMENTED" and A2A_PATH in missing.json()["error"]

        app.router.routes.insert(0, Route(MCP_PATH, AgentDoor(REGISTRY), methods=["POST"]))
        looped = await post(client, account, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert looped.status_code == 500 and looped.json()["code"] == "INTERNAL_ERROR"


async def test_size_and_method(settings: Settings) -> None:
    small = settings.model_copy(update={"max_request_body_bytes": 1024})
    async with app_client(small) as (_, client):
        envelope = {"protocol": "a2a", "action": "whoami", "data": {}}
        account = await sign_up(client)
        big = await post(client, account, {**envelope, "data": {"pad": "x" * 2048}})
        assert big.status_code == 413 and big.json()["code"] == "PAYLOAD_TOO_LARGE"
        assert (await client.get(AGENT_PATH, headers=account.headers)).status_code == 405
