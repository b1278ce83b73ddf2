"""A2A (Agent2Agent, protocol 1.0 with 0.3 compatibility) over the tool registry, through the a2a-sdk.

The agent card is public at ``/.well-known/agent-card.json`` (and the pre-0.3 ``/.well-known/agent.json``);
JSON-RPC is at ``/api/v1/a2a`` behind HTTP admission, for authenticated callers only. Each message runs
one tool as the caller, through ``call_tool`` (the same authorization, validation and telemetry as REST
and MCP): a data part ``{"tool": name, "arguments": {...}}`` (``skill``/``action`` and ``args``/``data``
are accepted too) ends COMPLETED with the tool's JSON as an artifact, or FAILED with the spec's error body
as a data part of the status message; a call held for its owner's approval leaves the task INPUT_REQUIRED
until a message on it decides (``approvals``). A message without a data part is answered with the tools
the caller may use. Progress a tool reports streams as WORKING status updates; cancelling a running task
cancels the tool's asyncio task. Tasks are stored per owner by the task store the app passes in.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from a2a.auth.user import UnauthenticatedUser, User
from a2a.compat.v0_3.conversions import to_compat_agent_card
from a2a.helpers import new_data_part, new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_jsonrpc_routes
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.server.tasks import TaskStore, TaskUpdater
from a2a.types.a2a_pb2 import ListTasksRequest, ListTasksResponse, Message, Part, Task, TaskState
from a2a.utils.errors import A2AError
from a2a.utils.errors import InternalError as A2aInternalError
from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from aiserve_mcp.core.errors import AiserveError, ApprovalRequired, NotFound, error_body
from aiserve_mcp.core.outages import unexpected
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.protocols.a2a import approvals
from aiserve_mcp.protocols.a2a.calls import call_in
from aiserve_mcp.protocols.a2a.card import (
    A2A_PATH,
    CALL_FORMAT,
    agent_card,
    area_name,
    call_example,
    skills,
    summary_of,
    tools_by_area,
)
from aiserve_mcp.protocols.a2a.replies import body_message, complete_with, json_safe
from aiserve_mcp.protocols.prelude import CallerGuard, principal_of, tool_context
from aiserve_mcp.tools.ports import Ports
from aiserve_mcp.tools.registry import Surface, Tool, ToolContext, ToolRegistry
from aiserve_mcp.tools.runner import call_tool

T = TypeVar("T")
CARD_PATH = "/.well-known/agent-card.json"
CARD_PATH_V0_3 = "/.well-known/agent.json"
SURFACE = Surface.A2A
TOOL_CONTEXT = "aiserve.tool_context"  # the call context's state: the tool context of the HTTP request
PRIVATE_HEADERS = frozenset({"authorization", "x-api-key", "cookie"})


class PrincipalUser(User):
    """The SDK's user for an authenticated caller; ``user_name`` is the user id that owns tasks."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def user_name(self) -> str:
        return self.principal.user_id


