"""An A2A tool call that its owner must approve (``ApprovalRequired``) waits for the decision on its task.

The task goes to ``TASK_STATE_INPUT_REQUIRED``; its status message asks the question: a text part, and a
data part with the error body ``{"error", "code": "APPROVAL_REQUIRED", "approval": {...}}`` (the pending
approval: ``id``, ``action``, ``arguments``, ``amount``, ``description``, ``expires_at``, ``url``). The next
message on the task (same ``taskId`` and ``contextId``) answers it with a data part ``{"decision":
"approve"}`` or ``{"decision": "deny"}``, or the text ``approve`` or ``deny``. Approve carries the approval
out (once, however many decide it at the same time): the task completes with the tool's result as its
artifact, or fails with the error body when the action failed. Deny, or an approval that expired
meanwhile, rejects the task (``TASK_STATE_REJECTED``). A message that answers neither way leaves the task
waiting, asking again. The owner can also decide on the console (the approval's ``url``) or through the
REST API; the next message on the task then reports that outcome.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from a2a.helpers import get_data_parts, get_text_parts, new_data_part
from a2a.server.tasks import TaskUpdater
from a2a.types.a2a_pb2 import Message, Part, Task, TaskState

from aiserve_mcp.core.errors import ERROR_TABLE, ApprovalRequired, error_body
from aiserve_mcp.protocols.a2a.replies import body_message, complete_with, json_safe
from aiserve_mcp.protocols.approval_outcomes import UNDECIDED, refusal_of
from aiserve_mcp.tools.approvals import ApprovalOut, carry_out
from aiserve_mcp.tools.registry import ToolContext

CODE: Final = ERROR_TABLE[ApprovalRequired].code
Decision = Literal["approve", "deny"]
DECISIONS: Final[dict[str, Decision]] = {"approve": "approve", "deny": "deny"}
HOW_TO_ANSWER: Final = (
    'Answer on this task with a data part {"decision": "approve"} or {"decision": "deny"} '
    "(or the text approve or deny)."
)


def _asking(view: dict[str, Any], lead: str) -> list[Part]:
    """A question on the approval ``view``: text, and the ``APPROVAL_REQUIRED`` body as a data part."""
    body = json_safe(error_body(ApprovalRequired(f"{lead} {HOW_TO_ANSWER}", {"approval": view})))
    return [Part(text=f"{body['error']} The owner can also decide at {view['url']}"), new_data_part(body)]


def question(updater: TaskUpdater, pending: ApprovalRequired) -> Message:
    """The status message of a task that waits for the approval ``pending`` holds."""
    view = json_safe(pending.details["approval"])
    return updater.new_agent_message(_asking(view, f"{view['description']}?"))


def _approval_in(message: Message) -> dict[str, Any] | None:
    for data in get_data_parts(list(message.parts)):
        if isinstance(data, dict) and data.get("code") == CODE and isinstance(data.get("approval"), dict):
            approval: dict[str, Any] = data["approval"]
            return approval
    return None


def awaited_question(task: Task | None) -> dict[str, Any] | None:
    """The approval a task waiting for input asks about (its latest question), or None."""
    if task is None or task.status.state != TaskState.TASK_STATE_INPUT_REQUIRED:
        return None
    asked = [task.status.message] if task.status.HasField("message") else []
    for message in [*asked, *reversed(task.history)]:
        approval = _approval_in(message)
        if approval is not None:
            return approval
    return None


def decision_in(message: Message | None) -> Decision | None:
    """``approve`` or ``deny`` when ``message`` says one of them (in a data part, or as its text)."""
    parts = list(message.parts) if message is not None else []
    said = [d.get("decision") for d in get_data_parts(parts) if isinstance(d, dict)]
    said += [text.strip().lower() for text in get_text_parts(parts)]
    return next((DECISIONS[word] for word in said if isinstance(word, str) and word in DECISIONS), None)


async def answer(
    ctx: ToolContext, updater: TaskUpdater, approval: dict[str, Any], message: Message | None
) -> None:
    """Carry out the decision ``message`` gives on ``approval`` and end the task with its outcome."""
    decision = decision_in(message)
    if decision is None:
        lead = f"That is not a decision on: {approval['description']}?"
        await updater.requires_input(updater.new_agent_message(_asking(approval, lead)))
        return
    await _settle(updater, await carry_out(ctx, approval["id"], decision))


async def _settle(updater: TaskUpdater, approval: ApprovalOut) -> None:
    refusal = refusal_of(approval)
    if refusal is None:
        await complete_with(updater, approval.action, approval.result or {})
    elif approval.status == "failed":
        await updater.failed(body_message(updater, refusal))
    elif approval.status in UNDECIDED:
        await updater.requires_input(body_message(updater, refusal))
    else:
        await updater.reject(body_message(updater, refusal))
