"""Model serving through the API: upload, background loading, predictions equal to the runtime's own,
ownership, quotas and hostile files."""

from __future__ import annotations

import asyncio
import os
import pickle
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
from onnx import TensorProto, helper
from starlette.applications import Starlette

from aiserve_mcp.core.settings import Settings
from tests.conftest import Account, api_key, app_client, sign_up

IR_VERSION = 10


def mlp_bytes(seed: int = 0) -> bytes:
    """A 4-64-2 MLP with a free batch dimension, as an ONNX file."""
    rng = np.random.default_rng(seed)
    w1, b1 = rng.standard_normal((4, 64)).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    w2, b2 = rng.standard_normal((64, 2)).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("Gemm", ["hr", "w2", "b2"], ["output"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [onnx.numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    return bytes(model.SerializeToString())


class Pwned:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    limited = settings.model_copy(update={"model_uploads_per_hour": 6, "model_max_file_bytes": 2_000_000})
    async with app_client(limited) as (app, client):
        yield app, client


async def upload(
    client: httpx.AsyncClient, account: Account, content: bytes, filename: str = "mlp.onnx", **fields: str
) -> httpx.Response:
    return await client.post(
        "/api/v1/models/upload",
        files={"model": (filename, content, "application/octet-stream")},
        data=fields,
        headers=account.headers,
    )


async def until_settled(client: httpx.AsyncClient, account: Account, model_id: str) -> dict[str, object]:
    """Poll the model until it is no longer loading (TorchScript replicas start a worker process each, so
    allow a minute). Polls spend the owner's rate limit like any request: a 429 waits its Retry-After."""
    delay, deadline = 0.02, time.monotonic() + 60
    while time.monotonic() < deadline:
        response = await client.get(f"/api/v1/models/{model_id}", headers=account.headers)
        if response.status_code == 429:
            await asyncio.sleep(int(response.headers["Retry-After"]))
            continue
        details = response.json()
        if details["status"] != "loading":
            return dict(details)
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    raise AssertionError("the model never finished loading")


async def test_upload_load_and_predict_exactly_as_the_runtime(
    served: tuple[Starlette, httpx.AsyncClient],
) -> None:
    _, client = served
    owner = await sign_up(client)
    content = mlp_bytes()
    answer = await upload(client, owner, content, name="mlp", version="2.0.0")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["format"] == "onnx" and body["status"] == "loading" and body["name"] == "mlp"
    assert body["endpoint"] == f"/api/v1/models/{body['model_id']}/predict"
    details = await until_settled(client, owner, body["model_id"])
    assert details["status"] == "ready" and details["version"] == "2.0.0"
    assert details["signature"] == {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [None, 4]}],
        "outputs": [{"name": "output", "dtype": "float32", "shape": [None, 2]}],
    }

    rows = [[0.1, 0.2, 0.3, 0.4], [1.0, -2.0, 3.5, 0.0]]
    expected = ort.InferenceSession(content).run(None, {"input": np.asarray(rows, dtype=np.float32)})[0]
    path = f"/api/v1/models/{body['model_id']}/predict"
    out = (await client.post(path, json={"inputs": {"input": rows}}, headers=owner.headers)).json()
    assert np.array_equal(np.asarray(out["outputs"]["output"], dtype=np.float32), expected)
    assert out["metadata"] == {
        "format": "onnx",
        "runtime": "onnxruntime",
        "version": "2.0.0",
        "used_gpu": False,
    }
    assert out["latency_ms"] > 0
    single = (await client.post(path, json={"inputs": {"features": rows[0]}}, headers=owner.headers)).json()
    assert np.array_equal(np.asarray(single["outputs"]["output"], dtype=np.float32), expected[:1])

    for bad in ({"input": [[1, 2, 3]]}, {"nope": [[1, 2, 3, 4]]}, {"input": [["a", "b", "c", "d"]]}):
        refused = await client.post(path, json={"inputs": bad}, headers=owner.headers)
        assert refused.status_code == 400 and refused.json()["code"] == "VALIDATION_ERROR", bad

    metrics = (await client.get(f"/api/v1/models/{body['model_id']}/metrics", headers=owner.headers)).json()
    assert metrics["total_requests"] == 5 and metrics["error_rate"] == 0.6
    assert metrics["p50_latency"] is not None and metrics["p99_latency"] >= metrics["p50_latency"]
    assert (await client.get("/stats")).json()["models_loaded"] == 1
    listed = (await client.get("/api/v1/models", headers=owner.headers)).json()
    assert listed["count"] == 1 and listed["models"][0]["status"] == "ready"
    exposition = (await client.get("/metrics")).text
    assert f'aiserve_model_latency_seconds_count{{model="{body["model_id"]}"}} 2.0' in exposition


async def test_models_belong_to_their_owner_and_delete_frees_the_quota(
    served: tuple[Starlette, httpx.AsyncClient], settings: Settings
) -> None:
    _, client = served
    owner, intruder = await sign_up(client), await sign_up(client)
    model_id = (await upload(client, owner, mlp_bytes())).json()["model_id"]
    await until_settled(client, owner, model_id)
    for method, path in (
        ("GET", f"/api/v1/models/{model_id}"),
        ("GET", f"/api/v1/models/{model_id}/metrics"),
        ("DELETE", f"/api/v1/models/{model_id}"),
    ):
        assert (await client.request(method, path, headers=intruder.headers)).status_code == 404
    stolen = await client.post(
        f"/api/v1/models/{model_id}/predict",
        json={"inputs": {"input": [[1, 2, 3, 4]]}},
        headers=intruder.headers,
    )
    assert stolen.status_code == 404

    quota = (await client.get("/api/v1/quota", headers=owner.headers)).json()
    assert (
        quota["storage"]["used_bytes"] == len(mlp_bytes()) and quota["rate_limits"]["uploads_last_hour"] == 1
    )
    assert quota["file_size"]["max_bytes"] == 2_000_000 and quota["rate_limits"]["hourly_limit"] == 6
    files = list((settings.data_dir / "models").rglob("*"))
    assert any(f.name == model_id for f in files)
    gone = await client.delete(f"/api/v1/models/{model_id}", headers=owner.headers)
    assert gone.json() == {"message": "Model deleted successfully"}
    assert not any(f.is_file() for f in (settings.data_dir / "models").rglob("*"))
    after = (await client.get("/api/v1/quota", headers=owner.headers)).json()
    assert after["storage"]["used_bytes"] == 0 and after["rate_limits"]["uploads_last_hour"] == 1


async def test_hostile_and_odd_files(served: tuple[Starlette, httpx.AsyncClient], tmp_path: Path) -> None:
    _, client = served
    owner = await sign_up(client)
    renamed = await upload(client, owner, mlp_bytes(), filename="../../etc/model.pt")
    assert (
        renamed.status_code == 201
        and renamed.json()["format"] == "onnx"
        and renamed.json()["name"] == "model.pt"
    )
    # A file name with a NUL and a control character, sent raw (clients percent-encode them): PostgreSQL
    # cannot store a NUL, so the name keeps only what is printable.
    head = b'--b\r\nContent-Disposition: form-data; name="model"; filename="odd\x00name\x1f.onnx"\r\n\r\n'
    raw = head + mlp_bytes() + b"\r\n--b--\r\n"
    nul = await client.post(
        "/api/v1/models/upload",
        content=raw,
        headers={**owner.headers, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert nul.status_code == 201 and nul.json()["name"] == "oddname.onnx", nul.text

    marker = tmp_path / "pwned"
    hostile = await upload(client, owner, pickle.dumps(Pwned(marker)), filename="model.pkl")
    assert hostile.status_code == 201, hostile.text
    stored = await until_settled(client, owner, hostile.json()["model_id"])
    assert stored["status"] == "stored" and "pickle" in str(stored["status_reason"]).lower()
    refused = await client.post(
        f"/api/v1/models/{hostile.json()['model_id']}/predict",
        json={"inputs": {"x": [1]}},
        headers=owner.headers,
    )
    assert refused.status_code == 409
    assert not marker.exists()

    truncated = await upload(client, owner, mlp_bytes()[:200])
    assert truncated.status_code == 400
    empty = await upload(client, owner, b"")
    assert empty.status_code == 400
    too_big = await upload(client, owner, b"\0" * 2_500_000, filename="big.onnx")
    assert too_big.status_code == 413
    unknown_field = await upload(client, owner, mlp_bytes(), owner_id="someone-else")
    assert unknown_field.status_code == 400
    not_multipart = await client.post("/api/v1/models/upload", json={"model": "x"}, headers=owner.headers)
    assert not_multipart.status_code == 400
    anonymous = await client.post("/api/v1/models/upload", files={"model": ("m.onnx", mlp_bytes())})
    assert anonymous.status_code == 401
    assert not [f for f in (Path(tmp_path).parent).rglob("*.upload")]


async def test_upload_rates_are_limited(served: tuple[Starlette, httpx.AsyncClient]) -> None:
    _, client = served
    owner = await sign_up(client)
    codes = [(await upload(client, owner, mlp_bytes(i))).status_code for i in range(7)]
    assert codes == [201] * 6 + [429]


async def test_the_formats_list_is_public_and_honest(served: tuple[Starlette, httpx.AsyncClient]) -> None:
    _, client = served
    body = (await client.get("/api/v1/models/formats")).json()
    assert body["count"] == 13 and len(body["formats"]) == 13
    by_id = {f["format"]: f for f in body["formats"]}
    assert by_id["onnx"]["servable"] is True and ".onnx" in by_id["onnx"]["extensions"]
    assert by_id["sklearn"]["servable"] is False and by_id["sklearn"]["reason"]


async def test_concurrent_predictions_are_batched_and_answered_exactly(
    served: tuple[Starlette, httpx.AsyncClient],
) -> None:
    app, client = served
    owner = await sign_up(client)
    content = mlp_bytes(3)
    model_id = (await upload(client, owner, content)).json()["model_id"]
    await until_settled(client, owner, model_id)
    rng = np.random.default_rng(7)
    rows = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(64)]
    session = ort.InferenceSession(content)
    singles = [session.run(None, {"input": r})[0] for r in rows]
    answers = await asyncio.gather(
        *(
            client.post(
                f"/api/v1/models/{model_id}/predict",
                json={"inputs": {"input": r.tolist()}},
                headers=owner.headers,
            )
            for r in rows
        )
    )
    for answer, single in zip(answers, singles, strict=True):
        assert answer.status_code == 200, answer.text
        assert np.array_equal(np.asarray(answer.json()["outputs"]["output"], dtype=np.float32), single)
    registry = app.state.services.telemetry.registry
    labels = {"model": model_id}
    runs = registry.get_sample_value("aiserve_model_batch_requests_count", labels)
    carried = registry.get_sample_value("aiserve_model_batch_requests_sum", labels)
    assert carried == 64 and runs is not None and runs < 64  # coalesced, every request answered once


async def test_open_inference_protocol_clients_work_with_an_api_key(
    served: tuple[Starlette, httpx.AsyncClient],
) -> None:
    _, client = served
    owner = await sign_up(client)
    key = Account(
        owner.email, owner.user_id, await api_key(client, owner, scopes=["models:read", "models:write"]), ""
    )
    content = mlp_bytes(5)
    model_id = (await upload(client, key, content, name="mlp-v2")).json()["model_id"]
    await until_settled(client, owner, model_id)
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).status_code == 200
    meta = (await client.get("/v2/models/mlp-v2", headers=key.headers)).json()
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1.0.0"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert (await client.get("/v2/models/mlp-v2/ready", headers=key.headers)).json() == {
        "name": "mlp-v2",
        "ready": True,
    }

    data = [0.0, 0.01, 0.02, 0.03, 1.0, 2.0, 3.0, 4.0]
    request = {"id": "r1", "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": data}]}
    answer = await client.post("/v2/models/mlp-v2/infer", json=request, headers=key.headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = ort.InferenceSession(content).run(
        None, {"input": np.asarray(data, dtype=np.float32).reshape(2, 4)}
    )[0]
    (out,) = body["outputs"]
    assert (body["model_name"], body["model_version"], body["id"]) == ("mlp-v2", "1.0.0", "r1")
    assert (out["name"], out["datatype"], out["shape"]) == ("output", "FP32", [2, 2])
    assert np.array_equal(np.asarray(out["data"], dtype=np.float32), expected.reshape(-1))

    wrong_type = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]}
    assert (
        await client.post("/v2/models/mlp-v2/infer", json=wrong_type, headers=key.headers)
    ).status_code == 400
    short = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert (await client.post("/v2/models/mlp-v2/infer", json=short, headers=key.headers)).status_code == 400
    assert (await client.get("/v2/models/mlp-v2", headers=(await sign_up(client)).headers)).status_code == 404
    assert (await client.get("/v2/models/mlp-v2")).status_code == 401


