"""``/openapi.json``: an OpenAPI 3.1 document generated from the route table and the tools' models."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic import BaseModel

from aiserve_mcp import __version__
from aiserve_mcp.rest_compat.routes import ROUTES
from aiserve_mcp.tools.models import UploadFields, UploadOutput
from aiserve_mcp.tools.registry import ToolRegistry

_PATH_PARAM = re.compile(r"{(\w+)}")
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string", "description": "Human-readable message."},
        "code": {"type": "string", "description": "Machine-readable code, e.g. VALIDATION_ERROR."},
        "details": {"type": "object", "description": "Optional structured context."},
    },
}
_ERROR_RESPONSE = {
    "description": "Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _schema(model: type[BaseModel], components: dict[str, Any], mode: str) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)  # type: ignore[arg-type]
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


@cache
def openapi_document(registry: ToolRegistry) -> dict[str, Any]:
    """Built once per registry: the routes and schemas do not change while the server runs."""
    components: dict[str, Any] = {"Error": _ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        tool = registry.get(route.tool)
        path_params = _PATH_PARAM.findall(route.path)
        input_schema = tool.input_model.model_json_schema()
        operation: dict[str, Any] = {
            "operationId": tool.name,
            "summary": tool.annotations.title,
            "description": tool.description,
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in path_params
            ],
            "responses": {
                str(route.status): {
                    "description": "Success",
                    "content": {
                        "application/json": {
                            "schema": _schema(tool.output_model, components, "serialization")
                        }
                    },
                },
                "default": _ERROR_RESPONSE,
            },
        }
        if tool.scope is not None:
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            operation["x-required-scope"] = tool.scope
        if route.method in ("GET", "DELETE"):
            required = set(input_schema.get("required", []))
            operation["parameters"] += [
                {"name": name, "in": "query", "required": name in required, "schema": prop}
                for name, prop in input_schema.get("properties", {}).items()
                if name not in path_params
            ]
        else:
            operation["requestBody"] = {
                "required": bool(input_schema.get("required")),
                "content": {
                    "application/json": {"schema": _schema(tool.input_model, components, "validation")}
                },
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    upload_fields = _schema(UploadFields, components, "validation")
    paths["/api/v1/models/upload"] = {
        "post": {
            "operationId": "upload_model",
            "summary": "Upload a model",
            "description": "Multipart upload: the file in 'model', the other fields as form fields. "
            "The format is detected from the file's bytes; the model then loads in the background.",
            "security": [{"bearer": []}, {"apiKey": []}],
            "x-required-scope": "models:write",
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "allOf": [upload_fields],
                            "properties": {"model": {"type": "string", "format": "binary"}},
                            "required": ["model"],
                        }
                    }
                },
            },
            "responses": {
                "201": {
                    "description": "Stored; loading",
                    "content": {
                        "application/json": {"schema": _schema(UploadOutput, components, "serialization")}
                    },
                },
                "default": _ERROR_RESPONSE,
            },
        }
    }
    paths["/api/v1/billing/webhook"] = {
        "post": {
            "operationId": "payment_webhook",
            "summary": "Payment gateway events",
            "description": "Stripe's signed events (header Stripe-Signature); each is applied once.",
            "responses": {"200": {"description": "Received"}, "default": _ERROR_RESPONSE},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "aiserve REST API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Access token or API key"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
