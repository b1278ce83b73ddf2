"""A2A with the official a2a-sdk client against a running server: the card, the shapes of a tool call, the
capability reply, streaming, progress, get/list/cancel per owner, body bounds, persistence, 0.3 names. The
calls every surface shares (results, refusals, authentication) are in test_every_surface."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, Client, ClientConfig, create_client
from a2a.helpers import get_data_parts, get_text_parts, new_data_part
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError
from pydantic import SecretStr

from aiserve_mcp import __version__
from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.protocols.a2a.card import A2A_PATH
from aiserve_mcp.tools import REGISTRY
from tests.conftest import LiveServer, api_key, app_client, funded, serve, sign_up
from tests.fakes.vastai_server import API_KEY, VastAiState, vastai_app
from tests.gpu.test_market import VAST_OFFERS, vast_offer

COMPLETED, FAILED, CANCELED = (
    TaskState.TASK_STATE_COMPLETED,
    TaskState.TASK_STATE_FAILED,
    TaskState.TASK_STATE_CANCELED,
)


@asynccontextmanager
async def a2a(url: str, credential: str, *, streaming: bool = False) -> AsyncIterator[Client]:
    """An SDK client built from the served card, sending ``Authorization: Bearer <credential>``."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {credential}"}, timeout=30) as http:
        card = await A2ACardResolver(http, url).get_agent_card()
        client = await create_client(card, client_config=ClientConfig(streaming=streaming, httpx_client=http))
        try:
            yield client
        finally:
            await client.close()


def request(*parts: Part) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=list(parts))
    )


def call(
    tool: str, arguments: dict[str, Any] | None = None, name_key: str = "tool", args_key: str = "arguments"
) -> SendMessageRequest:
    return request(new_data_part({name_key: tool, args_key: arguments or {}}))


async def events(client: Client, message: SendMessageRequest) -> list[StreamResponse]:
    return [event async for event in client.send_message(message)]


async def run(client: Client, message: SendMessageRequest) -> Task:
    """Send without streaming: the SDK yields the final task once."""
    [event] = await events(client, message)
    assert event.HasField("task"), event
    return event.task


def artifact_data(task: Task) -> Any:
    [artifact] = task.artifacts
    [data] = get_data_parts(artifact.parts)
    return data


def refusal_body(task: Task) -> dict[str, Any]:
    assert task.status.state == FAILED, task
    [body] = get_data_parts(task.status.message.parts)
    assert isinstance(body, dict)
    return body


@pytest.fixture
async def key(live_server: LiveServer) -> str:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        return await api_key(http, await sign_up(http))


async def test_agent_card_is_public_on_both_paths(live_server: LiveServer) -> None:
    url = live_server.url
    async with httpx.AsyncClient(base_url=url) as http:
        current, legacy = (
            await http.get("/.well-known/agent-card.json"),
            await http.get("/.well-known/agent.json"),
        )
    assert current.status_code == legacy.status_code == 200
    card, old = current.json(), legacy.json()
    assert card["name"] == old["name"] == "aiserve" and card["version"] == __version__
    assert card["capabilities"]["streaming"] is True and card["capabilities"]["pushNotifications"] is False
    assert card["defaultInputModes"] == card["defaultOutputModes"] == ["text/plain", "application/json"]
    interfaces = {(i["url"], i["protocolBinding"], i["protocolVersion"]) for i in card["supportedInterfaces"]}
    assert interfaces == {(url + A2A_PATH, "JSONRPC", "1.0"), (url + A2A_PATH, "JSONRPC", "0.3")}
    # The 1.0 card is strict 1.0: none of the 0.3 fields a 1.0 validator refuses.
    assert not {"url", "protocolVersion", "preferredTransport", "security"} & set(card)
    assert card["securitySchemes"] == {
        "bearer": {"httpAuthSecurityScheme": {"scheme": "bearer", "description": ANY_TEXT}}
    }
    assert card["provider"]["url"] == url
    assert card["securityRequirements"] == [{"schemes": {"bearer": {}}}]
    # 0.3 clients find the 0.3 shape at the path they look at.
    assert (old["url"], old["protocolVersion"], old["preferredTransport"]) == (
        url + A2A_PATH,
        "0.3",
        "JSONRPC",
    )
    assert old["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer", "description": ANY_TEXT}
    assert "supportedInterfaces" not in old and old["security"] == [{"bearer": []}]

    skills = {s["id"]: s for s in card["skills"]}
    assert {"gpu", "lb", "billing", "guardrails", "models", "account"} <= set(skills)
    listed = {name for s in card["skills"] for name in s["description"].replace(":", " ").split()}
    callable_tools = {t.name for t in REGISTRY if t.agent_visible and not t.admin_only}
    assert callable_tools <= listed, callable_tools - listed
    assert "auth_login" not in listed and "admin_list_users" not in listed
    assert '{"tool": "reserve_gpus", "arguments": {"count": "<integer>"}}' in skills["gpu"]["examples"]


