"""A tool call as the agent protocols spell it: an object that names a tool and holds its arguments.

A2A data parts and the contents of the agent door's messages spell it alike, under keys of their own, and
word a malformed call their own way; ``CallSyntax`` says how, and ``CallSyntax.read`` is the one parser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiserve_mcp.core.errors import ValidationFailed


@dataclass(frozen=True)
class ToolCall:
    """A tool by name (at the agent door, maybe a name that lists the tools) and its raw arguments."""

    name: str
    arguments: dict[str, Any]


class Flaw(Enum):
    """What makes a call object malformed."""

    NAMELESS = "no tool name (or an empty one)"
    NAME_NOT_TEXT = "a tool name that is not text"
    ARGUMENTS_NOT_OBJECT = "arguments that are not an object"


MalformedCallError = Callable[[Flaw, str | None], ValidationFailed]
"""The error a protocol answers a malformed call with, from its flaw and the tool's name when known."""


def _first(data: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((data[k] for k in keys if k in data), None)


@dataclass(frozen=True)
class CallSyntax:
    """How one protocol spells a call: the keys that may name the tool and those that may hold its
    arguments (the first key present wins), and the error it answers a malformed call with. Arguments
    that are ``null`` or absent are none; with ``lenient_arguments`` so is any empty value (``[]``,
    ``""``, ``0``)."""

    name_keys: tuple[str, ...]
    argument_keys: tuple[str, ...]
    error_for: MalformedCallError
    lenient_arguments: bool = False

    def names_a_tool(self, data: Mapping[str, Any]) -> bool:
        return any(k in data for k in self.name_keys)

    def read(self, data: Mapping[str, Any], default: str | None = None) -> ToolCall:
        """The call ``data`` spells; an empty or missing name calls ``default`` when there is one."""
        name = _first(data, self.name_keys) or default
        if name is None:
            raise self.error_for(Flaw.NAMELESS, None)
        if not isinstance(name, str):
            raise self.error_for(Flaw.NAME_NOT_TEXT, None)
        arguments = _first(data, self.argument_keys)
        if arguments is None or (self.lenient_arguments and not arguments):
            arguments = {}
        if not isinstance(arguments, dict):
            raise self.error_for(Flaw.ARGUMENTS_NOT_OBJECT, name)
        return ToolCall(name, arguments)
