"""The conformance suite's fixtures that ask the client, served with the others
(``aiserve_mcp.dev.mcp_conformance``) only with ``AISERVE_MCP_CONFORMANCE_FIXTURES=1``.

Protocol 2025-11-25 (``test_sampling``, ``test_elicitation``, ``test_elicitation_sep1034_defaults``,
``test_elicitation_sep1330_enums``): the tool sends ``sampling/createMessage`` or ``elicitation/create``
to the client mid-call and answers with its reply, as the suite's reference server does; that needs a
channel for server requests (a Streamable HTTP session, legacy SSE, stdio).

Protocol 2026-07-28 (``test_input_required_result_*`` tools and prompt): each answers a call without
the inputs it needs with an ``InputRequiredResult`` (elicitation, sampling or ``roots/list`` requests,
keyed by name), and the call retried with ``inputResponses`` (and the ``requestState`` it was given) with
a complete result. The product's request-state boundary seals every ``requestState`` these return and
opens it on the retry, so a tampered one is refused (-32602) before a fixture sees it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from mcp import types
from mcp.server import ServerRequestContext
from mcp.shared.exceptions import MCPError

Context = ServerRequestContext[object]
Answer = types.CallToolResult | types.InputRequiredResult
Responses = Mapping[str, types.InputResponse]
PROMPT: Final = "test_input_required_result_prompt"


def _said(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def string_field(description: str, **more: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **more}


def _choices(values: str, titles: str) -> list[dict[str, str]]:
    return [
        {"const": f"{values}{i}", "title": f"{t} {titles}"}
        for i, t in enumerate(("First", "Second", "Third"), 1)
    ]


def form(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or []}


ELICITATION_FORM: Final = form({"response": string_field("User's response")}, required=["response"])
DEFAULTS_FORM: Final = form(
    {
        "name": string_field("User name", default="John Doe"),
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": string_field("User status", enum=["active", "inactive", "pending"], default="active"),
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    }
)
OPTIONS: Final = ["option1", "option2", "option3"]
ENUMS_FORM: Final = form(
    {
        "untitledSingle": string_field("Select one option", enum=OPTIONS),
        "titledSingle": string_field("Select one option with titles", oneOf=_choices("value", "Option")),
        "legacyEnum": string_field(
            "Select one option (legacy)",
            enum=["opt1", "opt2", "opt3"],
            enumNames=["Option One", "Option Two", "Option Three"],
        ),
        "untitledMulti": {
            "type": "array",
            "description": "Select multiple options",
            "minItems": 1,
            "maxItems": 3,
            "items": {"type": "string", "enum": OPTIONS},
        },
        "titledMulti": {
            "type": "array",
            "description": "Select multiple options with titles",
            "minItems": 1,
            "maxItems": 3,
            "items": {"anyOf": _choices("value", "Choice")},
        },
    }
)


async def sampling(ctx: Context, args: dict[str, Any]) -> types.CallToolResult:
    prompt = _said(str(args.get("prompt", "")))
    try:
        sampled = await ctx.session.create_message(
            [types.SamplingMessage(role="user", content=prompt)],
            max_tokens=100,
            related_request_id=ctx.request_id,
        )
    except MCPError as exc:
        return types.CallToolResult(content=[_said(f"Sampling not supported or error: {exc}")])
    answer = sampled.content.text if isinstance(sampled.content, types.TextContent) else "No response"
    return types.CallToolResult(content=[_said(f"LLM response: {answer}")])


def eliciting(
    reply: str, message: str | None, schema: dict[str, Any]
) -> Callable[[Context, dict[str, Any]], Awaitable[types.CallToolResult]]:
    """A fixture that asks ``message`` (None: the call's ``message`` argument) with the form ``schema`` and
    answers ``<reply>: action=..., content={...}``."""

    async def elicit(ctx: Context, args: dict[str, Any]) -> types.CallToolResult:
        asked = message if message is not None else str(args.get("message", ""))
        try:
            answer = await ctx.session.elicit_form(asked, schema, ctx.request_id)
        except MCPError as exc:
            return types.CallToolResult(content=[_said(f"Elicitation not supported or error: {exc}")])
        content = json.dumps(answer.content or {}, separators=(",", ":"))
        return types.CallToolResult(content=[_said(f"{reply}: action={answer.action}, content={content}")])

    return elicit


def _elicit(message: str, field: str, kind: str = "string") -> types.ElicitRequest:
    schema = {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    return types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))


def _sample(text: str, max_tokens: int) -> types.CreateMessageRequest:
    message = types.SamplingMessage(role="user", content=types.TextContent(type="text", text=text))
    return types.CreateMessageRequest(
        params=types.CreateMessageRequestParams(messages=[message], max_tokens=max_tokens)
    )


def _roots() -> types.ListRootsRequest:
    return types.ListRootsRequest(params=None)


def _asking(requests: dict[str, types.InputRequest], state: dict[str, Any] | None = None) -> Answer:
    return types.InputRequiredResult(
        input_requests=requests, request_state=json.dumps(state) if state is not None else None
    )


def _done(text: str) -> Answer:
    return types.CallToolResult(content=[_said(text)])


def _field(response: types.InputResponse | None, name: str) -> str:
    """A field of an accepted elicitation's answer ("" when there is none)."""
    content = response.content if isinstance(response, types.ElicitResult) else None
    return str((content or {}).get(name, ""))


def _sampled(response: types.InputResponse | None) -> str | None:
    content = response.content if isinstance(response, types.CreateMessageResult) else None
    return content.text if isinstance(content, types.TextContent) else None


def _root_count(response: types.InputResponse | None) -> int:
    return len(response.roots) if isinstance(response, types.ListRootsResult) else 0


def _state(params: types.CallToolRequestParams) -> dict[str, Any]:
    return dict(json.loads(params.request_state)) if params.request_state else {}


NAME: Final = _elicit("What is your name?", "name")
CONFIRM: Final = _elicit("Please confirm", "ok", "boolean")


async def _elicitation(ctx: Context, params: types.CallToolRequestParams, got: Responses) -> Answer:
    return (
        _done(f"Hello, {_field(got['user_name'], 'name')}!")
        if "user_name" in got
        else _asking({"user_name": NAME})
    )


async def _sampling(ctx: Context, params: types.CallToolRequestParams, got: Responses) -> Answer:
    if "sample_request" in got:
        return _done(f"Sampling result: {_sampled(got['sample_request']) or 'no response'}")
    return _asking({"sample_request": _sample("What is the capital of France?", 100)})


async def _list_roots(ctx: Context, params: types.CallToolRequestParams, got: Responses) -> Answer:
    if "roots_request" in got:
        return _done(f"Found {_root_count(got['roots_request'])} root(s)")
    return _asking({"roots_request": _roots()})


async def _confirmed(kind: str, answer: str, params: types.CallToolRequestParams, got: Responses) -> Answer:
    confirm = got.get("confirm")
    content = confirm.content if isinstance(confirm, types.ElicitResult) else None
    if _state(params).get("kind") == kind and (content or {}).get("ok") is True:
        return _done(answer)
    return _asking({"confirm": CONFIRM}, {"kind": kind})


async def _request_state(ctx: Context, params: types.CallToolRequestParams, got: Responses) -> Answer:
    return await _confirmed("request-state", "state-ok: requestState validated", params, got)


async def _tampered_state(ctx: Context, params: types.CallToolRequestParams, got: Responses) -> Answer:
    return await _confirmed("tamper-test", "integrity-ok: state verified", params, got)


async def _multiple(ctx: Context, params: types.CallToolRequestParams, got: Responses) -> Answer:
    wanted: dict[str, types.InputRequest] = {
        "user_name": NAME,
        "greeting": _sample("Generate a greeting", 50),
        "client_roots": _roots(),
    }
    if _state(params).get("kind") == "multiple-inputs" and set(wanted) <= set(got):
        name, greeting = _field(got["user_name"], "name"), _sampled(got["greeting"]) or "Hello there!"
        return _done(f"Name: {name}; Greeting: {greeting}; Roots: {_root_count(got['client_roots'])}")
    return _asking(wanted, {"kind": "multiple-inputs"})


async def _multi_round(ctx: Context, params: types.CallToolRequestParams, got: Responses) -> Answer:
    state = _state(params)
    if state.get("round") == 1 and "step1" in got:
        step2 = _elicit("Step 2: What is your favorite color?", "color")
        return _asking({"step2": step2}, {"round": 2, "name": _field(got["step1"], "name")})
    if state.get("round") == 2 and "step2" in got:
        return _done(
            f"Multi-round complete for {state.get('name')} who likes {_field(got['step2'], 'color')}"
        )
    return _asking({"step1": _elicit("Step 1: What is your name?", "name")}, {"round": 1})


async def _capabilities(ctx: Context, params: types.CallToolRequestParams, got: Responses) -> Answer:
    if got:
        return _done(f"capabilities-ok: received {','.join(got)}")
    declared = ctx.session.client_capabilities or types.ClientCapabilities()
    requests: dict[str, types.InputRequest] = {}
    if declared.elicitation is not None:
        requests["elicit_input"] = _elicit("Elicitation input", "value")
    if declared.sampling is not None:
        requests["sample_input"] = _sample("Sample request", 50)
    return _asking(requests) if requests else _done("No supported capabilities declared")


@dataclass(frozen=True)
class RoundTool:
    description: str
    run: Callable[[Context, types.CallToolRequestParams, Responses], Awaitable[Answer]]

    async def __call__(self, ctx: Context, params: types.CallToolRequestParams) -> Answer:
        return await self.run(ctx, params, params.input_responses or {})


ROUND_TOOLS: Final = {
    "test_input_required_result_elicitation": RoundTool("MRTR: asks for a name by elicitation", _elicitation),
    "test_input_required_result_sampling": RoundTool("MRTR: asks the client's model a question", _sampling),
    "test_input_required_result_list_roots": RoundTool("MRTR: asks for the client's roots", _list_roots),
    "test_input_required_result_request_state": RoundTool(
        "MRTR: returns InputRequiredResult with requestState", _request_state
    ),
    "test_input_required_result_multiple_inputs": RoundTool(
        "MRTR: asks for an elicitation, a sample and the roots at once", _multiple
    ),
    "test_input_required_result_multi_round": RoundTool("MRTR: asks in two rounds", _multi_round),
    "test_input_required_result_tampered_state": RoundTool(
        "MRTR: integrity-protected requestState", _tampered_state
    ),
    "test_input_required_result_capabilities": RoundTool(
        "MRTR: asks only for what the client declared", _capabilities
    ),
}

PROMPT_SPEC: Final = types.Prompt(
    name=PROMPT, description="A prompt that asks the client for its context first"
)


def round_prompt(params: types.GetPromptRequestParams) -> types.GetPromptResult | types.InputRequiredResult:
    """``test_input_required_result_prompt``: asks for a context, then answers a prompt that uses it."""
    got = params.input_responses or {}
    if "user_context" not in got:
        ask = _elicit("What context should the prompt use?", "context")
        return types.InputRequiredResult(input_requests={"user_context": ask})
    text = types.TextContent(
        type="text", text=f"Prompt with context: {_field(got['user_context'], 'context')}"
    )
    return types.GetPromptResult(messages=[types.PromptMessage(role="user", content=text)])