class PrincipalContextBuilder(DefaultServerCallContextBuilder):
    """Builds the SDK's call context from HTTP admission's authentication (never from the message), with
    the tool context of the request in its state."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        # The SDK reads A2A-Version from these; credentials need not travel with the task.
        context.state["headers"] = {
            name: value for name, value in request.headers.items() if name not in PRIVATE_HEADERS
        }
        context.state[TOOL_CONTEXT] = tool_context(request.scope, SURFACE)
        return context

    def build_user(self, request: Request) -> User:
        principal = principal_of(request.scope)
        return UnauthenticatedUser() if principal is None else PrincipalUser(principal)


@dataclass
class _Run:
    """One execution of a task in this process, so that a cancel can stop its tool."""

    tool: asyncio.Task[BaseModel] | None = None
    cancel_requested: bool = False
    settled: asyncio.Event = field(default_factory=asyncio.Event)


def _being_cancelled() -> bool:
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


class ToolExecutor(AgentExecutor):
    """Runs the tool a message names, as the caller of the request that sent it."""

    def __init__(self, registry: ToolRegistry) -> None:
        self._registry = registry
        self._runs: dict[str, _Run] = {}

    def _tool(self, name: str) -> Tool:
        try:
            return self._registry.for_agents(name)
        except NotFound:
            raise NotFound(
                f"unknown tool '{name}': send a text message to list the tools you can call"
            ) from None

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = context.task_id or "", context.context_id or ""
        run = self._runs[task_id] = _Run()
        try:
            if context.current_task is None:
                history = [context.message] if context.message is not None else []
                await event_queue.enqueue_event(
                    new_task(task_id, context_id, TaskState.TASK_STATE_SUBMITTED, history=history)
                )
            updater = TaskUpdater(event_queue, task_id, context_id)
            await self._run(context, updater, run)
        finally:
            run.settled.set()
            self._runs.pop(task_id, None)

    async def _run(self, context: RequestContext, updater: TaskUpdater, run: _Run) -> None:
        request_context = context.call_context.state[TOOL_CONTEXT]
        assert isinstance(request_context, ToolContext)  # PrincipalContextBuilder put it there
        try:
            question = approvals.awaited_question(context.current_task)
            if question is not None:
                await approvals.answer(request_context, updater, question, context.message)
                return
            call = call_in(context.message)
            if call is None:
                await self._describe(updater, request_context.principal)
                return
            tool = self._tool(call.name)
        except AiserveError as exc:
            await updater.failed(_refusal_message(updater, exc))
            return
        await updater.start_work(updater.new_agent_message([Part(text=f"running {tool.name}")]))
        if run.cancel_requested:
            await updater.cancel()
            return

        async def progress(done: float, total: float | None, message: str | None) -> None:
            await updater.update_status(
                TaskState.TASK_STATE_WORKING, _progress_message(updater, done, total, message)
            )

        ctx = replace(request_context, progress=progress)
        run.tool = asyncio.create_task(call_tool(tool, call.arguments, ctx))
        try:
            result = await run.tool
        except asyncio.CancelledError:
            if run.cancel_requested and not _being_cancelled():
                await updater.cancel(updater.new_agent_message([Part(text=f"{tool.name} was cancelled")]))
                return
            raise
        except ApprovalRequired as pending:
            await updater.requires_input(approvals.question(updater, pending))
            return
        except AiserveError as exc:
            await updater.failed(_refusal_message(updater, exc))
            return
        await complete_with(updater, tool.name, result.model_dump(mode="json"))

    async def _describe(self, updater: TaskUpdater, principal: Principal | None) -> None:
        """Reply to a message without a tool call with the tools this caller may use, by area."""
        groups = tools_by_area(self._registry, lambda t: t.visible_to(principal))
        lines = [
            "I run aiserve's tools for you. Send a message with a data part "
            '{"tool": "<name>", "arguments": {...}} to call one; the result comes back as an artifact '
            "holding the tool's JSON.",
        ]
        for area, tools in groups.items():
            lines.append(f"\n{area_name(area)} ({area}):")
            lines.extend(f"- {t.name}: {summary_of(t)}" for t in tools)
        data = {
            "call_format": CALL_FORMAT,
            "areas": {
                area: [
                    {"name": t.name, "description": summary_of(t), "example": call_example(t)} for t in tools
                ]
                for area, tools in groups.items()
            },
        }
        await updater.add_artifact([Part(text="\n".join(lines)), new_data_part(data)], name="capabilities")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Cancel the task's tool (it sees ``CancelledError``); ``execute`` then ends the task CANCELED."""
        run = self._runs.get(context.task_id or "")
        if run is None:
            await TaskUpdater(event_queue, context.task_id or "", context.context_id or "").cancel()
            return
        run.cancel_requested = True
        if run.tool is not None:
            run.tool.cancel()
        await run.settled.wait()


def _refusal_message(updater: TaskUpdater, error: AiserveError) -> Message:
    """The agent message that ends a refused task FAILED: the error's code and text, and its body."""
    return body_message(updater, error_body(error))


def _progress_message(updater: TaskUpdater, done: float, total: float | None, message: str | None) -> Message:
    counted = f"{done:g}/{total:g}" if total is not None else f"{done:g}"
    text = f"{message} ({counted})" if message else counted
    return updater.new_agent_message(
        [Part(text=text), new_data_part({"progress": done, "total": total, "message": message})]
    )


