"""The fake's HTTP face: ``POST /v1/payment_intents``, ``GET /v1/payment_intents/{id}``,
``POST /v1/checkout/sessions``, ``GET /v1/checkout/sessions/{id}`` and
``POST /v1/checkout/sessions/{id}/expire``.

* Requests: form-encoded bodies with bracketed nested keys (``metadata[user]``), the secret key as Bearer
  or Basic credentials. No key: 401 "You did not provide an API key. ..."; a wrong key: 401 "Invalid API
  Key provided: sk_test_****abcd" (docs.stripe.com/api/authentication, docs.stripe.com/api/errors).
* ``Idempotency-Key`` (docs.stripe.com/api/idempotent_requests): the first answer of a request that began
  executing is stored and replayed with ``Idempotent-Replayed: true`` for the same parameters; parameters
  that fail validation store nothing ("no idempotent result is saved"), so a corrected retry goes through;
  different parameters (or another endpoint) get 400 ``idempotency_error`` "Keys for idempotent requests
  can only be used with the same parameters they were first used with. Try using a key other than 'K' if
  you meant to execute a different request."
* Retrieve of an unknown intent: 404 ``resource_missing`` "No such payment_intent: 'pi_x'", param
  ``intent``; of an unknown Checkout Session likewise "No such checkout.session: 'cs_x'", param ``session``
  (the same pattern; not sourced for sessions).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.stripe_api.checkout import create_session, expire_session
from tests.fakes.stripe_api.intents import create_intent
from tests.fakes.stripe_api.state import RecordedRequest, StripeState, new_id


def _error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _mask(key: str) -> str:
    return key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else "*" * len(key)


def _unflatten(items: list[tuple[str, str]]) -> dict[str, Any]:
    """``metadata[user]=u`` -> ``{"metadata": {"user": "u"}}``; ``a[0]=x`` -> ``{"a": ["x"]}``."""
    out: dict[str, Any] = {}
    for key, value in items:
        parts = key.replace("]", "").split("[")
        node: dict[str, Any] = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def lists(value: Any) -> Any:
        if isinstance(value, dict):
            if value and all(k.isdigit() for k in value):
                return [lists(value[k]) for k in sorted(value, key=int)]
            return {k: lists(v) for k, v in value.items()}
        return value

    result: dict[str, Any] = lists(out)
    return result


def _authorized(request: Request, state: StripeState) -> JSONResponse | None:
    header = request.headers.get("authorization", "")
    key: str | None = None
    if header.startswith("Bearer "):
        key = header[len("Bearer ") :]
    elif header.startswith("Basic "):
        try:
            key = base64.b64decode(header[len("Basic ") :]).decode().split(":", 1)[0]
        except ValueError:
            key = None
    if not key:
        return _error(
            401,
            {
                "type": "invalid_request_error",
                "message": "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            },
        )
    if not hmac.compare_digest(key, state.api_key):
        return _error(
            401, {"type": "invalid_request_error", "message": f"Invalid API Key provided: {_mask(key)}"}
        )
    return None


Create = Callable[[dict[str, Any], StripeState], tuple[int, dict[str, Any], bool]]


def _missing_object(kind: str, object_id: str, param: str) -> JSONResponse:
    return _error(
        404,
        {
            "type": "invalid_request_error",
            "code": "resource_missing",
            "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
            "param": param,
            "message": f"No such {kind}: '{object_id}'",
        },
    )


def stripe_app(state: StripeState) -> Starlette:
    """A Starlette app answering the PaymentIntent and Checkout Session routes above."""

    async def guard(request: Request, params: dict[str, str]) -> tuple[RecordedRequest, Response | None]:
        record = RecordedRequest(
            request.method, request.url.path, params, request.headers.get("idempotency-key")
        )
        state.requests.append(record)
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.fail_next > 0:
            state.fail_next -= 1
            return record, _error(
                500,
                {"type": "api_error", "message": "An unknown error occurred"},
                {"Request-Id": new_id("req")},
            )
        return record, _authorized(request, state)

    async def create(request: Request, make: Create) -> Response:
        form = await request.form()
        items = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        record, refused = await guard(request, dict(items))
        if refused is not None:
            record.status_code = refused.status_code
            return refused
        key = record.idempotency_key
        fingerprint = hashlib.sha256(json.dumps([request.url.path, sorted(items)]).encode()).hexdigest()
        if key is not None and key in state.idempotency:
            seen, status, body = state.idempotency[key]
            if seen != fingerprint:
                record.status_code = 400
                return _error(
                    400,
                    {
                        "type": "idempotency_error",
                        "message": "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with. Try using a key other than "
                        f"'{key}' if you meant to execute a different request.",
                    },
                )
            record.status_code, record.replayed = status, True
            return Response(
                body,
                status_code=status,
                media_type="application/json",
                headers={"Idempotent-Replayed": "true", "Idempotency-Key": key, "Request-Id": new_id("req")},
            )
        status, payload, executed = make(_unflatten(items), state)
        body = json.dumps(payload).encode()
        if key is not None and executed:
            state.idempotency[key] = (fingerprint, status, body)
        record.status_code = status
        headers = {"Request-Id": new_id("req")}
        if key is not None:
            headers["Idempotency-Key"] = key
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    async def retrieve(request: Request) -> Response:
        record, refused = await guard(request, dict(request.query_params))
        if refused is not None:
            record.status_code = refused.status_code
            return refused
        pi_id = request.path_params["intent"]
        intent = state.intents.get(pi_id)
        if intent is None:
            record.status_code = 404
            return _missing_object("payment_intent", pi_id, "intent")
        record.status_code = 200
        return JSONResponse(intent, headers={"Request-Id": new_id("req")})

    async def session(request: Request) -> Response:
        """``GET`` a Checkout Session, or ``POST .../expire`` it."""
        form = await request.form() if request.method == "POST" else request.query_params
        record, refused = await guard(request, {k: v for k, v in form.items() if isinstance(v, str)})
        if refused is not None:
            record.status_code = refused.status_code
            return refused
        cs_id = request.path_params["session"]
        found = state.sessions.get(cs_id)
        if found is None:
            record.status_code = 404
            return _missing_object("checkout.session", cs_id, "session")
        status, body = (200, found) if request.method == "GET" else await expire_session(state, found)
        record.status_code = status
        return JSONResponse(body, status_code=status, headers={"Request-Id": new_id("req")})

    return Starlette(
        routes=[
            Route("/v1/payment_intents", partial(create, make=create_intent), methods=["POST"]),
            Route("/v1/payment_intents/{intent}", retrieve, methods=["GET"]),
            Route("/v1/checkout/sessions", partial(create, make=create_session), methods=["POST"]),
            Route("/v1/checkout/sessions/{session}", session, methods=["GET"]),
            Route("/v1/checkout/sessions/{session}/expire", session, methods=["POST"]),
        ]
    )
