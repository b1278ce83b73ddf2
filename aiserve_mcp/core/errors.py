"""One exception tree and one table that renders it everywhere (REST body, MCP ``isError``, JSON-RPC)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class AiserveError(Exception):
    """Base of every error a caller may see: ``message`` is safe to show, ``details`` is structured."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ValidationFailed(AiserveError):
    """The input does not fit the tool's schema or rules."""


class AuthRequired(AiserveError):
    """No credentials were sent."""


class AuthInvalid(AiserveError):
    """Credentials were sent but are wrong, expired, revoked or tampered with."""


class Forbidden(AiserveError):
    """The caller is known but may not do this (missing scope, not an admin, not the owner)."""


class NotFound(AiserveError):
    """The resource does not exist or does not belong to the caller."""


class Conflict(AiserveError):
    """The resource already exists."""


class PayloadTooLarge(AiserveError):
    """The request body is larger than this server accepts."""


class RateLimited(AiserveError):
    """Too many requests in the current window."""

    def __init__(self, message: str, retry_after_s: int, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details)
        self.retry_after_s = retry_after_s


class QuotaExceeded(AiserveError):
    """A storage or upload quota is exhausted."""


class SpendingLimit(AiserveError):
    """A spending guardrail refuses the action. Its body also carries the spec's check fields at the top
    level: ``allowed`` (false), ``violations`` (window, spent, limit) and ``spent``."""

    def __init__(self, message: str, violations: list[dict[str, Any]], spent: float) -> None:
        super().__init__(message, {"violations": violations})
        self.extra: dict[str, Any] = {"allowed": False, "violations": violations, "spent": spent}


class ApprovalRequired(AiserveError):
    """The caller's approval policy holds this action for its owner's decision; nothing was done, reserved
    or spent. ``details`` is ``{"approval": {...}}``, the pending approval (its ``id``, ``status``,
    ``action``, ``arguments``, ``amount``, ``description``, ``expires_at`` and ``url``), which the body also
    carries at the top level; REST answers it with ``202 Accepted``."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message, details)
        self.approval_id: str = details["approval"]["id"]
        self.extra: dict[str, Any] = {"approval": details["approval"]}


class InsufficientCredits(AiserveError):
    """The credit balance cannot cover the action."""


class PaymentDeclined(AiserveError):
    """The card issuer or the payment gateway refused a payment."""


class NotImplementedYet(AiserveError):
    """The route is part of the API but this server does not provide it yet."""


class ServiceUnavailable(AiserveError):
    """A dependency the action needs is down or not configured. ``retry_after_s`` says when to try again
    when the dependency is expected back (an outage), and is sent as ``Retry-After``."""

    def __init__(
        self, message: str, details: dict[str, Any] | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message, details)
        self.retry_after_s = retry_after_s


class UpstreamFailed(AiserveError):
    """A service this platform calls (a GPU marketplace, a rented instance) failed or did not answer."""


class UpstreamTimeout(UpstreamFailed):
    """A service this platform calls did not answer in time."""


class InternalError(AiserveError):
    """An unexpected failure; the message never carries internals."""


@dataclass(frozen=True)
class ErrorKind:
    """How one error class renders: HTTP status, the spec's error code, and a JSON-RPC error code."""

    http_status: int
    code: str
    jsonrpc_code: int


ERROR_TABLE: dict[type[AiserveError], ErrorKind] = {
    ApprovalRequired: ErrorKind(202, "APPROVAL_REQUIRED", -32010),
    ValidationFailed: ErrorKind(400, "VALIDATION_ERROR", -32602),
    AuthRequired: ErrorKind(401, "AUTH_REQUIRED", -32001),
    AuthInvalid: ErrorKind(401, "AUTH_INVALID", -32001),
    SpendingLimit: ErrorKind(402, "SPENDING_LIMIT", -32002),
    InsufficientCredits: ErrorKind(402, "INSUFFICIENT_CREDITS", -32002),
    PaymentDeclined: ErrorKind(402, "PAYMENT_DECLINED", -32002),
    Forbidden: ErrorKind(403, "FORBIDDEN", -32003),
    NotFound: ErrorKind(404, "NOT_FOUND", -32004),
    Conflict: ErrorKind(409, "CONFLICT", -32009),
    PayloadTooLarge: ErrorKind(413, "PAYLOAD_TOO_LARGE", -32013),
    RateLimited: ErrorKind(429, "RATE_LIMITED", -32029),
    QuotaExceeded: ErrorKind(429, "QUOTA_EXCEEDED", -32029),
    InternalError: ErrorKind(500, "INTERNAL_ERROR", -32603),
    UpstreamFailed: ErrorKind(502, "UPSTREAM_ERROR", -32000),
    UpstreamTimeout: ErrorKind(504, "UPSTREAM_TIMEOUT", -32000),
    NotImplementedYet: ErrorKind(501, "NOT_IMPLEMENTED", -32601),
    ServiceUnavailable: ErrorKind(503, "SERVICE_UNAVAILABLE", -32000),
}


def kind_of(error: AiserveError) -> ErrorKind:
    """The table row for ``error``'s class (its nearest listed ancestor)."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return ERROR_TABLE[InternalError]


def error_body(error: AiserveError) -> dict[str, Any]:
    """The spec's error body: ``{"error": message, "code": CODE, "details": {...}}``."""
    body: dict[str, Any] = {"error": error.message, "code": kind_of(error).code}
    if error.details:
        body["details"] = error.details
    if isinstance(error, SpendingLimit | ApprovalRequired):
        body.update(error.extra)
    return body


def error_headers(error: AiserveError) -> dict[str, str]:
    """HTTP headers an error carries (``Retry-After`` when it says when to retry, ``WWW-Authenticate`` for
    401)."""
    retry_after = getattr(error, "retry_after_s", None)
    if isinstance(retry_after, int):
        return {"Retry-After": str(retry_after)}
    if isinstance(error, AuthRequired | AuthInvalid):
        return {"WWW-Authenticate": 'Bearer realm="aiserve"'}
    return {}
