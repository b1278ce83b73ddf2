"""``/openapi.json``: an OpenAPI 3.1 document generated from the route table and the tools' models.

Each input field is described once, where the route takes it: a path parameter, a bound header, a query
parameter (GET and DELETE) or a property of the JSON body. Each operation lists every status it answers:
its success statuses with the tool's output, and the error statuses with the error body and its codes.
"""

from __future__ import annotations

from collections.abc import Iterable
from copy import deepcopy
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from aiserve_mcp import __version__
from aiserve_mcp.core.errors import ERROR_TABLE
from aiserve_mcp.protocols.admission import ADMITTED_PREFIXES
from aiserve_mcp.rest_compat.binary_infer import HEADER_LENGTH
from aiserve_mcp.rest_compat.endpoint import WEBHOOK_PATH
from aiserve_mcp.rest_compat.routes import ROUTES, RestRoute
from aiserve_mcp.rest_compat.uploads import SCOPE as UPLOAD_SCOPE
from aiserve_mcp.rest_compat.uploads import UPLOAD_PATH
from aiserve_mcp.rest_compat.worker_bundle import bundle_openapi
from aiserve_mcp.tools.billing import WebhookOutput
from aiserve_mcp.tools.registry import Tool, ToolRegistry
from aiserve_mcp.tools.upload_links import UPLOAD_LINK_PATH
from aiserve_mcp.tools.uploads import UploadFields, UploadOutput

REF = "#/components/schemas/{model}"
ERROR_REF = {"$ref": REF.format(model="Error")}
BODY_METHODS = ("POST", "PUT", "PATCH")
# Every operation may fail unexpectedly (500) or while a dependency it needs is down (503).
ALWAYS = (500, 503)
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string", "description": "Human-readable message."},
        "code": {"type": "string", "description": "Machine-readable code, e.g. VALIDATION_ERROR."},
        "details": {"type": "object", "description": "Optional structured context."},
    },
}
# SPENDING_LIMIT refusals also carry the spec's check fields at the top level.
_SPENDING_FIELDS = {
    "allowed": {"const": False},
    "violations": {"type": "array", "items": {"type": "object"}, "description": "Each violated window."},
    "spent": {"type": "number", "description": "USD spent in the binding window, this spend included."},
}
# APPROVAL_REQUIRED (202) also carries the pending approval at the top level.
_APPROVAL_FIELDS = {
    "approval": {
        "type": "object",
        "required": ["id", "status", "action", "arguments", "amount", "description", "expires_at", "url"],
        "properties": {
            "id": {"type": "string", "description": "Poll it with GET /api/v1/approvals/{id}."},
            "status": {"const": "pending"},
            "action": {"type": "string", "description": "The tool held for approval."},
            "arguments": {"type": "object"},
            "amount": {"type": "number", "description": "The quoted cost, USD."},
            "description": {"type": "string"},
            "expires_at": {"type": "string", "format": "date-time"},
            "url": {"type": "string", "description": "The console page where the account owner decides."},
        },
    }
}
_ERROR_RESPONSE = {
    "description": "Unexpected error (INTERNAL_ERROR), or a dependency is down (SERVICE_UNAVAILABLE)",
    "content": {"application/json": {"schema": ERROR_REF}},
}


def _codes(status: int) -> list[str]:
    return sorted({kind.code for kind in ERROR_TABLE.values() if kind.http_status == status})


def _error_schema(status: int) -> dict[str, Any]:
    """The error body with the codes ``status`` carries."""
    properties: dict[str, Any] = {"code": {"enum": _codes(status)}}
    if status == 402:
        properties |= _SPENDING_FIELDS
    if status == 202:
        properties |= _APPROVAL_FIELDS
    return {"allOf": [ERROR_REF, {"properties": properties}], "title": f"Error {status}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_BINARY = {
    "schema": {
        "type": "string",
        "format": "binary",
        "description": f"The binary tensor data extension: the JSON object ({HEADER_LENGTH} bytes), then "
        "the raw tensors whose parameters give binary_data_size, in order (little-endian, row-major; BYTES "
        "elements each after a 4-byte length)",
    }
}
_HEADER_LENGTH = {
    "name": HEADER_LENGTH,
    "in": "header",
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "The length of the JSON object that starts a body with binary tensors",
}


def _with_binary(operation: dict[str, Any]) -> dict[str, Any]:
    """``operation`` documenting the binary tensor data extension too: the header, an
    ``application/octet-stream`` request body and success answer."""
    operation["parameters"].append(_HEADER_LENGTH)
    operation["requestBody"]["content"]["application/octet-stream"] = _BINARY
    success = operation["responses"]["200"]
    success["content"]["application/octet-stream"] = _BINARY
    success["headers"] = {HEADER_LENGTH: {k: v for k, v in _HEADER_LENGTH.items() if k not in ("name", "in")}}
    return operation


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A field's schema as a parameter (present with a value, or absent): ``null`` is not one of its
    values, and the title is the parameter's name."""
    schema = {k: v for k, v in schema.items() if k != "title" and not (k == "default" and v is None)}
    branches = [b for b in schema.get("anyOf", ()) if b != {"type": "null"}]
    if len(branches) == 1:
        del schema["anyOf"]
        schema |= branches[0]
    return schema


