"""The fixtures the official MCP conformance suite (``@modelcontextprotocol/conformance``) calls, served
beside the product only with ``AISERVE_MCP_CONFORMANCE_FIXTURES=1`` (never in production: they are not
part of the platform).

They reproduce the suite's reference "everything server": tools ``test_simple_text``,
``test_image_content``, ``test_audio_content``, ``test_embedded_resource``,
``test_multiple_content_types``, ``test_tool_with_logging``, ``test_tool_with_progress``,
``test_error_handling``, ``test_missing_capability``, and the ones that ask the client mid-call,
``test_sampling``, ``test_elicitation``, ``test_elicitation_sep1034_defaults`` and
``test_elicitation_sep1330_enums`` (they need a channel for server requests: a Streamable HTTP session,
legacy SSE or stdio; elsewhere they answer that the client cannot be asked); resources ``test://static-text``,
``test://static-binary``, ``test://watched-resource`` (subscribable, never updated) and the template
``test://template/{id}/data``; prompts ``test_simple_prompt``, ``test_prompt_with_arguments``,
``test_prompt_with_embedded_resource`` and ``test_prompt_with_image``; ``logging/setLevel``; and an empty
``completion/complete``. Each wraps the product handler of its method, so product names keep working.

Those that ask the client, and the 2026-07-28 input-required (MRTR) fixtures, are in
``mcp_conformance_asking``. Not served:
``test_reconnection`` (no SSE resumption);
``json_schema_2020_12_tool``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp.shared.exceptions import MCPError

from aiserve_mcp.dev.mcp_conformance_asking import (
    DEFAULTS_FORM,
    ELICITATION_FORM,
    ENUMS_FORM,
    PROMPT,
    PROMPT_SPEC,
    ROUND_TOOLS,
    eliciting,
    form,
    round_prompt,
    sampling,
    string_field,
)

Context = ServerRequestContext[object]

PNG: Final = (  # 1x1 red pixel
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
WAV: Final = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
STEP_S: Final = 0.05
TEMPLATE: Final = "test://template/{id}/data"
WATCHED: Final = "test://watched-resource"
NO_ARGUMENTS: Final = {"type": "object", "properties": {}}


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _image() -> types.ImageContent:
    return types.ImageContent(type="image", data=PNG, mime_type="image/png")


def _embedded(uri: str, mime_type: str, text: str) -> types.EmbeddedResource:
    return types.EmbeddedResource(
        type="resource", resource=types.TextResourceContents(uri=uri, mime_type=mime_type, text=text)
    )


async def _simple_text(ctx: Context, args: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[_text("This is a simple text response for testing.")])


async def _image_content(ctx: Context, args: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[_image()])


async def _audio_content(ctx: Context, args: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[types.AudioContent(type="audio", data=WAV, mime_type="audio/wav")])


async def _embedded_resource(ctx: Context, args: dict[str, Any]) -> types.CallToolResult:
    resource = _embedded("test://embedded-resource", "text/plain", "This is an embedded resource content.")
    return types.CallToolResult(content=[resource])


async def _multiple_content_types(ctx: Context, args: dict[str, Any]) -> types.CallToolResult:
    data = json.dumps({"test": "data", "value": 123})
    return types.CallToolResult(
        content=[
            _text("Multiple content types test:"),
            _image(),
            _embedded("test://mixed-content-resource", "application/json", data),
        ]
    )


async def _with_logging(ctx: Context, args: dict[str, Any]) -> types.CallToolResult:
    for i, message in enumerate(
        ("Tool execution started", "Tool processing data", "Tool execution completed")
    ):
        if i:
            await anyio.sleep(STEP_S)
        log = types.LoggingMessageNotificationParams(level="info", logger="conformance", data=message)
        await ctx.session.send_notification(
            types.LoggingMessageNotification(params=log), related_request_id=ctx.request_id
        )
    return types.CallToolResult(content=[_text("Tool with logging executed successfully")])


async def _with_progress(ctx: Context, args: dict[str, Any]) -> types.CallToolResult:
    for i, done in enumerate((0, 50, 100)):
        if i:
            await anyio.sleep(STEP_S)
        await ctx.session.report_progress(done, 100, f"Completed step {done} of 100")
    return types.CallToolResult(content=[_text("Progress reported: 0, 50 and 100 of 100")])


async def _error_handling(ctx: Context, args: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(
        content=[_text("This tool intentionally returns an error for testing")], is_error=True
    )


async def _missing_capability(ctx: Context, args: dict[str, Any]) -> types.CallToolResult:
    if not ctx.session.check_client_capability(types.ClientCapabilities(sampling=types.SamplingCapability())):
        raise MCPError(
            types.MISSING_REQUIRED_CLIENT_CAPABILITY,
            "MissingRequiredClientCapabilityError",
            {"requiredCapabilities": {"sampling": {}}},
        )
    return types.CallToolResult(content=[_text("Success")])


@dataclass(frozen=True)
class FixtureTool:
    description: str
    run: Callable[[Context, dict[str, Any]], Awaitable[types.CallToolResult]]
    input_schema: dict[str, Any] = field(default_factory=lambda: dict(NO_ARGUMENTS))


TOOLS: Final = {
    "test_simple_text": FixtureTool("Tests simple text content response", _simple_text),
    "test_image_content": FixtureTool("Tests image content response", _image_content),
    "test_audio_content": FixtureTool("Tests audio content response", _audio_content),
    "test_embedded_resource": FixtureTool("Tests embedded resource content response", _embedded_resource),
    "test_multiple_content_types": FixtureTool(
        "Tests response with multiple content types (text, image, resource)", _multiple_content_types
    ),
    "test_tool_with_logging": FixtureTool(
        "Tests tool that emits log messages during execution", _with_logging
    ),
    "test_tool_with_progress": FixtureTool("Tests tool that reports progress notifications", _with_progress),
    "test_error_handling": FixtureTool("Tests error response handling", _error_handling),
    "test_missing_capability": FixtureTool(
        "Requires the client's sampling capability: refused with -32021 when it is not declared",
        _missing_capability,
    ),
    "test_sampling": FixtureTool(
        "Tests server-initiated sampling (LLM completion request)",
        sampling,
        form({"prompt": string_field("The prompt to send to the LLM")}, required=["prompt"]),
    ),
    "test_elicitation": FixtureTool(
        "Tests server-initiated elicitation (user input request)",
        eliciting("User response", None, ELICITATION_FORM),
        form({"message": string_field("The message to show the user")}, required=["message"]),
    ),
    "test_elicitation_sep1034_defaults": FixtureTool(
        "Tests elicitation with default values per SEP-1034",
        eliciting(
            "Elicitation completed", "Please review and update the form fields with defaults", DEFAULTS_FORM
        ),
    ),
    "test_elicitation_sep1330_enums": FixtureTool(
        "Tests elicitation with enum schema improvements per SEP-1330",
        eliciting("Elicitation completed", "Please select options from the enum fields", ENUMS_FORM),
    ),
}

RESOURCES: Final = (
    types.Resource(
        uri="test://static-text",
        name="static-text",
        title="Static Text Resource",
        description="A static text resource for testing",
        mime_type="text/plain",
    ),
    types.Resource(
        uri="test://static-binary",
        name="static-binary",
        title="Static Binary Resource",
        description="A static binary resource (image) for testing",
        mime_type="image/png",
    ),
    types.Resource(
        uri=WATCHED,
        name="watched-resource",
        title="Watched Resource",
        description="A resource that can be subscribed to (it never changes here)",
        mime_type="text/plain",
    ),
)
TEMPLATES: Final = (
    types.ResourceTemplate(
        uri_template=TEMPLATE,
        name="template",
        title="Resource Template",
        description="A resource template with parameter substitution",
        mime_type="application/json",
    ),
)


def _read(uri: str) -> types.ReadResourceResult | None:
    """A fixture resource's contents, or None when ``uri`` is not a fixture."""
    content: types.TextResourceContents | types.BlobResourceContents
    prefix, suffix = TEMPLATE.split("{id}")
    if uri == "test://static-text":
        content = types.TextResourceContents(
            uri=uri, mime_type="text/plain", text="This is the content of the static text resource."
        )
    elif uri == "test://static-binary":
        content = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG)
    elif uri == WATCHED:
        content = types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched resource content")
    elif uri.startswith(prefix) and uri.endswith(suffix) and len(uri) > len(prefix) + len(suffix):
        item = uri[len(prefix) : -len(suffix)]
        data = {"id": item, "templateTest": True, "data": f"Data for ID: {item}"}
        content = types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(data))
    else:
        return None
    return types.ReadResourceResult(contents=[content])


