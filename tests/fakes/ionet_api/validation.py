"""The deploy body's checks and io.net's error bodies.

* io.net's API reference (io.net/docs/reference/caas/*): an invalid request is a 422
  ``{"detail": [{"loc", "msg", "type"}]}`` (``deploy-a-container``); ``destroy-container`` takes
  ``.../deployment/{deployment_id}``, the id a UUID.
* The official SDK ``ionet-cloud`` (``iocloud/types.py``, ``DeployRequest``; its backend model is
  ``extra="forbid"``): the deploy body is exactly ``resource_private_name``, ``hardware_id``,
  ``duration_hours`` (1..8760), ``gpus_per_container``, ``location_ids`` (one), ``container_config``
  (``replica_count``, ``traffic_port``, ``env_variables``, ``secret_env_variables``, ``entrypoint``,
  ``args``) and ``registry_config`` (``image_url``, ``registry_username``, ``registry_secret``); an unknown
  field anywhere is a 422 ``extra_forbidden``. Business errors are ``{"status": "failed", "error":
  "<detail>"}``; a missing or wrong key is 401 ``{"detail": "..."}``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from starlette.responses import JSONResponse

MAX_DURATION_HOURS = 8760
DEPLOY_FIELDS = frozenset(
    {
        "resource_private_name",
        "hardware_id",
        "duration_hours",
        "gpus_per_container",
        "location_ids",
        "container_config",
        "registry_config",
    }
)
CONTAINER_FIELDS = frozenset(
    {"replica_count", "traffic_port", "env_variables", "secret_env_variables", "entrypoint", "args"}
)
REGISTRY_FIELDS = frozenset({"image_url", "registry_username", "registry_secret"})


def error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """FastAPI's error body: ``{"detail": ...}``."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def failed(detail: str, status: int = 400) -> JSONResponse:
    """A business refusal: ``{"status": "failed", "error": ...}``."""
    return JSONResponse({"status": "failed", "error": detail}, status_code=status)


def invalid(errors: list[dict[str, Any]]) -> JSONResponse:
    """A 422 listing every ``issue``."""
    return error(422, errors)


def issue(kind: str, loc: Sequence[str | int], msg: str, value: Any, **ctx: Any) -> dict[str, Any]:
    """One entry of a 422's ``detail`` list, as pydantic reports it."""
    entry: dict[str, Any] = {"type": kind, "loc": list(loc), "msg": msg, "input": value}
    if ctx:
        entry["ctx"] = ctx
    return entry


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_issues(value: Any, loc: list[str | int], low: int, high: int | None) -> list[dict[str, Any]]:
    if not _is_int(value):
        return [issue("int_type", loc, "Input should be a valid integer", value)]
    if value < low:
        msg = f"Input should be greater than or equal to {low}"
        return [issue("greater_than_equal", loc, msg, value, ge=low)]
    if high is not None and value > high:
        return [
            issue("less_than_equal", loc, f"Input should be less than or equal to {high}", value, le=high)
        ]
    return []


def _object_issues(
    value: Any, loc: list[str | int], allowed: frozenset[str], required: Sequence[str]
) -> list[dict[str, Any]]:
    """A pydantic model with ``extra="forbid"``: a dict, no unknown keys, the required ones present."""
    if not isinstance(value, dict):
        return [issue("model_attributes_type", loc, "Input should be a valid dictionary", value)]
    issues = [
        issue("extra_forbidden", [*loc, k], "Extra inputs are not permitted", v)
        for k, v in value.items()
        if k not in allowed
    ]
    return issues + [issue("missing", [*loc, k], "Field required", value) for k in required if k not in value]


def _strings_issues(value: Any, loc: list[str | int], mapping: bool) -> list[dict[str, Any]]:
    if value is None:
        return []
    if mapping:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return [issue("dict_type", loc, "Input should be a valid dictionary of strings", value)]
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return [issue("list_type", loc, "Input should be a valid list of strings", value)]
    return []


def validate_deploy(body: Any) -> list[dict[str, Any]]:
    """The checks of ``DeployRequest`` and its nested models, every one ``extra="forbid"``."""
    required = ("resource_private_name", "hardware_id", "duration_hours", "gpus_per_container")
    issues = _object_issues(body, ["body"], DEPLOY_FIELDS, (*required, "container_config", "registry_config"))
    if not isinstance(body, dict):
        return issues
    if "resource_private_name" in body and not isinstance(body["resource_private_name"], str):
        value = body["resource_private_name"]
        issues.append(
            issue("string_type", ["body", "resource_private_name"], "Input should be a valid string", value)
        )
    if "hardware_id" in body:
        issues += _int_issues(body["hardware_id"], ["body", "hardware_id"], 1, None)
    if "duration_hours" in body:
        issues += _int_issues(body["duration_hours"], ["body", "duration_hours"], 1, MAX_DURATION_HOURS)
    if "gpus_per_container" in body:
        issues += _int_issues(body["gpus_per_container"], ["body", "gpus_per_container"], 1, None)
    locations = body.get("location_ids")
    if locations is not None and (
        not isinstance(locations, list) or len(locations) != 1 or not all(_is_int(i) for i in locations)
    ):
        issues.append(
            issue("too_long", ["body", "location_ids"], "List should have exactly 1 integer", locations)
        )
    if "container_config" in body:
        config = body["container_config"]
        loc: list[str | int] = ["body", "container_config"]
        issues += _object_issues(config, loc, CONTAINER_FIELDS, ("replica_count", "traffic_port"))
        if isinstance(config, dict):
            if "replica_count" in config:
                issues += _int_issues(config["replica_count"], [*loc, "replica_count"], 1, None)
            if "traffic_port" in config:
                issues += _int_issues(config["traffic_port"], [*loc, "traffic_port"], 1, 65535)
            for name in ("env_variables", "secret_env_variables"):
                issues += _strings_issues(config.get(name), [*loc, name], mapping=True)
            for name in ("entrypoint", "args"):
                issues += _strings_issues(config.get(name), [*loc, name], mapping=False)
    if "registry_config" in body:
        registry = body["registry_config"]
        loc = ["body", "registry_config"]
        issues += _object_issues(registry, loc, REGISTRY_FIELDS, ("image_url",))
        if isinstance(registry, dict):
            for name in REGISTRY_FIELDS:
                value = registry.get(name)
                if value is not None and not isinstance(value, str):
                    issues.append(issue("string_type", [*loc, name], "Input should be a valid string", value))
    return issues


def valid_uuid(value: str) -> JSONResponse | None:
    """``None`` for a UUID path ``deployment_id``, the 422 FastAPI answers otherwise."""
    try:
        uuid.UUID(value)
    except ValueError:
        msg = "Input should be a valid UUID, invalid character: expected an optional prefix of `urn:uuid:`"
        return invalid([issue("uuid_parsing", ["path", "deployment_id"], msg, value)])
    return None