def _parameter(name: str, where: str, schema: dict[str, Any], required: bool) -> dict[str, Any]:
    plain = _without_null(schema)
    description = plain.pop("description", None)
    parameter = {"name": name, "in": where, "required": required, "schema": plain}
    return parameter | ({"description": description} if description else {})


def _error_statuses(route: RestRoute, tool: Tool) -> set[int]:
    """What a route answers besides success: 400 when it takes input, 413 for a body, 401 and 429 where
    HTTP admission authenticates and rate-limits, 401 and 403 for tools that need a scope, 202 for tools
    that move money (a call held for approval), and the tool's own statuses from the route table."""
    statuses = {*ALWAYS, *route.errors}
    if tool.quote is not None:
        statuses.add(202)
    if tool.input_model.model_fields or route.method in BODY_METHODS:
        statuses.add(400)
    if route.method in BODY_METHODS:
        statuses.add(413)
    if route.path.startswith(ADMITTED_PREFIXES):
        statuses |= {401, 429}
    if tool.scope is not None:
        statuses |= {401, 403}
    return statuses


def _by_name(models: Iterable[type[BaseModel]]) -> list[type[BaseModel]]:
    return sorted(models, key=lambda m: m.__name__)


def _relayed(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"*/*": {}}}


class _Builder:
    """Builds the document: components first (every model in one pass, so names never clash), then one
    operation per route."""

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry
        tools = [registry.get(route.tool) for route in ROUTES]
        inputs: set[type[BaseModel]] = {t.input_model for t in tools}
        outputs: set[type[BaseModel]] = {t.output_model for t in tools} | {UploadOutput, WebhookOutput}
        wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "validation") for m in _by_name(inputs)]
        wanted += [(m, "serialization") for m in _by_name(outputs)]
        self.refs, definitions = models_json_schema(wanted, ref_template=REF)
        self.components: dict[str, Any] = {"Error": _ERROR_SCHEMA, **definitions.get("$defs", {})}

    def error(self, status: int) -> dict[str, Any]:
        """A reference to the error body of ``status`` (a component of its own)."""
        name = f"Error{status}"
        self.components.setdefault(name, _error_schema(status))
        return {"$ref": REF.format(model=name)}

    def error_response(self, status: int) -> dict[str, Any]:
        return _json(self.error(status), ", ".join(_codes(status)))

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        ref = self.refs[(model, mode)]
        return {"$ref": ref["$ref"]}

    def schema_of(self, model: type[BaseModel]) -> dict[str, Any]:
        """The input model's own (component) schema."""
        name = self.ref(model, "validation")["$ref"].rsplit("/", 1)[-1]
        schema = self.components[name]
        assert isinstance(schema, dict)
        return schema

    def body(self, model: type[BaseModel], taken: Iterable[str]) -> dict[str, Any]:
        """The JSON body schema: the input model less the fields taken elsewhere (a component of its
        own)."""
        schema = self.schema_of(model)
        taken = set(taken)
        required = [name for name in schema.get("required", ()) if name not in taken]
        if not taken & set(schema.get("properties", {})):
            return self.ref(model, "validation")
        body = deepcopy(schema)
        body["properties"] = {k: v for k, v in schema["properties"].items() if k not in taken}
        body["required"] = required
        if not required:
            del body["required"]
        body["title"] = f"{schema.get('title', model.__name__)} (body)"
        name = f"{model.__name__}Body"
        self.components[name] = body
        return {"$ref": REF.format(model=name)}

    def responses(self, route: RestRoute, tool: Tool) -> dict[str, Any]:
        if route.stream is not None:
            return {
                "2XX": _relayed("The instance's answer, relayed as is (status, headers and body)"),
                "3XX": _relayed("The instance's redirect, relayed as is"),
                "4XX": _relayed("The instance's answer, or this server's JSON error body"),
                "5XX": _relayed("The instance's answer, or this server's JSON error body"),
                "default": _ERROR_RESPONSE,
            }
        output = self.ref(tool.output_model, "serialization")
        responses: dict[str, Any] = {str(route.status): _json(output, "Success")}
        for status in route.alternate_statuses:
            responses[str(status)] = _json(output, "Answered with this status; the body says why")
        for status in sorted(_error_statuses(route, tool)):
            if str(status) in responses:
                schema = {"anyOf": [output, self.error(status)]}
                responses[str(status)] = _json(schema, f"The success body, or {', '.join(_codes(status))}")
            else:
                responses[str(status)] = self.error_response(status)
        return {**dict(sorted(responses.items())), "default": _ERROR_RESPONSE}

    def operation(self, route: RestRoute) -> dict[str, Any]:
        tool = self.registry.get(route.tool)
        schema = self.schema_of(tool.input_model)
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        path_params = route.path_params
        parameters = [_parameter(p, "path", properties[p], True) for p in path_params]
        parameters += [_parameter(h, "header", properties[f], False) for h, f in route.headers]
        taken = [*path_params, *(field for _, field in route.headers)]
        operation: dict[str, Any] = {
            "operationId": tool.name,
            "summary": tool.annotations.title,
            "description": tool.description,
        }
        if route.method in BODY_METHODS:
            operation["requestBody"] = {
                "required": route.needs_body(tool.input_model),
                "content": {"application/json": {"schema": self.body(tool.input_model, taken)}},
            }
        else:
            parameters += [
                _parameter(name, "query", prop, name in required)
                for name, prop in properties.items()
                if name not in taken
            ]
        operation["parameters"] = parameters
        operation["responses"] = self.responses(route, tool)
        if tool.scope is not None:
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            operation["x-required-scope"] = tool.scope
        return _with_binary(operation) if route.binary_tensors else operation

    def upload(self) -> dict[str, Any]:
        """``POST /api/v1/models/upload``: one multipart object, the model file and the form fields."""
        fields = UploadFields.model_json_schema(ref_template=REF)
        form = {
            "type": "object",
            "properties": {
                "model": {"type": "string", "format": "binary", "description": "The model file."},
                **{name: _without_null(prop) for name, prop in fields["properties"].items()},
            },
            "required": ["model"],
            "additionalProperties": False,
        }
        statuses = sorted({*ALWAYS, 400, 401, 403, 413, 429})
        return {
            "operationId": "upload_model",
            "summary": "Upload a model",
            "description": "Multipart upload: the file in 'model', the other fields as form fields. "
            "The format is detected from the file's bytes; the model then loads in the background.",
            "security": [{"bearer": []}, {"apiKey": []}],
            "x-required-scope": UPLOAD_SCOPE,
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": form,
                        "encoding": {"model": {"contentType": "application/octet-stream"}},
                    }
                },
            },
            "responses": self.stored(statuses),
        }

    def stored(self, statuses: list[int]) -> dict[str, Any]:
        """The responses of an upload route: 201 with the stored model, or the error of ``statuses``."""
        return {
            "201": _json(self.ref(UploadOutput, "serialization"), "Stored; loading"),
            **{str(status): self.error_response(status) for status in statuses},
            "default": _ERROR_RESPONSE,
        }

    def upload_link(self) -> dict[str, Any]:
        """``PUT /api/v1/models/uploads/{token}``: the file's bytes, sent to a link of
        ``create_model_upload``."""
        statuses = sorted({*ALWAYS, 400, 401, 404, 409, 413, 429})
        return {
            "operationId": "upload_model_by_link",
            "summary": "Upload a model through a link",
            "description": "The model file's bytes as the whole body, exactly as many as the link was made "
            "for. No Authorization: the one-time link made by the create_model_upload tool is the "
            "credential, and its first PUT spends it, even one that fails (409 CONFLICT after that, and "
            "once it expired). The model is stored with the link's settings, as its owner's upload.",
            "parameters": [
                {
                    "name": "token",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "The link's secret, as upload_url carries it.",
                }
            ],
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
            "responses": self.stored(statuses),
        }

    def webhook(self) -> dict[str, Any]:
        statuses = sorted({*ALWAYS, 400, 401, 413, 429})
        return {
            "operationId": "payment_webhook",
            "summary": "Payment gateway events",
            "description": "Stripe's signed events (header Stripe-Signature); each is applied once.",
            "parameters": [
                {
                    "name": "Stripe-Signature",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "The gateway's signature of the body.",
                }
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": _json(self.ref(WebhookOutput, "serialization"), "Received"),
                **{str(status): self.error_response(status) for status in statuses},
                "default": _ERROR_RESPONSE,
            },
        }

    def paths(self) -> dict[str, dict[str, Any]]:
        paths: dict[str, dict[str, Any]] = {}
        for route in ROUTES:
            paths.setdefault(route.path, {})[route.method.lower()] = self.operation(route)
        paths[UPLOAD_PATH] = {"post": self.upload()}
        paths[UPLOAD_LINK_PATH] = {"put": self.upload_link()}
        paths[WEBHOOK_PATH] = {"post": self.webhook()}
        paths.update(bundle_openapi(self.error_response))
        return paths


@cache
def openapi_document(registry: ToolRegistry) -> dict[str, Any]:
    """Built once per registry: the routes and schemas do not change while the server runs."""
    builder = _Builder(registry)
    paths = builder.paths()
    return {
        "openapi": "3.1.0",
        "info": {"title": "aiserve REST API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": builder.components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Access token or API key"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
