"""The agent door's message formats, read and answered without a server: the s-expressions of KQML,
the tool call a content names, and the replies of the envelope, ACP, FIPA-ACL and KQML."""

from __future__ import annotations

import json

import pytest

from aiserve_mcp.core.errors import NotFound, ValidationFailed
from aiserve_mcp.protocols.agent_door.acp import parse_acp
from aiserve_mcp.protocols.agent_door.envelope import parse_envelope
from aiserve_mcp.protocols.agent_door.fipa import parse_fipa
from aiserve_mcp.protocols.agent_door.kqml import kqml_from_text
from aiserve_mcp.protocols.agent_door.message import NotUnderstood, content_call
from aiserve_mcp.protocols.agent_door.sexp import MAX_SEXP_DEPTH, Symbol, format_sexp, parse_sexp
from aiserve_mcp.protocols.tool_calls import ToolCall

WHOAMI = {"tool": "whoami", "arguments": {}}


def test_sexp_atoms_and_nesting() -> None:
    parsed = parse_sexp(
        '(ask-one :sender "a \\"b\\" \\\\ c" :n -5 :f 2.5e1 :t true :f2 false :z nil (x (y)))'
    )
    assert parsed == [
        Symbol("ask-one"),
        Symbol(":sender"),
        'a "b" \\ c',
        Symbol(":n"),
        -5,
        Symbol(":f"),
        25.0,
        Symbol(":t"),
        True,
        Symbol(":f2"),
        False,
        Symbol(":z"),
        None,
        [Symbol("x"), [Symbol("y")]],
    ]
    assert parse_sexp(format_sexp(parsed)) == parsed
    assert parse_sexp("1_000") == Symbol("1_000")  # Python's int() would take it; the grammar does not


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("(a", "not closed"),
        (")", "closes nothing"),
        ('(a "b)', "string is not closed"),
        ("(a) (b)", "after the end"),
        ("(" * (MAX_SEXP_DEPTH + 1) + ")" * (MAX_SEXP_DEPTH + 1), "deeper than"),
        ("(" + "a " * 600_000 + ")", "longer than"),
        ("9" * 5000, "too long"),
    ],
)
def test_sexp_refusals(text: str, reason: str) -> None:
    with pytest.raises(ValidationFailed, match=reason):
        parse_sexp(text)
    assert parse_sexp("(" * MAX_SEXP_DEPTH + ")" * MAX_SEXP_DEPTH) is not None


# Messages


def test_the_tool_call_of_a_content() -> None:
    assert content_call(WHOAMI) == ToolCall("whoami", {})
    assert content_call('{"action": "predict", "arguments": {"model_id": "m"}}') == ToolCall(
        "predict", {"model_id": "m"}
    )
    assert content_call(None, "capabilities") == ToolCall("capabilities", {})
    for bad in ("not json", "[1]", {"tool": 3}, {"tool": "x", "arguments": [1]}, {}):
        with pytest.raises(NotUnderstood):
            content_call(bad)


def test_envelope_reply_swaps_the_agents() -> None:
    message = parse_envelope({"protocol": "a2a", "from_agent": "a1", "to_agent": "a2", "action": "whoami"})
    assert message.call() == ToolCall("whoami", {})
    reply = message.answer({"ok": 1})
    assert reply.status == 200
    assert json.loads(reply.body) == {
        "protocol": "a2a",
        "from_agent": "a2",
        "to_agent": "a1",
        "action": "whoami",
        "status": "success",
        "result": {"ok": 1},
    }
    refused = parse_envelope({"protocol": "x", "from_agent": "a1", "action": "y"}).refuse(NotFound("gone"))
    assert refused.status == 404
    assert json.loads(refused.body)["from_agent"] == "aiserve"
    assert json.loads(refused.body)["error"] == {"error": "gone", "code": "NOT_FOUND"}
    with pytest.raises(ValidationFailed, match="'data' must be a JSON object"):
        parse_envelope({"protocol": "x", "action": "whoami", "data": [1]}).call()


