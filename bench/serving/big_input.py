"""A 1 MiB input (262,144 float32) through ``POST /v2/models/{name}/infer``, as JSON and as binary tensor
data (``Inference-Header-Content-Length``: a JSON header, then the raw little-endian bytes).

The model is a ReduceSum of a [1, 262144] input to [1, 1], so the cost measured is the request's, not the
model's. It runs on the ``aiserve`` stack (pinned to CPU 0, hey on CPU 1). The JSON body writes each value
with four decimals (about 2 MB, under the default JSON body limit); the binary body is the header plus
1 MiB. Per encoding and concurrency: the median of the repeated hey runs (req/s, p50, mean round trip,
server CPU per request).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.serving.launch import Launched, start_aiserve, stop
from bench.serving.load import repeated
from bench.serving.report import fmt

VALUES = 262_144
MODEL_NAME = "sum1m"
HEADER_LENGTH = "Inference-Header-Content-Length"
ENCODINGS = {"json": "application/json", "binary": "application/octet-stream"}


def reduce_sum_model(path: Path) -> None:
    """ReduceSum over a [1, VALUES] float input, at an IR version onnxruntime releases since 1.10 read."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input"], ["output"], keepdims=1)],
        MODEL_NAME,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, VALUES])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_bodies(run_dir: Path) -> tuple[dict[str, str], int, float]:
    """The JSON and binary body files, the binary header's length, and the inputs' sum."""
    values = np.round(np.random.default_rng(0).random(VALUES), 4).astype(np.float32)
    tensor = {"name": "input", "shape": [1, VALUES], "datatype": "FP32"}
    as_json = json.dumps({"inputs": [{**tensor, "data": [round(float(v), 4) for v in values]}]})
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": values.nbytes}}]}).encode()
    files = {"json": run_dir / "big_input.json", "binary": run_dir / "big_input.bin"}
    files["json"].write_text(as_json)
    files["binary"].write_bytes(header + values.astype("<f4").tobytes())
    return {k: str(v) for k, v in files.items()}, len(header), float(values.sum(dtype=np.float64))


def check(launched: Launched, files: dict[str, str], header_length: int, expected: float) -> None:
    """Both encodings answer 200 with the sum."""
    for encoding, content_type in ENCODINGS.items():
        headers = {"Content-Type": content_type, **launched.headers}
        if encoding == "binary":
            headers[HEADER_LENGTH] = str(header_length)
        answer = httpx.post(
            launched.url, content=Path(files[encoding]).read_bytes(), headers=headers, timeout=30
        )
        if answer.status_code != 200:
            raise RuntimeError(f"{encoding}: {answer.status_code} {answer.text[:200]}")
        got = answer.json()["outputs"][0]["data"][0]
        if abs(got - expected) > 1e-3 * abs(expected):
            raise RuntimeError(f"{encoding}: sum {got}, expected {expected}")


def measure_big_input(
    run_dir: Path, concs: list[int], duration: int, repeats: int, timeout: int, bp: Any
) -> list[dict[str, Any]]:
    """A row per encoding and concurrency, or one row with the error."""
    run_dir.mkdir(exist_ok=True)
    model_path = run_dir / f"{MODEL_NAME}.onnx"
    reduce_sum_model(model_path)
    files, header_length, expected = write_bodies(run_dir)
    launched = start_aiserve("aiserve", run_dir, str(model_path), "", timeout, MODEL_NAME)
    rows: list[dict[str, Any]] = []
    try:
        if launched.error:
            return [{"encoding": "-", "error": launched.error}]
        launched.url = f"{launched.base}/v2/models/{MODEL_NAME}/infer"
        check(launched, files, header_length, expected)
        key = dict(launched.headers)
        for encoding, content_type in ENCODINGS.items():
            launched.body = files[encoding]
            launched.headers = {**key, HEADER_LENGTH: str(header_length)} if encoding == "binary" else key
            size = Path(files[encoding]).stat().st_size
            for conc in concs:
                row = {"encoding": encoding, "body_bytes": size, "conc": conc}
                row.update(repeated(launched, conc, duration, repeats, bp, content_type))
                print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
                rows.append(row)
    except Exception as exc:  # a row with the error, not a crash
        rows.append({"encoding": "-", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        stop(launched, bp)
    return rows


def print_big_input(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n### 1 MiB input ({VALUES:,} float32) through POST /v2/models/{{name}}/infer, aiserve on CPU 0\n"
    )
    print("| encoding | body bytes | c | req/s | p50 ms | mean round trip ms | CPU µs/req |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if row.get("error"):
            print(f"| error: {row['error'][:150]} | | | | | | |")
            continue
        print(
            f"| {row['encoding']} | {row['body_bytes']:,} | {row['conc']} | {fmt(row['ok_rps'])} | "
            f"{fmt(row['p50_ms'], 2)} | {row['mean_rt_us'] / 1000:,.2f} | {fmt(row['cpu_us_per_req'], 0)} |"
        )
