"""Who is calling, and the permission scopes a caller can hold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SCOPES: dict[str, str] = {
    "account:read": "Read your profile, API keys and account export.",
    "account:write": "Create and revoke API keys.",
    "gpu:read": "Search GPU offers and read your instances and preferences.",
    "gpu:write": "Rent and destroy GPU instances, set preferences, proxy to instances.",
    "lb:read": "Read load-balancer loads and strategy.",
    "lb:write": "Change your load-balancing strategy.",
    "billing:read": "Read credits and transactions.",
    "billing:write": "Make payments.",
    "guardrails:read": "Read spending limits and spending.",
    "guardrails:write": "Record spending and lower limits.",
    "guardrails:admin": "Raise limits and reset spending windows.",
    "models:read": "List models and run inference.",
    "models:write": "Upload and delete models.",
    "system:read": "Read platform health and statistics.",
    "admin": "Use the administrator routes (only an administrator's key can hold it).",
}
# What a key made without naming its scopes does not get: an agent handed such a key cannot lift its own
# spending limits or act as an administrator. Only an explicit request grants them.
WITHHELD_BY_DEFAULT = frozenset({"guardrails:admin", "admin"})


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``scopes`` is ``None`` when every scope is granted (logins, and keys made
    before keys were scoped by default). ``is_admin`` is true only for an administrator's login or a key
    (or OAuth grant) of theirs holding the ``admin`` scope. An OAuth access token (``via="oauth"``) acts
    like an API key: ``grant_id`` names the person's consent for ``client_id``, which holds its scopes
    and its budget."""

    user_id: str
    email: str
    is_admin: bool
    via: Literal["jwt", "api_key", "oauth"]
    scopes: frozenset[str] | None = None
    api_key_id: str | None = None
    session_id: str | None = None
    grant_id: str | None = None
    client_id: str | None = None

    def has_scope(self, scope: str) -> bool:
        return self.scopes is None or scope in self.scopes

    @property
    def rate_limit_key(self) -> str:
        return f"user:{self.user_id}"
