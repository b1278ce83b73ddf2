"""The tool registry: each tool is a typed async function, written once and served on every surface.

A tool takes a ``ToolContext`` and one pydantic input model and returns one pydantic output model. Its
docstring is the description LLM agents read; its annotations are the MCP hints; its ``scope`` is the
permission a caller needs (``None``: anyone, no login needed).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar, get_type_hints

from pydantic import BaseModel
from typing_extensions import TypeVar as DefaultedTypeVar

from aiserve_mcp.core.errors import AuthRequired, Forbidden, NotFound
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.gpu.market import Progress
from aiserve_mcp.money.approvals import Quote
from aiserve_mcp.tools.ports import Ports


@dataclass(frozen=True)
class Annotations:
    """MCP tool hints. Defaults describe a read-only call that stays inside this platform."""

    title: str
    read_only: bool = True
    destructive: bool = False
    idempotent: bool = True
    open_world: bool = False


class Surface(StrEnum):
    """Where a call came from; the ``surface`` label of ``aiserve_tool_calls_total``."""

    REST = "rest"
    WEBHOOK = "webhook"
    MCP = "mcp"
    STDIO = "stdio"
    A2A = "a2a"
    ENVELOPE = "envelope"
    ACP = "acp"
    FIPA_ACL = "fipa-acl"
    KQML = "kqml"
    CONSOLE = "console"


# The ports a tool uses (``ToolContext[GpuPort]``); adapters hold every port (plain ``ToolContext``). A
# context with every port can be passed to a tool that needs fewer, so the variable is covariant.
Uses_co = DefaultedTypeVar("Uses_co", covariant=True, default=Ports)


@dataclass
class ToolContext(Generic[Uses_co]):
    """What a tool knows about its call: the services it may use, the caller, and where the call came
    from."""

    services: Uses_co
    principal: Principal | None
    surface: Surface
    client_address: str | None = None
    progress: Progress | None = None
    approved: str | None = None  # the approval being carried out: its call skips the approval gate

    def caller(self) -> Principal:
        """The authenticated caller; ``AuthRequired`` for anonymous calls."""
        if self.principal is None:
            raise AuthRequired("authentication required: send 'Authorization: Bearer <token or API key>'")
        return self.principal

    async def report(self, done: float, total: float | None, message: str | None = None) -> None:
        """Tell the caller how far a long call has got (MCP progress, when the client asked for it)."""
        if self.progress is not None:
            await self.progress(done, total, message)


ToolFn = Callable[[ToolContext, Any], Awaitable[BaseModel]]
QuoteFn = Callable[[ToolContext, Any], Awaitable[Quote | None]]
"""What a money-moving call would cost (from its validated input), for the approval gate; None: nothing."""
Fn = TypeVar("Fn", bound=ToolFn)


def authorize(principal: Principal | None, action: str, scope: str | None, admin_only: bool = False) -> None:
    """Raise unless ``principal`` may do ``action`` (a tool's name), which needs ``scope`` (``None``: anyone,
    no login needed) and, with ``admin_only``, an administrator."""
    if scope is None:
        return
    if principal is None:
        raise AuthRequired(
            f"'{action}' needs authentication: send 'Authorization: Bearer <token or API key>'"
        )
    if admin_only and not principal.is_admin:
        raise Forbidden(f"'{action}' is for administrators only")
    if not principal.has_scope(scope):
        raise Forbidden(
            f"this API key lacks the '{scope}' scope that '{action}' needs", {"required_scope": scope}
        )


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    fn: ToolFn
    scope: str | None
    annotations: Annotations
    admin_only: bool = False
    agent_visible: bool = True
    quote: QuoteFn | None = None

    def authorize(self, principal: Principal | None) -> None:
        """Raise unless ``principal`` may call this tool."""
        authorize(principal, self.name, self.scope, admin_only=self.admin_only)

    def visible_to(self, principal: Principal | None) -> bool:
        """Whether an agent acting as ``principal`` should see this tool in a listing."""
        if not self.agent_visible:
            return False
        try:
            self.authorize(principal)
        except (AuthRequired, Forbidden):
            return False
        return True


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def add(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise NotFound(f"unknown tool '{name}'") from None

    def for_agents(self, name: str) -> Tool:
        """The tool an agent surface (MCP, A2A, the agent door) may call by ``name``; REST-only tools are
        as unknown there as missing ones."""
        tool = self.get(name)
        if not tool.agent_visible:
            raise NotFound(f"unknown tool '{name}'")
        return tool

    def __iter__(self) -> Iterator[Tool]:
        return iter(sorted(self._tools.values(), key=lambda t: t.name))

    def __len__(self) -> int:
        return len(self._tools)

    def tool(
        self,
        *,
        scope: str | None,
        annotations: Annotations,
        admin_only: bool = False,
        agent_visible: bool = True,
        quote: QuoteFn | None = None,
    ) -> Callable[[Fn], Fn]:
        """Register the decorated function; its models come from its type hints, its description from its
        docstring. A tool that moves money names its ``quote``, which the approval gate prices calls by."""

        def register(fn: Fn) -> Fn:
            hints = get_type_hints(fn)
            params = list(inspect.signature(fn).parameters)
            if len(params) != 2:
                raise TypeError(f"tool {fn.__name__} must take (ctx, args)")
            description = inspect.getdoc(fn)
            if not description:
                raise TypeError(f"tool {fn.__name__} needs a docstring: agents read it")
            self.add(
                Tool(
                    name=fn.__name__,
                    description=description,
                    input_model=hints[params[1]],
                    output_model=hints["return"],
                    fn=fn,
                    scope=scope,
                    annotations=annotations,
                    admin_only=admin_only,
                    agent_visible=agent_visible,
                    quote=quote,
                )
            )
            return fn

        return register


REGISTRY = ToolRegistry()
tool = REGISTRY.tool
