"""The Open Inference Protocol's binary tensor data extension: the codec, requests built by hand over HTTP
(binary in, binary out, malformed bodies, the separate body limit) and Triton's own HTTP client."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import orjson
import pytest
import tritonclient.http as triton  # type: ignore[import-untyped]
from starlette.applications import Starlette

from aiserve_mcp.app import create_app
from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.runtime.binary_tensors import (
    attach_inputs,
    binary_outputs,
    encode_response,
    encode_tensor,
    split_body,
)
from tests.conftest import Account, api_key, app_client, serve, sign_up
from tests.serving.test_models import mlp_bytes, until_settled, upload

JSON_LIMIT = 256 * 1024
BINARY_LIMIT = 2 * 1024 * 1024
HEADER = "Inference-Header-Content-Length"


def body_of(header: dict[str, Any], *tensors: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary request body and its headers."""
    head = orjson.dumps(header)
    return b"".join([head, *tensors]), {HEADER: str(len(head))}


def binary_input(name: str, datatype: str, shape: list[int], raw: bytes) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}}


def decoded(header: dict[str, Any], *tensors: bytes) -> list[Any]:
    body, headers = body_of(header, *tensors)
    return [t["data"] for t in attach_inputs(*split_body(body, headers[HEADER]))["inputs"]]


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("FP32", np.array([[1.5, -2.25], [3.0, 1e-7]], dtype=np.float32)),
        ("INT64", np.array([[-(2**62), 7, 0]], dtype=np.int64)),
        ("BOOL", np.array([True, False, True])),
        ("BYTES", np.array([["héllo", ""], ["a\x00b", "z"]], dtype=object)),
    ],
)
def test_tensors_round_trip_little_endian_row_major(datatype: str, values: np.ndarray) -> None:
    raw = encode_tensor(datatype, values.reshape(-1))
    if datatype == "BYTES":
        assert raw.startswith(struct.pack("<I", len("héllo".encode())) + "héllo".encode())
    else:
        assert raw == values.astype(values.dtype.newbyteorder("<")).tobytes()
    (array,) = decoded({"inputs": [binary_input("x", datatype, list(values.shape), raw)]}, raw)
    assert array.shape == values.shape and array.tolist() == values.tolist()


def test_bytes_outputs_that_are_not_text_are_written_as_json() -> None:
    assert encode_tensor("BYTES", [{"a": 0.5}, b"\xff"]) == b'\x09\x00\x00\x00{"a":0.5}\x01\x00\x00\x00\xff'


def test_json_and_binary_inputs_mix_in_order() -> None:
    first, second = encode_tensor("INT32", [1, 2]), encode_tensor("FP64", [0.5])
    header = {
        "inputs": [
            binary_input("a", "INT32", [2], first),
            {"name": "j", "datatype": "INT8", "shape": [1], "data": [3]},
            binary_input("b", "FP64", [1], second),
        ]
    }
    a, j, b = decoded(header, first, second)
    assert a.tolist() == [1, 2] and j == [3] and b.tolist() == [0.5]


@pytest.mark.parametrize(
    ("header_length", "header", "tail", "problem"),
    [
        ("999", {"inputs": []}, b"", "not a length within the body"),
        ("-1", {"inputs": []}, b"", "not a length within the body"),
        (None, {"inputs": [binary_input("x", "FP32", [2], b"12345678")]}, b"1234", "runs past"),
        (None, {"inputs": [binary_input("x", "FP32", [2], b"12345678")]}, b"123456789", "take 8 bytes"),
        (None, {"inputs": [binary_input("x", "FP32", [3], b"12345678")]}, b"12345678", "takes 12"),
        (None, {"inputs": [binary_input("x", "BOOL", [1], b"\x02")]}, b"\x02", "0 or 1"),
        (
            None,
            {"inputs": [binary_input("x", "BYTES", [1], b"\x09\x00\x00\x00ab")]},
            b"\x09\x00\x00\x00ab",
            "runs past",
        ),
        (
            None,
            {"inputs": [binary_input("x", "BYTES", [2], b"\x01\x00\x00\x00a")]},
            b"\x01\x00\x00\x00a",
            "shape holds 2",
        ),
        (
            None,
            {"inputs": [binary_input("x", "BYTES", [1], b"\x01\x00\x00\x00\xff")]},
            b"\x01\x00\x00\x00\xff",
            "UTF-8",
        ),
        (None, {"inputs": [binary_input("x", "COMPLEX", [1], b"12")]}, b"12", "no binary form"),
        (None, {"inputs": [{**binary_input("x", "INT8", [1], b"1"), "data": [1]}]}, b"1", "both data"),
        (
            None,
            {
                "inputs": [
                    {"name": "x", "datatype": "INT8", "shape": [1], "parameters": {"binary_data_size": -1}}
                ]
            },
            b"",
            "non-negative",
        ),
    ],
)
def test_malformed_bodies_are_refused(
    header_length: str | None, header: dict[str, Any], tail: bytes, problem: str
) -> None:
    body, headers = body_of(header, tail)
    with pytest.raises(ValidationFailed, match=problem):
        attach_inputs(*split_body(body, header_length or headers[HEADER]))