async def test_the_prediction_route_keeps_every_gateway_rule(settings: Settings) -> None:
    # A window longer than the test, so no request leaves it while the test counts; a budget large enough
    # for the polls while the model loads, however slow the machine.
    tight = settings.model_copy(
        update={"rate_limit": 200, "rate_limit_window_s": 3600, "max_request_body_bytes": 4096}
    )
    async with app_client(tight) as (app, client):
        owner = await sign_up(client)
        key = await api_key(client, owner, scopes=["models:read"])
        as_key = {"X-API-Key": key}
        content = mlp_bytes(9)
        model_id = (await upload(client, owner, content)).json()["model_id"]
        await until_settled(client, owner, model_id)
        path = f"/api/v1/models/{model_id}/predict"

        answer = await client.post(path, json={"inputs": {"input": [[1, 2, 3, 4]]}}, headers=as_key)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        assert int(answer.headers["X-RateLimit-Remaining"]) < 200
        expected = ort.InferenceSession(content).run(None, {"input": np.asarray([[1, 2, 3, 4]], np.float32)})[
            0
        ]
        assert np.array_equal(np.asarray(answer.json()["outputs"]["output"], dtype=np.float32), expected)
        # The same tool over MCP answers the same numbers.
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
        call["params"] = {
            "name": "predict",
            "arguments": {"model_id": model_id, "inputs": {"input": [[1, 2, 3, 4]]}},
        }
        mcp = await client.post("/api/v1/mcp", json=call, headers={**as_key, "Accept": "application/json"})
        structured = mcp.json()["result"]["structuredContent"]
        assert np.array_equal(np.asarray(structured["outputs"]["output"], dtype=np.float32), expected)

        refusals = [
            (await client.post(path, content=b"{not json", headers=as_key), 400, "not valid JSON"),
            (await client.post(path, json=[1, 2], headers=as_key), 400, "JSON object"),
            (await client.post(path, json={"inputs": {}}, headers=as_key), 400, "inputs"),
            (await client.post(path, json={"inputs": {"input": [[0.0] * 2000]}}, headers=as_key), 413, ""),
            (await client.post(path, json={"inputs": {"input": [[1, 2, 3, 4]]}}), 401, "authentication"),
            (
                await client.post(path, json={"inputs": {"x": 1}}, headers={"X-API-Key": "ak_live_forged"}),
                401,
                "",
            ),
        ]
        for response, status, words in refusals:
            assert response.status_code == status, response.text
            assert set(response.json()) >= {"error", "code"} and words in response.json()["error"]
        keys = (await client.get("/api/v1/auth/apikeys", headers=owner.headers)).json()["api_keys"]
        key_id = next(k["id"] for k in keys if key.startswith(k["prefix"]))
        assert (
            await client.delete(f"/api/v1/auth/apikey/{key_id}", headers=owner.headers)
        ).status_code == 200
        revoked = await client.post(path, json={"inputs": {"input": [[1, 2, 3, 4]]}}, headers=as_key)
        assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]  # no stale cached key

        # Spend what is left of the owner's budget: every prediction passes, the next one is refused.
        budget = await client.post(path, json={"inputs": {"input": [[1, 2, 3, 4]]}}, headers=owner.headers)
        left = int(budget.headers["X-RateLimit-Remaining"])
        spent = [
            await client.post(path, json={"inputs": {"input": [[1, 2, 3, 4]]}}, headers=owner.headers)
            for _ in range(left)
        ]
        assert {r.status_code for r in spent} <= {200}
        last = await client.post(path, json={"inputs": {"input": [[1, 2, 3, 4]]}}, headers=owner.headers)
        assert (
            last.status_code == 429 and last.json()["code"] == "RATE_LIMITED" and last.headers["Retry-After"]
        )
        exposition = (await client.get("/metrics")).text
        assert (
            'aiserve_http_requests_total{method="POST",route="/api/v1/models/{model_id}/predict",status="200"}'
            in (exposition)
        )
        assert (
            app.state.services.telemetry.registry.get_sample_value(
                "aiserve_tool_calls_total", {"tool": "predict", "surface": "rest", "outcome": "ok"}
            )
            == 2 + left  # the key's prediction, the one that read the budget, and the rest of it
        )


async def test_model_status_and_prediction_counts_are_published(
    served: tuple[Starlette, httpx.AsyncClient],
) -> None:
    app, client = served
    owner, other = await sign_up(client), await sign_up(client)
    bus = app.state.services.events
    mine = bus.subscribe(owner.user_id, frozenset({"models"}))
    theirs = bus.subscribe(other.user_id, frozenset({"models"}))
    try:
        model_id = (await upload(client, owner, mlp_bytes(4))).json()["model_id"]
        status = await asyncio.wait_for(mine.next(), 10)
        assert (status.type, status.data) == (
            "model.status",
            {"model_id": model_id, "status": "ready", "reason": None},
        )
        await client.post(
            f"/api/v1/models/{model_id}/predict",
            json={"inputs": {"input": [[1, 2, 3, 4]]}},
            headers=owner.headers,
        )
        counts = await asyncio.wait_for(mine.next(), 10)
        assert (counts.type, counts.data) == (
            "model.predictions",
            {"model_id": model_id, "total": 1, "errors": 0, "pid": os.getpid()},
        )
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(theirs.next(), 0.2)  # nobody else hears of it
    finally:
        bus.unsubscribe(mine)
        bus.unsubscribe(theirs)
