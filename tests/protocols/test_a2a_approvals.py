"""Approvals asked the A2A way, with the a2a-sdk client against a served app and a local vast.ai: a held
call leaves its task INPUT_REQUIRED with the question, and a message on the same task decides it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from a2a.helpers import get_data_parts, get_text_parts, new_data_part
from a2a.types import Message, Part, Role, SendMessageRequest, Task, TaskState

from aiserve_mcp.core.settings import Settings
from tests.protocols.test_a2a import COMPLETED, a2a, artifact_data, call, run
from tests.protocols.test_mcp_approvals import QUESTION, RENT, Market, market_with_approvals

INPUT_REQUIRED, REJECTED = TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_REJECTED


@pytest.fixture
async def market(settings: Settings) -> AsyncIterator[Market]:
    async with market_with_approvals(settings) as started:
        yield started


def reply(task: Task, *parts: Part) -> SendMessageRequest:
    """A message on ``task`` (same task and context ids)."""
    message = Message(
        role=Role.ROLE_USER,
        message_id=str(uuid.uuid4()),
        task_id=task.id,
        context_id=task.context_id,
        parts=list(parts),
    )
    return SendMessageRequest(message=message)


def asked_approval(task: Task) -> dict[str, Any]:
    """The approval an INPUT_REQUIRED task asks about (its status message's data part)."""
    assert task.status.state == INPUT_REQUIRED, task
    [body] = get_data_parts(list(task.status.message.parts))
    assert isinstance(body, dict) and body["code"] == "APPROVAL_REQUIRED"
    approval: dict[str, Any] = body["approval"]
    return approval


async def test_approve_on_the_task_completes_it_with_the_contract(market: Market) -> None:
    async with a2a(market.url, market.key) as client:
        held = await run(client, call("rent_gpu_instance", RENT))
        approval = asked_approval(held)
        [text] = get_text_parts(list(held.status.message.parts))
        assert text.startswith(QUESTION) and '{"decision": "approve"}' in text and approval["url"] in text
        assert approval["status"] == "pending" and market.rentals == 0

        unclear = await run(client, reply(held, Part(text="maybe later")))  # not a decision: asked again
        assert unclear.id == held.id and asked_approval(unclear)["id"] == approval["id"]

        done = await run(client, reply(held, new_data_part({"decision": "approve"})))
    assert done.id == held.id and done.status.state == COMPLETED
    contract = artifact_data(done)
    assert contract["offer_id"] == "101" and contract["duration_hours"] == 3
    assert market.rentals == 1
    [stored] = await market.approvals()
    assert stored["id"] == approval["id"] and stored["status"] == "executed" and stored["result"] == contract


async def test_deny_on_the_task_rejects_it_and_rents_nothing(market: Market) -> None:
    async with a2a(market.url, market.key) as client:
        held = await run(client, call("rent_gpu_instance", RENT))
        approval = asked_approval(held)
        rejected = await run(client, reply(held, Part(text="Deny")))
    assert rejected.status.state == REJECTED
    [body] = get_data_parts(list(rejected.status.message.parts))
    assert isinstance(body, dict) and body["code"] == "FORBIDDEN"
    assert body["details"]["approval"] == {**approval, "status": "denied"}
    assert market.rentals == 0 and (await market.approvals())[0]["status"] == "denied"


async def test_a_decision_made_elsewhere_is_what_the_task_reports(market: Market) -> None:
    """The owner approves on the REST API while the task waits: the agent's own approve finds the call
    carried out already and completes with its stored result, renting once."""
    async with a2a(market.url, market.key) as client:
        held = await run(client, call("rent_gpu_instance", RENT))
        approval = asked_approval(held)
        async with httpx.AsyncClient(base_url=market.url) as http:
            decided = await http.post(
                f"/api/v1/approvals/{approval['id']}",
                json={"decision": "approve"},
                headers=market.owner.headers,
            )
        assert decided.status_code == 200, decided.text
        done = await run(client, reply(held, new_data_part({"decision": "deny"})))
    assert done.status.state == COMPLETED and artifact_data(done) == decided.json()["result"]
    assert market.rentals == 1