def test_acp_run_shape() -> None:
    run = parse_acp({"agent_name": "whoami", "input": [{"role": "user", "parts": [{"content": ""}]}]})
    assert run.call() == ToolCall("whoami", {})
    done = json.loads(run.answer({"x": 1}).body)
    assert done["status"] == "completed" and done["error"] is None and done["run_id"] == run.run_id
    assert done["output"] == [
        {"role": "agent/whoami", "parts": [{"content": '{"x": 1}', "content_type": "application/json"}]}
    ]
    assert done["created_at"] <= done["finished_at"]
    via_aiserve = {"agent_name": "aiserve", "input": [{"parts": [{"content": WHOAMI}]}]}
    assert parse_acp(via_aiserve).call() == ToolCall("whoami", {})
    failed = json.loads(run.refuse(NotFound("gone")).body)
    assert failed["status"] == "failed" and failed["output"] == []
    assert failed["error"] == {
        "code": "NOT_FOUND",
        "message": "gone",
        "data": {"error": "gone", "code": "NOT_FOUND"},
    }
    with pytest.raises(ValidationFailed, match="parts"):
        parse_acp({"agent_name": "whoami", "input": [{"role": "user"}]}).call()


def test_fipa_reply_fields() -> None:
    message = parse_fipa(
        {
            "performative": "request",
            "sender": {"name": "a@host"},
            "receiver": [{"name": "aiserve@host"}],
            "content": json.dumps(WHOAMI),
            "conversation-id": "c1",
            "reply-with": "r1",
            "ontology": "gpu",
            "protocol": "fipa-request",
        }
    )
    assert message.call() == ToolCall("whoami", {})
    assert json.loads(message.answer({"x": 1}).body) == {
        "performative": "inform",
        "sender": {"name": "aiserve@host"},
        "receiver": {"name": "a@host"},
        "content": '{"x": 1}',  # text, as the request's content was
        "language": "json",
        "conversation-id": "c1",
        "in-reply-to": "r1",
        "ontology": "gpu",
        "protocol": "fipa-request",
    }
    assert (
        parse_fipa({"performative": "query-ref", "sender": "a", "receiver": "b"}).call().name
        == "capabilities"
    )
    with pytest.raises(NotUnderstood):
        parse_fipa({"performative": "request", "sender": "a", "receiver": "b"}).call()
    cfp = parse_fipa({"performative": "cfp", "sender": "a", "receiver": "b", "content": {}})
    with pytest.raises(NotUnderstood) as refused:
        cfp.call()
    assert json.loads(cfp.refuse(refused.value).body)["performative"] == "not-understood"
    assert json.loads(cfp.refuse(NotFound("x")).body)["performative"] == "failure"


def test_kqml_content_and_sexp_reply() -> None:
    message = kqml_from_text(
        "(ask-one :sender agent-a :receiver aiserve :reply-with q1 :ontology gpu "
        ':content (create_payment :amount -5 :currency "USD" :tags (a "b")))'
    )
    assert message.call() == ToolCall("create_payment", {"amount": -5, "currency": "USD", "tags": ["a", "b"]})
    reply = message.answer({"said": 'a "quoted" \\ word'})
    assert reply.media_type.startswith("text/plain")
    parsed = parse_sexp(reply.body)
    assert isinstance(parsed, list) and parsed[0] == Symbol("tell")
    fields = dict(zip(parsed[1::2], parsed[2::2], strict=True))
    assert fields[Symbol(":sender")] == Symbol("aiserve") and fields[Symbol(":receiver")] == Symbol("agent-a")
    assert fields[Symbol(":in-reply-to")] == Symbol("q1") and fields[Symbol(":ontology")] == Symbol("gpu")
    assert fields[Symbol(":language")] == Symbol("json")
    assert json.loads(str(fields[Symbol(":content")])) == {"said": 'a "quoted" \\ word'}
    assert kqml_from_text('(achieve :sender a :content "{\\"tool\\": \\"whoami\\"}")').call() == ToolCall(
        "whoami", {}
    )
    assert kqml_from_text("(evaluate :sender a :content whoami)").call() == ToolCall("whoami", {})
    assert kqml_from_text('(ask-all :sender a :content "(whoami)")').call() == ToolCall("whoami", {})
    for text in (
        "(tell :sender a :content (whoami))",
        "(ask-one :sender a)",
        "(ask-one :sender a :content (x 1))",
    ):
        with pytest.raises(NotUnderstood):
            kqml_from_text(text).call()


# Through the app
