"""What the A2A surface says about itself: the tools grouped into areas, and the agent card.

Areas come from the registry (a tool's scope prefix, ``gpu:read`` -> ``gpu``; a public tool's module), so
the card and the capability reply never keep a list of tools of their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from a2a.utils.constants import PROTOCOL_VERSION_0_3, PROTOCOL_VERSION_1_0, TransportProtocol

from aiserve_mcp import __version__
from aiserve_mcp.tools.registry import Tool, ToolRegistry

A2A_PATH = "/api/v1/a2a"
MODES = ["text/plain", "application/json"]
BEARER = "bearer"
AREA_NAMES = {
    "account": "Account and API keys",
    "billing": "Credits and payments",
    "gpu": "GPU marketplace and instances",
    "guardrails": "Spending guardrails",
    "lb": "Load balancing and proxy",
    "models": "Model serving",
    "system": "Platform health",
}
DESCRIPTION = (
    "Rent GPUs across marketplaces (vast.ai, io.net, this host), balance traffic over them, serve your own "
    "models, buy credits and stay inside the spending limits you set. Each message runs one tool: send a "
    'data part {"tool": "<name>", "arguments": {...}}; the result is an artifact with the tool\'s JSON. '
    "Send plain text to get the list of tools you may call."
)
CALL_FORMAT = {"tool": "<tool name>", "arguments": {"<argument>": "<value>"}}


def area_of(tool: Tool) -> str:
    """The tool's area: its scope prefix, or for a public tool the first word of its module's name."""
    if tool.scope is not None:
        return tool.scope.partition(":")[0]
    return tool.fn.__module__.rpartition(".")[2].partition("_")[0]


def area_name(area: str) -> str:
    return AREA_NAMES.get(area, area.capitalize())


def tools_by_area(registry: ToolRegistry, keep: Callable[[Tool], bool]) -> dict[str, list[Tool]]:
    """The agent-visible tools ``keep`` accepts, by area (areas and tools in name order)."""
    groups: dict[str, list[Tool]] = {}
    for tool in registry:
        if tool.agent_visible and keep(tool):
            groups.setdefault(area_of(tool), []).append(tool)
    return dict(sorted(groups.items()))


def summary_of(tool: Tool) -> str:
    """The first sentence of the tool's description."""
    text = " ".join(tool.description.split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def _type_hint(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, str):
        return f"<{kind}>"
    options = [o.get("type") for o in schema.get("anyOf", []) if isinstance(o, dict)]
    named = [o for o in options if isinstance(o, str) and o != "null"]
    if named:
        return f"<{named[0]}>"
    return "<object>" if "$ref" in schema else "<value>"


def call_example(tool: Tool) -> dict[str, Any]:
    """The data part that calls ``tool``: each required argument shows its type, e.g. "<integer>"."""
    schema = tool.input_model.model_json_schema()
    properties = schema.get("properties", {})
    arguments = {name: _type_hint(properties.get(name, {})) for name in schema.get("required", [])}
    return {"tool": tool.name, "arguments": arguments}


def _skill(area: str, tools: Iterable[Tool]) -> AgentSkill:
    listed = list(tools)
    lines = "; ".join(f"{t.name}: {summary_of(t)}" for t in listed)
    return AgentSkill(
        id=area,
        name=area_name(area),
        description=f"{len(listed)} tools. Call one with a data part naming it. {lines}",
        tags=[area, "tools"],
        examples=[json.dumps(call_example(t)) for t in listed],
    )


def skills(registry: ToolRegistry) -> list[AgentSkill]:
    """One skill per area, over every tool an agent may call (administrator-only tools left out)."""
    return [
        _skill(area, tools) for area, tools in tools_by_area(registry, lambda t: not t.admin_only).items()
    ]


def agent_card(base_url: str, skill_list: Iterable[AgentSkill]) -> AgentCard:
    """The card for a server reachable at ``base_url`` (absolute, no trailing slash)."""
    rpc_url = base_url + A2A_PATH
    return AgentCard(
        name="aiserve",
        description=DESCRIPTION,
        version=__version__,
        provider=AgentProvider(organization="aiserve", url=base_url),
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=MODES,
        default_output_modes=MODES,
        skills=list(skill_list),
        supported_interfaces=[
            AgentInterface(url=rpc_url, protocol_binding=TransportProtocol.JSONRPC, protocol_version=version)
            for version in (PROTOCOL_VERSION_1_0, PROTOCOL_VERSION_0_3)
        ],
        security_schemes={
            BEARER: SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="bearer",
                    description="An access token from POST /api/v1/auth/login, or an API key (ak_live_...).",
                )
            )
        },
        security_requirements=[SecurityRequirement(schemes={BEARER: StringList(list=[])})],
    )