class _AnyText(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    __hash__ = str.__hash__


ANY_TEXT = _AnyText()


async def test_list_tasks_refuses_a_status_that_names_no_state(live_server: LiveServer, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}", "A2A-Version": "1.0"}
    async with httpx.AsyncClient(base_url=live_server.url, headers=headers) as http:
        for status in ("BOGUS", 99, True):
            body = {"jsonrpc": "2.0", "id": 7, "method": "ListTasks", "params": {"status": status}}
            answer = (await http.post(A2A_PATH, json=body)).json()
            assert answer["error"]["code"] == -32602 and answer["id"] == 7, answer
            assert "TASK_STATE_WORKING" in answer["error"]["message"]
        good = {"jsonrpc": "2.0", "id": 8, "method": "ListTasks", "params": {"status": "TASK_STATE_WORKING"}}
        assert (await http.post(A2A_PATH, json=good)).json()["result"]["tasks"] == []


async def test_a_rate_limited_rpc_gets_the_spec_body_and_retry_after(settings: Settings) -> None:
    tight = settings.model_copy(update={"rate_limit": 3, "rate_limit_window_s": 3600})
    async with app_client(tight) as (_, http):
        credential = await api_key(http, await sign_up(http))
        body = {"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {}}
        headers = {"X-API-Key": credential, "A2A-Version": "1.0"}
        answers = [await http.post(A2A_PATH, json=body, headers=headers) for _ in range(3)]
    refused = answers[-1]
    assert refused.status_code == 429 and refused.json()["code"] == "RATE_LIMITED"
    assert int(refused.headers["Retry-After"]) > 0


async def test_card_urls_follow_the_public_url_setting(settings: Settings) -> None:
    public = settings.model_copy(update={"public_url": "https://agents.example.com/aiserve/"})
    async with app_client(public) as (_, http):
        card = (await http.get("/.well-known/agent-card.json")).json()
    assert {i["url"] for i in card["supportedInterfaces"]} == {
        "https://agents.example.com/aiserve/api/v1/a2a"
    }


async def test_the_artifact_names_the_tool_and_every_spelling_of_a_call_runs_it(
    live_server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        account = await sign_up(http)
        credential = await api_key(http, account)
        quota = (await http.get("/api/v1/quota", headers=account.headers)).json()
        formats = (await http.get("/api/v1/models/formats")).json()
    async with a2a(live_server.url, credential) as client:
        task = await run(client, call("get_quota"))
        assert task.artifacts[0].name == "get_quota"
        assert get_text_parts(task.artifacts[0].parts)[0].startswith("get_quota succeeded:")
        # The other accepted spellings: "skill"/"action" for the name, "args"/"data" for the arguments
        other = await run(client, call("list_model_formats", {}, name_key="skill", args_key="args"))
        assert artifact_data(other) == formats
        action = await run(client, call("get_quota", {}, name_key="action", args_key="data"))
        assert artifact_data(action) == quota


async def test_a_text_message_gets_the_tools_this_caller_may_use(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        account = await sign_up(http)
        everything = await api_key(http, account)
        models_only = await api_key(http, account, scopes=["models:read"])
    async with a2a(live_server.url, everything) as client:
        task = await run(client, request(Part(text="What can you do?")))
    assert task.status.state == COMPLETED
    [text] = get_text_parts(task.artifacts[0].parts)
    assert '{"tool": "<name>", "arguments": {...}}' in text
    assert "- reserve_gpus:" in text and "- create_payment:" in text and "- list_models:" in text
    catalog = artifact_data(task)
    assert catalog["call_format"]["tool"] == "<tool name>"
    assert {"gpu", "lb", "billing", "guardrails", "models", "account"} <= set(catalog["areas"])

    async with a2a(live_server.url, models_only) as client:
        limited = artifact_data(await run(client, request(Part(text="help"))))
    names = {t["name"] for tools in limited["areas"].values() for t in tools}
    assert {"list_models", "predict", "get_quota", "list_model_formats"} <= names
    assert "create_payment" not in names and "reserve_gpus" not in names


async def test_streaming_send_yields_the_task_then_updates_until_completed(
    live_server: LiveServer, key: str
) -> None:
    async with a2a(live_server.url, key, streaming=True) as client:
        stream = await events(client, call("list_model_formats"))
    kinds = [e.WhichOneof("payload") for e in stream]
    assert kinds == ["task", "status_update", "artifact_update", "status_update"], kinds
    assert stream[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
    assert stream[1].status_update.status.state == TaskState.TASK_STATE_WORKING
    assert stream[-1].status_update.status.state == COMPLETED
    [data] = get_data_parts(stream[2].artifact_update.artifact.parts)
    assert "onnx" in {f["format"] for f in data["formats"]}


async def test_a_hidden_tool_and_a_call_without_a_name_end_failed(live_server: LiveServer, key: str) -> None:
    async with a2a(live_server.url, key) as client:
        hidden = refusal_body(await run(client, call("auth_login", {"email": "a@b.c", "password": "x"})))
        assert hidden["code"] == "NOT_FOUND"
        nameless = refusal_body(await run(client, request(new_data_part({"arguments": {}}))))
        assert nameless["code"] == "VALIDATION_ERROR" and nameless["details"]["format"]["tool"]


async def test_get_list_and_cancel_see_only_your_own_tasks(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        owner = await api_key(http, await sign_up(http))
        stranger = await api_key(http, await sign_up(http))
    async with a2a(live_server.url, owner) as client:
        first = await run(client, call("list_model_formats"))
        second = await run(client, call("get_quota"))
        fetched = await client.get_task(GetTaskRequest(id=first.id))
        assert fetched.status.state == COMPLETED and artifact_data(fetched) == artifact_data(first)
        listed = await client.list_tasks(ListTasksRequest(include_artifacts=True))
        assert [t.id for t in listed.tasks] == [second.id, first.id] and listed.total_size == 2
        assert artifact_data(listed.tasks[0]) == artifact_data(second)
        page = await client.list_tasks(ListTasksRequest(page_size=1))
        assert [t.id for t in page.tasks] == [second.id] and page.next_page_token
        rest = await client.list_tasks(ListTasksRequest(page_size=1, page_token=page.next_page_token))
        assert [t.id for t in rest.tasks] == [first.id] and not rest.next_page_token
        failed = await client.list_tasks(ListTasksRequest(status=FAILED))
        assert failed.total_size == 0
        with pytest.raises(TaskNotCancelableError):
            await client.cancel_task(CancelTaskRequest(id=first.id))
    async with a2a(live_server.url, stranger) as client:
        assert (await client.list_tasks(ListTasksRequest())).total_size == 0
        with pytest.raises(TaskNotFoundError):
            await client.get_task(GetTaskRequest(id=first.id))
        with pytest.raises(TaskNotFoundError):
            await client.cancel_task(CancelTaskRequest(id=first.id))
        follow_up = call("get_quota")
        follow_up.message.task_id = first.id
        with pytest.raises(TaskNotFoundError):
            await events(client, follow_up)


async def test_a2a_bounds_bodies(live_server: LiveServer, key: str) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        too_large = await http.post(
            A2A_PATH,
            content=b" " * (live_server.app.state.services.settings.max_request_body_bytes + 1),
            headers={"Authorization": f"Bearer {key}"},
        )
        assert too_large.status_code == 413 and too_large.json()["code"] == "PAYLOAD_TOO_LARGE"


async def test_v0_3_method_names_on_the_same_endpoint(live_server: LiveServer, key: str) -> None:
    message = {
        "kind": "message",
        "role": "user",
        "messageId": str(uuid.uuid4()),
        "parts": [{"kind": "data", "data": {"tool": "list_model_formats", "arguments": {}}}],
    }
    async with httpx.AsyncClient(
        base_url=live_server.url, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        sent = await http.post(
            A2A_PATH,
            json={"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": message}},
        )
        task = sent.json()["result"]
        assert task["kind"] == "task" and task["status"]["state"] == "completed", task
        assert task["artifacts"][0]["parts"][0]["kind"] == "data"
        got = await http.post(
            A2A_PATH, json={"jsonrpc": "2.0", "id": 2, "method": "tasks/get", "params": {"id": task["id"]}}
        )
        assert got.json()["result"]["id"] == task["id"]


async def test_tasks_survive_a_new_app_on_the_same_database(settings: Settings) -> None:
    async with serve(create_app(settings)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            credential = await api_key(http, await sign_up(http))
        async with a2a(url, credential) as client:
            task = await run(client, call("get_quota"))
    async with serve(create_app(settings)) as url, a2a(url, credential) as client:
        again = await client.get_task(GetTaskRequest(id=task.id))
        listed = await client.list_tasks(ListTasksRequest())
    assert again.status.state == COMPLETED and artifact_data(again) == artifact_data(task)
    assert [t.id for t in listed.tasks] == [task.id]


@asynccontextmanager
async def market_server(settings: Settings, vast: VastAiState) -> AsyncIterator[str]:
    """The app against a local vast.ai, with sandbox billing, served on a loopback port."""
    async with serve(vastai_app(vast)) as vast_url:
        market = settings.model_copy(
            update={"vastai_url": vast_url, "vastai_api_key": SecretStr(API_KEY), "billing_sandbox": True}
        )
        async with serve(create_app(market)) as url:
            yield url


async def test_progress_of_a_long_tool_streams_as_working_updates(settings: Settings) -> None:
    vast = VastAiState(offers=[vast_offer(s) for s in VAST_OFFERS], shows_until_running=0)
    async with market_server(settings, vast) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            owner = await funded(http)
        reserve = call(
            "reserve_gpus", {"count": 2, "filters": {"provider": "vastai", "gpu_model": "RTX 4090"}}
        )
        async with a2a(url, owner.access_token, streaming=True) as client:
            stream = await events(client, reserve)
    updates = [e.status_update.status for e in stream if e.HasField("status_update")]
    progress = [get_data_parts(s.message.parts)[0] for s in updates[1:-1]]
    assert [p["progress"] for p in progress] == [1, 2]  # instances rented so far
    assert all("RTX 4090" in get_text_parts(s.message.parts)[0] for s in updates[1:-1])
    assert updates[-1].state == COMPLETED
    [artifact] = [e.artifact_update.artifact for e in stream if e.HasField("artifact_update")]
    assert get_data_parts(artifact.parts)[0]["count"] == 2


async def test_cancel_stops_a_running_tool(settings: Settings) -> None:
    vast = VastAiState(offers=[vast_offer(s) for s in VAST_OFFERS], delay_s=2.0)
    async with market_server(settings, vast) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            credential = await api_key(http, await sign_up(http))
        async with a2a(url, credential, streaming=True) as client:
            started = time.monotonic()
            seen: list[StreamResponse] = []
            cancelled: Task | None = None
            async for event in client.send_message(call("search_gpu_offers", {"provider": "vastai"})):
                seen.append(event)
                if event.HasField("status_update") and cancelled is None:
                    assert event.status_update.status.state == TaskState.TASK_STATE_WORKING
                    cancelled = await client.cancel_task(CancelTaskRequest(id=event.status_update.task_id))
            elapsed = time.monotonic() - started
            assert cancelled is not None and cancelled.status.state == CANCELED
            final = seen[-1].status_update.status
            assert final.state == CANCELED  # the stream ends with the cancellation, once the tool stopped
            assert get_text_parts(final.message.parts) == ["search_gpu_offers was cancelled"]
            assert elapsed < vast.delay_s  # the search was cut off, not waited for
            assert any(path == "/api/v0/bundles/" for _, path in vast.requests)  # the tool was in flight
            stored = await client.get_task(GetTaskRequest(id=cancelled.id))
            assert stored.status.state == CANCELED and not stored.artifacts
            with pytest.raises(TaskNotCancelableError):
                await client.cancel_task(CancelTaskRequest(id=cancelled.id))
