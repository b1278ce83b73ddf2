"""Field types shared by several tool areas."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")


def _normalise_email(value: str) -> str:
    value = value.strip().lower()
    if not _EMAIL.match(value):
        raise ValueError("must be an email address like user@example.com")
    return value


def _require_zone(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("must carry a time zone, e.g. 2027-12-31T23:59:59Z")
    return value.astimezone(UTC) if value is not None else None


def _json_number(value: object) -> object:
    """Refuse what JSON does not carry as a number (strings, booleans) before a numeric check converts it."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError(f"must be a JSON number, not {type(value).__name__} {value!r}")
    return value


@dataclass(frozen=True)
class DecimalNumber:
    """An exact decimal amount sent as a JSON number: ``Annotated[Decimal, DecimalNumber(...)]``.

    Strings and booleans are refused rather than converted; at most ``places`` decimal places are
    accepted. The schema says the same: a number between the bounds whose ``multipleOf`` is the smallest
    step (``0.01`` for two places)."""

    places: int
    le: int
    gt: int | None = None
    ge: int | None = None

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        gt, ge = (None if bound is None else Decimal(bound) for bound in (self.gt, self.ge))
        decimal = core_schema.decimal_schema(gt=gt, ge=ge, le=Decimal(self.le), decimal_places=self.places)
        return core_schema.no_info_before_validator_function(_json_number, decimal)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        bounds = {"exclusiveMinimum": self.gt, "minimum": self.ge, "maximum": self.le}
        return {
            "type": "number",
            **{keyword: bound for keyword, bound in bounds.items() if bound is not None},
            "multipleOf": 10.0**-self.places,
        }


@dataclass(frozen=True)
class IntegerNumber:
    """An integer from ``ge`` to ``le`` sent as a JSON number: ``Annotated[int, IntegerNumber(...)]``.

    ``2`` and ``2.0`` (an integer to JSON Schema) are accepted; strings and booleans are refused rather
    than converted."""

    ge: int
    le: int

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(
            _json_number, core_schema.int_schema(ge=self.ge, le=self.le)
        )


class Merged:
    """The attributes of several objects read as one object's, ``values`` first, then each source in
    order: what an output model validates ``from_attributes`` when its fields come from a feature's row
    and from elsewhere (figures measured in this process, a secret shown once):
    ``ModelDetails.model_validate(Merged(row, measured))``."""

    def __init__(self, *sources: object, **values: object) -> None:
        self._sources = (SimpleNamespace(**values), *sources)

    def __getattr__(self, name: str) -> Any:
        for source in self.__dict__["_sources"]:
            if hasattr(source, name):
                return getattr(source, name)
        raise AttributeError(name)


def any_case_pattern(words: Iterable[str]) -> str:
    """A regular expression (ECMA 262 and Python alike) that matches exactly one of ``words`` (letters and
    digits) in any letter case: what a case-insensitive comparison accepts, for a schema's ``pattern``."""
    spelled = ("".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in w) for w in words)
    return f"^(?:{'|'.join(spelled)})$"


Email = Annotated[
    str,
    Field(max_length=320, description="Email address.", json_schema_extra={"format": "email"}),
    AfterValidator(_normalise_email),
]
AwareDatetime = Annotated[datetime | None, AfterValidator(_require_zone)]
# Text that is stored or looked up: PostgreSQL text cannot hold the NUL character (every Input refuses it;
# the schema says so with this pattern).
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, StringConstraints(pattern=NO_NUL)]
Offset = Annotated[int, IntegerNumber(ge=0, le=2**31 - 1), Field(description="Items to skip (paging).")]


def unstorable_text(value: object, path: str = "") -> str | None:
    """The path of the first string in ``value`` (keys included, through dicts and lists) that holds a NUL
    character or a lone surrogate, or None. Neither can be stored as text (PostgreSQL refuses both), and
    neither belongs in any name, id or setting."""
    if isinstance(value, str):
        if "\x00" in value:
            return path or "(value)"
        try:
            value.encode()
        except UnicodeEncodeError:
            return path or "(value)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = unstorable_text(key, where) or unstorable_text(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, int | float):
                found = unstorable_text(item, f"{path}.{index}" if path else str(index))
                if found:
                    return found
    return None


def _no_nul(schema: dict[str, Any]) -> None:
    """Add :data:`NO_NUL` to the free-text strings of ``schema`` (in place; through ``anyOf``, array items
    and map values): strings with no pattern, enum, constant or format of their own."""
    for branch in schema.get("anyOf", ()):
        _no_nul(branch)
    for part in ("items", "additionalProperties"):
        if isinstance(schema.get(part), dict):
            _no_nul(schema[part])
    if schema.get("type") == "string" and not {"pattern", "enum", "const", "format"} & set(schema):
        schema["pattern"] = NO_NUL


class Input(BaseModel):
    """Base of tool inputs: unknown fields are refused so that a misspelt argument is never ignored, and
    no text (anywhere in the arguments) may hold a NUL character or a lone surrogate. ``tensor_fields``
    names fields of numeric data that the model runtime checks itself (skipped here: walking a large
    tensor element by element would cost more than the prediction)."""

    model_config = ConfigDict(extra="forbid")
    tensor_fields: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The schema states the text rule too: each free-text property gets a pattern without NUL."""
        json_schema = handler(schema)
        resolved = handler.resolve_ref_schema(json_schema)
        for name, prop in resolved.get("properties", {}).items():
            if name not in cls.tensor_fields:
                _no_nul(prop)
        return json_schema

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        if isinstance(data, dict):
            texts = {k: v for k, v in data.items() if k not in cls.tensor_fields}
            found = unstorable_text(texts)
            if found:
                raise ValueError(f"{found}: text must not contain NUL characters or lone surrogates")
        return data


class NoInput(Input):
    """A tool that takes no arguments."""
