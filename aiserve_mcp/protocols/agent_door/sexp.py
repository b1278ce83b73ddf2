"""S-expressions, KQML's own syntax: read (never evaluated) and written."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, TypeAlias

from aiserve_mcp.core.errors import ValidationFailed

MAX_SEXP_DEPTH = 32
MAX_SEXP_CHARS = 1024 * 1024


@dataclass(frozen=True)
class Symbol:
    """A bare word of an s-expression: a performative, a ``:keyword``, an agent name."""

    name: str


SExp: TypeAlias = Symbol | str | int | float | bool | list["SExp"] | None

_INTEGER = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_ATOMS: dict[str, SExp] = {"true": True, "false": False, "null": None, "nil": None}
_DELIMITERS = frozenset('()"')


def _atom(token: str) -> SExp:
    if token in _ATOMS:
        return _ATOMS[token]
    try:
        if _INTEGER.fullmatch(token):
            return int(token)
        if _FLOAT.fullmatch(token):
            return float(token)
    except ValueError:
        raise ValidationFailed(f"s-expression: the number {token[:20]}... is too long") from None
    return Symbol(token)


def parse_sexp(text: str) -> SExp:
    """One s-expression: lists, ``"strings"`` (a backslash escapes the next character), numbers,
    ``true``/``false``/``null``/``nil`` and symbols. Never evaluates anything; refuses text over
    ``MAX_SEXP_CHARS``, nesting over ``MAX_SEXP_DEPTH`` and unbalanced parentheses."""
    if len(text) > MAX_SEXP_CHARS:
        raise ValidationFailed(f"s-expression: longer than {MAX_SEXP_CHARS} characters")
    stack: list[list[SExp]] = []
    top: list[SExp] = []
    i, end = 0, len(text)
    while i < end:
        char = text[i]
        if char.isspace():
            i += 1
            continue
        if top and not stack:
            raise ValidationFailed("s-expression: text after the end of the expression")
        if char == "(":
            if len(stack) >= MAX_SEXP_DEPTH:
                raise ValidationFailed(f"s-expression: nested deeper than {MAX_SEXP_DEPTH} levels")
            stack.append([])
            i += 1
            continue
        if char == ")":
            if not stack:
                raise ValidationFailed("s-expression: unbalanced parentheses (a ')' closes nothing)")
            value: SExp = stack.pop()
            i += 1
        elif char == '"':
            chars: list[str] = []
            i += 1
            while i < end and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                if i < end:
                    chars.append(text[i])
                    i += 1
            if i >= end:
                raise ValidationFailed("s-expression: a string is not closed")
            value, i = "".join(chars), i + 1
        else:
            start = i
            while i < end and not text[i].isspace() and text[i] not in _DELIMITERS:
                i += 1
            value = _atom(text[start:i])
        (stack[-1] if stack else top).append(value)
    if stack:
        raise ValidationFailed("s-expression: unbalanced parentheses (a '(' is not closed)")
    if not top:
        raise ValidationFailed("s-expression: empty")
    return top[0]


def format_sexp(value: SExp) -> str:
    """The text of ``value``, read back by ``parse_sexp`` as the same value."""
    if isinstance(value, list):
        return "(" + " ".join(format_sexp(item) for item in value) + ")"
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return json.dumps(value)


def plain(value: SExp) -> Any:
    """An s-expression value as JSON: symbols become their names, lists arrays."""
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value.name if isinstance(value, Symbol) else value


def keyword_pairs(items: list[SExp], where: str) -> dict[str, SExp]:
    if len(items) % 2:
        raise ValidationFailed(f"{where}: parameters come in ':keyword value' pairs")
    pairs: dict[str, SExp] = {}
    for keyword, value in zip(items[::2], items[1::2], strict=True):
        if not (isinstance(keyword, Symbol) and keyword.name.startswith(":") and len(keyword.name) > 1):
            raise ValidationFailed(f"{where}: {format_sexp(keyword)[:40]} is not a ':keyword'")
        pairs[keyword.name[1:].lower()] = value
    return pairs