def _argument(name: str, description: str) -> types.PromptArgument:
    return types.PromptArgument(name=name, description=description, required=True)


PROMPTS: Final = (
    types.Prompt(
        name="test_simple_prompt", title="Simple Test Prompt", description="A simple prompt without arguments"
    ),
    types.Prompt(
        name="test_prompt_with_arguments",
        title="Prompt With Arguments",
        description="A prompt with required arguments",
        arguments=[_argument("arg1", "First test argument"), _argument("arg2", "Second test argument")],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        title="Prompt With Embedded Resource",
        description="A prompt that includes an embedded resource",
        arguments=[_argument("resourceUri", "URI of the resource to embed")],
    ),
    types.Prompt(
        name="test_prompt_with_image",
        title="Prompt With Image",
        description="A prompt that includes image content",
    ),
)


def _prompt(name: str, arguments: dict[str, str]) -> types.GetPromptResult | None:
    """A fixture prompt's messages, or None when ``name`` is not a fixture."""
    spec = next((p for p in PROMPTS if p.name == name), None)
    if spec is None:
        return None
    missing = [a.name for a in spec.arguments or () if a.name not in arguments]
    if missing:
        raise MCPError(types.INVALID_PARAMS, f"missing arguments: {', '.join(missing)}")
    content: list[types.ContentBlock]
    if name == "test_simple_prompt":
        content = [_text("This is a simple prompt for testing.")]
    elif name == "test_prompt_with_arguments":
        content = [_text(f"Prompt with arguments: arg1='{arguments['arg1']}', arg2='{arguments['arg2']}'")]
    elif name == "test_prompt_with_embedded_resource":
        embedded = _embedded(arguments["resourceUri"], "text/plain", "Embedded resource content for testing.")
        content = [embedded, _text("Please process the embedded resource above.")]
    else:
        content = [_image(), _text("Please analyze the image above.")]
    return types.GetPromptResult(
        description=spec.description, messages=[types.PromptMessage(role="user", content=c) for c in content]
    )