class _SafeTaskStore(TaskStore):
    """The task store, with its failures told as the spec's error body inside a JSON-RPC error: the SDK
    would otherwise answer an unexpected exception with its text (SQL and all)."""

    def __init__(self, store: TaskStore) -> None:
        self._store = store

    async def save(self, task: Task, context: ServerCallContext) -> None:
        await self._guarded(self._store.save(task, context))

    async def get(self, task_id: str, context: ServerCallContext) -> Task | None:
        return await self._guarded(self._store.get(task_id, context))

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        return await self._guarded(self._store.list(params, context))

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        await self._guarded(self._store.delete(task_id, context))

    @staticmethod
    async def _guarded(step: Awaitable[T]) -> T:
        try:
            return await step
        except A2AError:
            raise
        except Exception as exc:
            error = unexpected(exc, "A2A task store")
            raise A2aInternalError(error.message, json_safe(error_body(error))) from None


def _unknown_status_filter(body: bytes) -> dict[str, Any] | None:
    """The JSON-RPC invalid-params error for a ``ListTasks`` whose ``status`` names no task state (the
    SDK's parser would drop it and list every task), else None."""
    try:
        request = json.loads(body)
    except ValueError:
        return None
    params = request.get("params") if isinstance(request, dict) else None
    if request.get("method") != "ListTasks" or not isinstance(params, dict) or "status" not in params:
        return None
    status = params["status"]
    names, numbers = list(TaskState.keys()), set(TaskState.values())
    if (isinstance(status, str) and status in names) or (type(status) is int and status in numbers):
        return None
    message = f"unknown task status {status!r}; use one of {', '.join(names[1:])}"
    return {"jsonrpc": "2.0", "id": request.get("id"), "error": {"code": -32602, "message": message}}


class A2aSurface:
    """The A2A routes and the SDK's request handler over the registry."""

    def __init__(self, services: Ports, registry: ToolRegistry, task_store: TaskStore) -> None:
        settings = services.settings
        self._public_url = settings.public_url.rstrip("/") if settings.public_url else None
        self._skills = skills(registry)
        default_base = self._public_url or f"http://{settings.host}:{settings.port}"
        self.handler = DefaultRequestHandler(
            agent_executor=ToolExecutor(registry),
            task_store=_SafeTaskStore(task_store),
            agent_card=agent_card(default_base, self._skills),
        )
        rpc = create_jsonrpc_routes(
            self.handler,
            rpc_url=A2A_PATH,
            context_builder=PrincipalContextBuilder(),
            enable_v0_3_compat=True,
        )[0]
        assert isinstance(rpc, Route)
        self._sdk_rpc = rpc.app
        self._rpc = CallerGuard("A2A", self._serve_rpc)

    async def _serve_rpc(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """The SDK's JSON-RPC endpoint, behind the guard (authenticated callers, bodies within the limit)."""
        refused = _unknown_status_filter(body)
        if refused is not None:
            await JSONResponse(refused)(scope, receive, send)
            return
        await self._sdk_rpc(scope, receive, send)

    def base_url(self, request: Request) -> str:
        """``AISERVE_PUBLIC_URL``, else the scheme and host this request came to."""
        return self._public_url or str(request.base_url).rstrip("/")

    async def card(self, request: Request) -> Response:
        """The A2A 1.0 card, exactly (a 1.0 validator refuses the 0.3 fields the SDK would merge in)."""
        return JSONResponse(MessageToDict(agent_card(self.base_url(request), self._skills)))

    async def card_v0_3(self, request: Request) -> Response:
        """The same card in the 0.3 shape, where 0.3 clients look for it."""
        card = to_compat_agent_card(agent_card(self.base_url(request), self._skills))
        return JSONResponse(card.model_dump(mode="json", exclude_none=True))

    def routes(self) -> list[BaseRoute]:
        return [
            Route(CARD_PATH, self.card, methods=["GET"]),
            Route(CARD_PATH_V0_3, self.card_v0_3, methods=["GET"]),
            Route(A2A_PATH, self._rpc, methods=["POST"]),
        ]

    async def aclose(self) -> None:
        """Stop the tasks still running (server shutdown)."""
        await self.handler.aclose()
