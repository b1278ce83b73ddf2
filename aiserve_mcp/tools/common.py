"""Field types shared by several tool areas."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _normalise_email(value: str) -> str:
    value = value.strip().lower()
    if not _EMAIL.match(value):
        raise ValueError("must be an email address like user@example.com")
    return value


def _require_zone(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("must carry a time zone, e.g. 2027-12-31T23:59:59Z")
    return value.astimezone(UTC) if value is not None else None


Email = Annotated[str, Field(max_length=320, description="Email address."), AfterValidator(_normalise_email)]
AwareDatetime = Annotated[datetime | None, AfterValidator(_require_zone)]


class Input(BaseModel):
    """Base of tool inputs: unknown fields are refused so that a misspelt argument is never ignored."""

    model_config = ConfigDict(extra="forbid")


class NoInput(Input):
    """A tool that takes no arguments."""
