"""What a call held for approval answers once its channel has asked: the agent protocols continue the call
with the decision, and answer with the held tool's result or with one error body."""

from __future__ import annotations

from typing import Any, Final

from aiserve_mcp.core.errors import AiserveError, ApprovalRequired, Forbidden, error_body
from aiserve_mcp.tools.approvals import ApprovalOut

VIEW: Final = frozenset({"id", "status", "action", "arguments", "amount", "description", "expires_at", "url"})
UNDECIDED: Final = frozenset({"pending", "executing"})


def view_of(approval: ApprovalOut) -> dict[str, Any]:
    """The approval as ``ApprovalRequired`` shows it (JSON values)."""
    return approval.model_dump(mode="json", include=set(VIEW))


def refusal_of(approval: ApprovalOut) -> dict[str, Any] | None:
    """None when the held call ran (its output is ``approval.result``); else the error body it answers
    with: the tool's own error when it failed, ``FORBIDDEN`` when the approval was denied or expired
    (nothing was done or spent), ``APPROVAL_REQUIRED`` while it is still pending or being carried out."""
    if approval.status == "executed":
        return None
    if approval.status == "failed" and approval.error is not None:
        return approval.error
    details = {"approval": view_of(approval)}
    error: AiserveError
    if approval.status in UNDECIDED:
        error = ApprovalRequired(
            f"{approval.description}: the approval is {approval.status}; poll get_approval with id "
            f"'{approval.id}' for the outcome",
            details,
        )
    else:
        error = Forbidden(
            f"{approval.description}: the approval was {approval.status}, so nothing was done or spent",
            details,
        )
    return error_body(error)
