"""The product surface: every tool, registered in ``REGISTRY`` when this package is imported."""

from aiserve_mcp.tools import (
    account,
    approval_webhooks,
    approvals,
    auth,
    billing,
    checkout,
    gpu,
    gpu_instances,
    guardrails,
    inference_v2,
    lb,
    models,
    oauth_clients,
    system,
    upload_links,
    uploads,
)
from aiserve_mcp.tools.registry import REGISTRY, Tool, ToolContext, ToolRegistry

__all__ = [
    "REGISTRY",
    "Tool",
    "ToolContext",
    "ToolRegistry",
    "account",
    "approval_webhooks",
    "approvals",
    "auth",
    "billing",
    "checkout",
    "gpu",
    "gpu_instances",
    "guardrails",
    "inference_v2",
    "lb",
    "models",
    "oauth_clients",
    "system",
    "upload_links",
    "uploads",
]
