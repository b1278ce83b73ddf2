"""The REST route table: ``(method, path) -> tool``, and the spec routes whose feature has not landed yet.

Path parameters, query parameters (for GET and DELETE) and the JSON body are merged into the tool's input.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from aiserve_mcp.tools.inference_v2 import ModelReady
from aiserve_mcp.tools.lb import open_proxy
from aiserve_mcp.tools.registry import ToolContext
from aiserve_mcp.tools.system import HealthOutput
from aiserve_mcp.traffic.service import UpstreamReply

PATH_PARAM = re.compile(r"{(\w+)}")
Stream = Callable[[ToolContext, Any], AbstractAsyncContextManager[UpstreamReply]]


@dataclass(frozen=True)
class RestRoute:
    """One route. ``errors`` are the error statuses its tool answers beyond those every route of its kind
    may (400 for input, 401/403 for a scope, 413 for a body, 401/429 at admission, 500/503), for the
    OpenAPI document."""

    method: str
    path: str
    tool: str
    status: int = 200
    status_of: Callable[[BaseModel], int] | None = None
    alternate_statuses: tuple[int, ...] = ()  # what status_of may answer besides status, with the output
    stream: Stream | None = None  # answer with the upstream's own status, headers and streamed body
    headers: tuple[tuple[str, str], ...] = ()  # (HTTP header, input field) pairs bound like body fields
    errors: tuple[int, ...] = ()
    body_required: bool = False  # an empty body is refused even though every body field has a default
    binary_tensors: bool = False  # takes the Open Inference Protocol's binary tensor data extension too

    @property
    def path_params(self) -> list[str]:
        return PATH_PARAM.findall(self.path)

    def needs_body(self, model: type[BaseModel]) -> bool:
        """Whether an empty body is refused: the route says so (it exists to set something, and would
        otherwise apply every default silently), or a body field is required."""
        taken = {*self.path_params, *(field for _, field in self.headers)}
        return self.body_required or any(
            info.is_required() for name, info in model.model_fields.items() if name not in taken
        )


def _health_status(out: BaseModel) -> int:
    assert isinstance(out, HealthOutput)
    return 200 if out.status == "ok" else 503


def _ready_status(out: BaseModel) -> int:
    assert isinstance(out, ModelReady)
    return 200 if out.ready else 503


ROUTES: list[RestRoute] = [
    RestRoute("POST", "/api/v1/auth/register", "auth_register", 201, errors=(409,)),
    RestRoute("POST", "/api/v1/auth/login", "auth_login"),
    RestRoute("POST", "/api/v1/auth/refresh", "auth_refresh"),
    RestRoute("POST", "/api/v1/auth/logout", "auth_logout"),
    RestRoute("POST", "/api/v1/auth/apikey", "create_api_key", 201),
    RestRoute("GET", "/api/v1/auth/apikeys", "list_api_keys"),
    RestRoute("DELETE", "/api/v1/auth/apikey/{key_id}", "revoke_api_key", errors=(404,)),
    RestRoute("GET", "/api/v1/user/me", "whoami"),
    RestRoute("GET", "/api/v1/user/export", "export_account"),
    RestRoute("GET", "/api/v1/admin/users", "admin_list_users"),
    RestRoute("GET", "/api/v1/gpu/preferences", "get_gpu_preferences"),
    RestRoute("POST", "/api/v1/gpu/preferences", "set_gpu_preferences", body_required=True),
    RestRoute("POST", "/api/v1/gpu/preferences/test", "test_gpu_preferences"),
    RestRoute("GET", "/api/v1/gpu/available", "list_available_gpus"),
    RestRoute("GET", "/api/v1/gpu/examples", "gpu_preference_examples"),
    RestRoute("GET", "/api/v1/gpu/instances", "search_gpu_offers"),
    RestRoute("POST", "/api/v1/gpu/instances/batch", "batch_rent_gpu_instances", 201, body_required=True),
    RestRoute("POST", "/api/v1/gpu/instances/reserve", "reserve_gpus", 201),
    RestRoute(
        "POST",
        "/api/v1/gpu/instances/{provider}/{instance_id}",
        "rent_gpu_instance",
        201,
        errors=(402, 409, 502),
        body_required=True,
    ),
    RestRoute(
        "DELETE", "/api/v1/gpu/instances/{provider}/{instance_id}", "destroy_gpu_instance", errors=(404, 502)
    ),
    RestRoute("GET", "/api/v1/gpu/contracts", "list_gpu_contracts"),
    RestRoute("GET", "/api/v1/gpu/contracts/{contract_id}", "get_gpu_contract", errors=(404,)),
    RestRoute("POST", "/api/v1/gpu/proxy", "proxy_request", stream=open_proxy, errors=(404, 502, 504)),
    RestRoute("GET", "/api/v1/loadbalancer/loads", "get_instance_loads"),
    RestRoute("GET", "/api/v1/loadbalancer/load", "get_instance_load", errors=(404,)),
    RestRoute("GET", "/api/v1/loadbalancer/strategy", "get_lb_strategy"),
    RestRoute("PUT", "/api/v1/loadbalancer/strategy", "set_lb_strategy"),
    RestRoute(
        "POST",
        "/api/v1/billing/payment",
        "create_payment",
        201,
        headers=(
            ("X-Billing", "billing_provider"),
            ("X-Preferred-Payment", "preferred_payment"),
            ("Idempotency-Key", "idempotency_key"),
        ),
        errors=(402, 409, 502),
    ),
    RestRoute("GET", "/api/v1/billing/transactions", "list_transactions"),
    RestRoute("GET", "/api/v1/guardrails/spending", "get_spending"),
    RestRoute("POST", "/api/v1/guardrails/spending/record", "record_spending", errors=(402,)),
    RestRoute("POST", "/api/v1/guardrails/spending/check", "check_spending", errors=(402,)),
    RestRoute("POST", "/api/v1/guardrails/spending/reset", "reset_spending", body_required=True),
    RestRoute("GET", "/api/v1/guardrails/limits", "get_spending_limits", errors=(404,)),
    RestRoute("PUT", "/api/v1/guardrails/limits", "set_spending_limits", errors=(404,)),
    RestRoute("GET", "/api/v1/guardrails/approvals/policy", "get_approval_policy", errors=(404,)),
    RestRoute("PUT", "/api/v1/guardrails/approvals/policy", "set_approval_policy", errors=(404,)),
    RestRoute("GET", "/api/v1/guardrails/approvals/webhook", "get_approval_webhook"),
    RestRoute("PUT", "/api/v1/guardrails/approvals/webhook", "set_approval_webhook", errors=(502,)),
    RestRoute("GET", "/api/v1/approvals", "list_approvals"),
    RestRoute("GET", "/api/v1/approvals/{approval_id}", "get_approval", errors=(404,)),
    RestRoute("POST", "/api/v1/approvals/{approval_id}", "decide_approval", errors=(404,)),
    RestRoute("GET", "/api/v1/models", "list_models"),
    RestRoute("GET", "/api/v1/models/formats", "list_model_formats"),
    RestRoute("GET", "/api/v1/models/{model_id}", "get_model", errors=(404,)),
    RestRoute("DELETE", "/api/v1/models/{model_id}", "delete_model", errors=(404,)),
    RestRoute("PATCH", "/api/v1/models/{model_id}", "configure_model", errors=(404, 409), body_required=True),
    RestRoute("POST", "/api/v1/models/{model_id}/predict", "predict", errors=(404, 409, 502, 504)),
    RestRoute("GET", "/api/v1/models/{model_id}/metrics", "get_model_metrics", errors=(404,)),
    RestRoute("GET", "/api/v1/quota", "get_quota"),
    RestRoute("GET", "/v2", "v2_server_metadata"),
    RestRoute("GET", "/v2/health/live", "v2_live"),
    RestRoute("GET", "/v2/health/ready", "v2_ready"),
    RestRoute("GET", "/v2/models/{model_name}", "v2_model_metadata", errors=(404,)),
    RestRoute(
        "GET",
        "/v2/models/{model_name}/ready",
        "v2_model_ready",
        status_of=_ready_status,
        alternate_statuses=(503,),
        errors=(404,),
    ),
    RestRoute(
        "POST", "/v2/models/{model_name}/infer", "v2_infer", errors=(404, 409, 502, 504), binary_tensors=True
    ),
    RestRoute("GET", "/health", "system_health", status_of=_health_status, alternate_statuses=(503,)),
    RestRoute("GET", "/stats", "system_stats"),
]