def test_a_header_that_is_not_a_json_object_is_refused() -> None:
    with pytest.raises(ValidationFailed, match="not valid JSON"):
        split_body(b"{nope", "5")
    with pytest.raises(ValidationFailed, match="JSON object"):
        split_body(b"[1]", "3")


def test_outputs_asked_in_binary_follow_the_header() -> None:
    response = {
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]},
            {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["ok"]},
        ]
    }
    asked = binary_outputs({"outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "s"}]})
    assert (asked("y"), asked("s"), asked("other")) == (True, False, False)
    body, length = encode_response(orjson.loads(orjson.dumps(response)), asked)
    assert length is not None
    header = orjson.loads(body[:length])
    assert header["outputs"][0] == {
        "name": "y",
        "datatype": "FP32",
        "shape": [2],
        "parameters": {"binary_data_size": 8},
    }
    assert header["outputs"][1]["data"] == ["ok"]
    assert body[length:] == np.array([1.0, 2.0], dtype="<f4").tobytes()
    everything = binary_outputs({"parameters": {"binary_data_output": True}})
    body, length = encode_response(orjson.loads(orjson.dumps(response)), everything)
    assert length is not None and body[length:] == np.array([1, 2], "<f4").tobytes() + b"\x02\x00\x00\x00ok"
    overridden = binary_outputs(
        {
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
        }
    )
    assert (overridden("y"), overridden("s")) == (False, True)  # an output's own binary_data wins
    plain = binary_outputs({"outputs": [{"name": "y"}]})
    assert encode_response(orjson.loads(orjson.dumps(response)), plain) == (orjson.dumps(response), None)


@pytest.fixture
def limited(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"max_request_body_bytes": JSON_LIMIT, "max_binary_body_bytes": BINARY_LIMIT}
    )


async def mlp_for(client: httpx.AsyncClient) -> tuple[Account, bytes]:
    """An API key's account owning the MLP named ``mlp``, ready, and the model's bytes."""
    owner = await sign_up(client)
    key = Account(owner.email, owner.user_id, await api_key(client, owner, scopes=["models:read"]), "")
    content = mlp_bytes(3)
    model_id = (await upload(client, owner, content, name="mlp")).json()["model_id"]
    await until_settled(client, owner, model_id)
    return key, content


@pytest.fixture
async def served(limited: Settings) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    async with app_client(limited) as (app, client):
        yield app, client


async def test_binary_in_and_out_past_the_json_limit(served: tuple[Starlette, httpx.AsyncClient]) -> None:
    _, client = served
    key, content = await mlp_for(client)
    rows = np.random.default_rng(0).standard_normal((65536, 4)).astype(np.float32)  # 1 MiB
    raw = rows.tobytes()
    request = {
        "id": "big",
        "inputs": [binary_input("input", "FP32", [65536, 4], raw)],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }
    body, headers = body_of(request, raw)
    answer = await client.post("/v2/models/mlp/infer", content=body, headers={**headers, **key.headers})
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["content-type"] == "application/octet-stream"
    length = int(answer.headers[HEADER])
    header = orjson.loads(answer.content[:length])
    (out,) = header["outputs"]
    assert (header["id"], out["shape"], out["datatype"]) == ("big", [65536, 2], "FP32")
    assert out["parameters"] == {"binary_data_size": 65536 * 2 * 4} and "data" not in out
    expected = ort.InferenceSession(content).run(None, {"input": rows})[0]
    assert np.array_equal(np.frombuffer(answer.content[length:], dtype="<f4").reshape(65536, 2), expected)

    as_json = {
        "inputs": [{"name": "input", "shape": [65536, 4], "datatype": "FP32", "data": rows.ravel().tolist()}]
    }
    refused = await client.post("/v2/models/mlp/infer", json=as_json, headers=key.headers)
    assert refused.status_code == 413 and refused.json()["code"] == "PAYLOAD_TOO_LARGE"

    huge = np.zeros((BINARY_LIMIT // 16 + 1, 4), np.float32).tobytes()
    body, headers = body_of(
        {"inputs": [binary_input("input", "FP32", [BINARY_LIMIT // 16 + 1, 4], huge)]}, huge
    )
    too_big = await client.post("/v2/models/mlp/infer", content=body, headers={**headers, **key.headers})
    assert too_big.status_code == 413 and too_big.json()["code"] == "PAYLOAD_TOO_LARGE"


async def test_json_requests_binary_outputs_and_refusals(served: tuple[Starlette, httpx.AsyncClient]) -> None:
    _, client = served
    key, content = await mlp_for(client)
    data = [0.0, 0.5, 1.0, 1.5]
    plain = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": data}]}
    answer = await client.post("/v2/models/mlp/infer", json=plain, headers=key.headers)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert HEADER.lower() not in answer.headers
    expected = ort.InferenceSession(content).run(None, {"input": np.asarray([data], np.float32)})[0]
    assert np.array_equal(np.asarray(answer.json()["outputs"][0]["data"], np.float32), expected.ravel())

    asks_binary = {**plain, "parameters": {"binary_data_output": True}}
    answer = await client.post("/v2/models/mlp/infer", json=asks_binary, headers=key.headers)
    length = int(answer.headers[HEADER])
    assert np.array_equal(np.frombuffer(answer.content[length:], "<f4"), expected.ravel())

    raw = np.asarray([data], np.float32).tobytes()
    for header_length, tail, problem in (
        ("1000", raw, "not a length"),
        (None, raw + b"\x00", "take 16 bytes"),
    ):
        body, headers = body_of({"inputs": [binary_input("input", "FP32", [1, 4], raw)]}, tail)
        headers[HEADER] = header_length or headers[HEADER]
        bad = await client.post("/v2/models/mlp/infer", content=body, headers={**headers, **key.headers})
        assert bad.status_code == 400 and bad.json()["code"] == "VALIDATION_ERROR"
        assert problem in bad.json()["error"]
    wrong_type = np.ones((1, 4), np.int64).tobytes()
    body, headers = body_of({"inputs": [binary_input("input", "INT64", [1, 4], wrong_type)]}, wrong_type)
    bad = await client.post("/v2/models/mlp/infer", content=body, headers={**headers, **key.headers})
    assert bad.status_code == 400 and "FP32" in bad.json()["error"]
    body, headers = body_of({"inputs": [binary_input("input", "FP32", [1, 4], raw)]}, raw)
    assert (await client.post("/v2/models/mlp/infer", content=body, headers=headers)).status_code == 401


async def test_tritonclient_with_its_default_binary_data(limited: Settings) -> None:
    app = create_app(limited)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        key, content = await mlp_for(client)
        rows = np.random.default_rng(1).standard_normal((20000, 4)).astype(np.float32)  # over the JSON limit

        def infer(outputs: list[Any] | None) -> np.ndarray:
            triton_client = triton.InferenceServerClient(url.removeprefix("http://"))
            try:
                metadata = triton_client.get_server_metadata()
                assert metadata["name"] == "aiserve" and "binary_tensor_data" in metadata["extensions"]
                tensor = triton.InferInput("input", list(rows.shape), "FP32")
                tensor.set_data_from_numpy(rows)  # binary_data=True by default
                result = triton_client.infer("mlp", [tensor], outputs=outputs, headers=key.headers)
                array = result.as_numpy("output")
                assert isinstance(array, np.ndarray)
                return array
            finally:
                triton_client.close()

        expected = ort.InferenceSession(content).run(None, {"input": rows})[0]
        for outputs in (
            None,
            [triton.InferRequestedOutput("output")],
            [triton.InferRequestedOutput("output", binary_data=False)],
        ):
            assert np.array_equal(await asyncio.to_thread(infer, outputs), expected)  # JSON floats round-trip