def _handler(server: Server[object], method: str) -> Callable[[Context, Any], Awaitable[Any]]:
    entry = server.get_request_handler(method)
    assert entry is not None, f"the product serves {method}"
    return entry.handler


def install_conformance_fixtures(server: Server[object]) -> None:
    """Serve the conformance suite's fixtures on ``server`` beside its product tools, resources and
    prompts, plus ``logging/setLevel`` and ``completion/complete``."""
    list_tools, call_tool = _handler(server, "tools/list"), _handler(server, "tools/call")
    list_resources, list_templates = (
        _handler(server, "resources/list"),
        _handler(server, "resources/templates/list"),
    )
    read_resource, subscribe = _handler(server, "resources/read"), _handler(server, "resources/subscribe")
    unsubscribe = _handler(server, "resources/unsubscribe")
    list_prompts, get_prompt = _handler(server, "prompts/list"), _handler(server, "prompts/get")

    async def tools(ctx: Context, params: types.PaginatedRequestParams) -> types.ListToolsResult:
        result: types.ListToolsResult = await list_tools(ctx, params)
        if result.next_cursor is None:
            result.tools += [
                types.Tool(name=name, description=t.description, input_schema=t.input_schema)
                for name, t in TOOLS.items()
            ]
            result.tools += [
                types.Tool(name=name, description=t.description, input_schema=NO_ARGUMENTS)
                for name, t in ROUND_TOOLS.items()
            ]
        return result

    async def call(
        ctx: Context, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        fixture, rounds = TOOLS.get(params.name), ROUND_TOOLS.get(params.name)
        if fixture is not None:
            return await fixture.run(ctx, params.arguments or {})
        if rounds is not None:
            return await rounds(ctx, params)
        result: types.CallToolResult | types.InputRequiredResult = await call_tool(ctx, params)
        return result

    async def resources(ctx: Context, params: types.PaginatedRequestParams) -> types.ListResourcesResult:
        result: types.ListResourcesResult = await list_resources(ctx, params)
        result.resources += RESOURCES
        return result

    async def templates(
        ctx: Context, params: types.PaginatedRequestParams
    ) -> types.ListResourceTemplatesResult:
        result: types.ListResourceTemplatesResult = await list_templates(ctx, params)
        result.resource_templates += TEMPLATES
        return result

    async def read(ctx: Context, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        fixture = _read(params.uri)
        if fixture is None:
            result: types.ReadResourceResult = await read_resource(ctx, params)
            return result
        return fixture

    async def watch(ctx: Context, params: types.SubscribeRequestParams) -> types.EmptyResult:
        result: types.EmptyResult = (
            types.EmptyResult() if params.uri == WATCHED else await subscribe(ctx, params)
        )
        return result

    async def unwatch(ctx: Context, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        result: types.EmptyResult = (
            types.EmptyResult() if params.uri == WATCHED else await unsubscribe(ctx, params)
        )
        return result

    async def prompts(ctx: Context, params: types.PaginatedRequestParams) -> types.ListPromptsResult:
        result: types.ListPromptsResult = await list_prompts(ctx, params)
        result.prompts += [*PROMPTS, PROMPT_SPEC]
        return result

    async def prompt(
        ctx: Context, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        if params.name == PROMPT:
            return round_prompt(params)
        fixture = _prompt(params.name, params.arguments or {})
        if fixture is None:
            result: types.GetPromptResult = await get_prompt(ctx, params)
            return result
        return fixture

    async def set_level(ctx: Context, params: types.SetLevelRequestParams) -> types.EmptyResult:
        return types.EmptyResult()

    async def complete(ctx: Context, params: types.CompleteRequestParams) -> types.CompleteResult:
        return types.CompleteResult(completion=types.Completion(values=[], total=0, has_more=False))

    server.add_request_handler("tools/list", types.PaginatedRequestParams, tools)
    server.add_request_handler("tools/call", types.CallToolRequestParams, call)
    server.add_request_handler("resources/list", types.PaginatedRequestParams, resources)
    server.add_request_handler("resources/templates/list", types.PaginatedRequestParams, templates)
    server.add_request_handler("resources/read", types.ReadResourceRequestParams, read)
    server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, watch)
    server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unwatch)
    server.add_request_handler("prompts/list", types.PaginatedRequestParams, prompts)
    server.add_request_handler("prompts/get", types.GetPromptRequestParams, prompt)
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    server.add_request_handler("completion/complete", types.CompleteRequestParams, complete)
