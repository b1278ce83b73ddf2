"""One read tool through MCP and through REST on the same server, one request at a time.

The server is a fresh ``aiserve`` stack serving the small MLP, which has answered one prediction: the
tool's own cost does not grow with the model's traffic (``get_model`` summarises the model's latency
window, up to 10,000 predictions, on every call).

The tool is ``get_model`` (``GET /api/v1/models/{id}`` over REST; ``tools/call`` of ``get_model`` as a
stateless JSON-RPC POST to ``/api/v1/mcp``), both with the same API key. The client is this process,
pinned to CPU 1 (the server is on CPU 0), on one keep-alive ``http.client`` connection per surface; after
a warm-up the surfaces take turns in blocks, so drift on the machine falls on all of them alike. MCP is
called twice: as MCP clients do (``Accept: application/json, text/event-stream``: the answer is an event
stream) and as a bare JSON client (``Accept: application/json``). Per surface: client round trip p50,
mean and p99, and the server's CPU per call (its process tree's utime + stime over the blocks).
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.serving.launch import Launched, start_aiserve, stop
from bench.serving.load import cpu_ticks
from bench.serving.stacks import SIZES

MCP_PATH = "/api/v1/mcp"
TOOL = "get_model"


@dataclass(frozen=True)
class Surface:
    name: str
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


def surfaces(launched: Launched) -> list[Surface]:
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": TOOL, "arguments": {"model_id": launched.model_id}},
    }
    mcp = {"Content-Type": "application/json", **launched.headers}
    return [
        Surface(
            "REST GET /api/v1/models/{id}",
            "GET",
            f"/api/v1/models/{launched.model_id}",
            None,
            launched.headers,
        ),
        Surface(
            f"MCP tools/call {TOOL} (event stream)",
            "POST",
            MCP_PATH,
            json.dumps(call).encode(),
            {**mcp, "Accept": "application/json, text/event-stream"},
        ),
        Surface(
            f"MCP tools/call {TOOL} (JSON)",
            "POST",
            MCP_PATH,
            json.dumps(call).encode(),
            {**mcp, "Accept": "application/json"},
        ),
    ]


@contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """This process on ``cpus`` for the duration."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def call(connection: http.client.HTTPConnection, surface: Surface) -> bytes:
    connection.request(surface.method, surface.path, body=surface.body, headers=surface.headers)
    answer = connection.getresponse()
    body = answer.read()
    if answer.status != 200 or b'"isError":true' in body.replace(b" ", b""):
        raise RuntimeError(f"{surface.name}: {answer.status} {body[:200]!r}")
    return body


def timed(connection: http.client.HTTPConnection, surface: Surface, calls: int) -> list[float]:
    """Round trips in µs."""
    out = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        call(connection, surface)
        out.append((time.perf_counter_ns() - started) / 1000)
    return out


def compare(launched: Launched, bp: Any, calls: int = 4000, blocks: int = 10) -> dict[str, Any]:
    """``calls`` timed calls per surface after 500 of warm-up, in ``blocks`` alternating blocks."""
    assert launched.proc is not None
    address = urlsplit(launched.base)
    tick = os.sysconf("SC_CLK_TCK")
    measured = surfaces(launched)
    times: dict[str, list[float]] = {s.name: [] for s in measured}
    ticks = dict.fromkeys(times, 0)
    with pinned({1}):
        connections = {
            s.name: http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port)
            for s in measured
        }
        sample = {s.name: call(connections[s.name], s)[:300].decode(errors="replace") for s in measured}
        for surface in measured:
            timed(connections[surface.name], surface, 500)
        for _ in range(blocks):
            for surface in measured:
                before = cpu_ticks(bp.tree_pids(launched.proc.pid))
                times[surface.name] += timed(connections[surface.name], surface, calls // blocks)
                after = cpu_ticks(bp.tree_pids(launched.proc.pid))
                ticks[surface.name] += sum(t - before.get(p, 0) for p, t in after.items())
        for connection in connections.values():
            connection.close()
    rows = []
    for surface in measured:
        latencies = sorted(times[surface.name])
        rows.append(
            {
                "surface": surface.name,
                "calls": len(latencies),
                "p50_us": round(statistics.median(latencies), 1),
                "mean_us": round(statistics.fmean(latencies), 1),
                "p99_us": round(latencies[int(0.99 * len(latencies))], 1),
                "server_cpu_us_per_call": round(ticks[surface.name] / tick * 1e6 / len(latencies), 1),
                "sample": sample[surface.name],
            }
        )
    return {"tool": TOOL, "rows": rows}


def measure_mcp_rest(run_dir: Path, timeout: int, bp: Any, ort_floor: Any) -> dict[str, Any]:
    """``compare`` on a fresh ``aiserve`` server, or the error."""
    import onnx

    run_dir.mkdir(exist_ok=True)
    model_path, body = run_dir / "small.onnx", run_dir / "body.json"
    onnx.save(ort_floor.make_mlp(SIZES["small"], "small"), str(model_path))
    body.write_text(json.dumps(bp.bodies(SIZES["small"][0])["platform"]))
    launched = start_aiserve("aiserve", run_dir, str(model_path), str(body), timeout)
    try:
        if launched.error:
            return {"error": launched.error}
        return compare(launched, bp)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        stop(launched, bp)


def print_mcp_rest(result: dict[str, Any]) -> None:
    if result.get("error"):
        print(f"\n### MCP tools/call vs REST: error: {result['error']}")
        return
    rows = result["rows"]
    rest = rows[0]
    print(f"\n### MCP tools/call vs REST: {result['tool']}, one request at a time (client on CPU 1)\n")
    print("| surface | calls | p50 µs | mean µs | p99 µs | server CPU µs/call | p50 ÷ REST | mean ÷ REST |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['surface']} | {row['calls']} | {row['p50_us']:,.0f} | {row['mean_us']:,.0f} | "
            f"{row['p99_us']:,.0f} | {row['server_cpu_us_per_call']:,.0f} | "
            f"{row['p50_us'] / rest['p50_us']:.2f}x | {row['mean_us'] / rest['mean_us']:.2f}x |"
        )
