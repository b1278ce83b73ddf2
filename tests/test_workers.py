"""``aiserve serve --workers 2``: two server processes on one port, sharing PostgreSQL and Redis.

Each request below goes out on a new connection, so the kernel hands it to either process; 30 requests all
landing on one process would happen once in 2**29 runs. The server runs on PostgreSQL and Redis whatever
database the rest of the suite runs on: several processes only work with both.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from aiserve_mcp.supervisor import START_GRACE_S
from tests.conftest import LOCAL_REDIS_URL, Account, api_key, free_port, sign_up, until_healthy
from tests.serving.test_models import mlp_bytes, until_settled, upload

REQUESTS = 30
MCP_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
SESSION = "mcp-session-id"
TIMEOUT_S = 10


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def server_process(pid: int) -> bool:
    """Whether ``pid`` is one of the supervisor's server processes (not multiprocessing's tracker)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def all_gone(pids: list[int]) -> bool:
    """Whether every one of ``pids`` has stopped within 20 s."""
    for _ in range(200):
        if not any(alive(pid) for pid in pids):
            return True
        await asyncio.sleep(0.1)
    return False


def children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in found.read_text().split()] if found.exists() else []


@pytest.fixture
def workers_env(tmp_path: Path, postgres_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    env.update(
        AISERVE_DATA_DIR=str(tmp_path / "data"),
        AISERVE_DATABASE_URL=postgres_url,
        AISERVE_REDIS_URL=LOCAL_REDIS_URL,
        AISERVE_REDIS_PREFIX=f"aiserve-test:{uuid.uuid4().hex[:8]}:",
        AISERVE_LOG_LEVEL="WARNING",
        AISERVE_EVENTS_METRICS_INTERVAL_S="0.2",
        AISERVE_RATE_LIMIT="1000",
    )
    return env


@asynccontextmanager
async def serving(env: dict[str, str], log: Path) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """``aiserve serve --workers 2``; stopped with SIGTERM (and checked to stop) afterwards."""
    port = free_port()
    with await asyncio.to_thread(log.open, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "aiserve_mcp", "serve", "--port", str(port), "--workers", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await until_healthy(url, process, log)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 60)


def fresh_connections() -> httpx.AsyncClient:
    """A client that opens a new connection for every request."""
    return httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=TIMEOUT_S)


@asynccontextmanager
async def events(url: str, key: str, *streams: str) -> AsyncIterator[ClientConnection]:
    ws_url = "ws" + url.removeprefix("http") + "/ws"
    async with connect(ws_url, additional_headers={"X-API-Key": key}, proxy=None) as ws:
        for stream in streams:
            await ws.send(json.dumps({"type": "subscribe", "stream": stream}))
            while json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S)) != {
                "type": "subscribed",
                "stream": stream,
            }:
                pass  # an event of a stream subscribed to before
        yield ws


async def pids_seen(
    ws: ClientConnection, event: str, count: int, where: Callable[[dict[str, Any]], bool] = bool
) -> set[int]:
    """The pids named by ``event`` events (whose data satisfy ``where``) until ``count`` were seen."""
    pids: set[int] = set()
    async with asyncio.timeout(2 * TIMEOUT_S):
        while len(pids) < count:
            message = json.loads(await ws.recv())
            if message.get("type") == "event" and message.get("event") == event and where(message["data"]):
                pids.add(message["data"]["pid"])
    return pids


async def rpc(
    http: httpx.AsyncClient, url: str, key: str, method: str, session: str | None = None, **params: Any
) -> httpx.Response:
    headers = {**MCP_HEADERS, "X-API-Key": key, "MCP-Protocol-Version": "2025-11-25"}
    if session is not None:
        headers[SESSION] = session
    message = {"jsonrpc": "2.0", "id": str(uuid.uuid4()), "method": method, "params": params}
    return await http.post(f"{url}/api/v1/mcp", json=message, headers=headers)


async def refused_start(env: dict[str, str]) -> str:
    """What ``aiserve serve --workers 2`` says when it refuses to start (it must)."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aiserve_mcp", "serve", "--port", str(free_port()), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0, done.stderr
    return done.stderr


async def test_several_processes_need_postgresql_and_redis_and_no_sandbox(
    tmp_path: Path, workers_env: dict[str, str]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    env["AISERVE_DATA_DIR"] = str(tmp_path)
    said = await refused_start(env)
    assert "AISERVE_DATABASE_URL" in said and "AISERVE_REDIS_URL" in said, said
    assert not (tmp_path / "aiserve.db").exists()  # refused before touching anything
    said = await refused_start({**workers_env, "AISERVE_BILLING_SANDBOX": "true"})
    assert "AISERVE_BILLING_SANDBOX" in said and "--workers 1" in said, said


async def test_two_processes_share_state_models_and_mcp_sessions(
    workers_env: dict[str, str], tmp_path: Path
) -> None:
    async with (
        serving(workers_env, tmp_path / "server.log") as (url, supervisor),
        fresh_connections() as http,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S) as one,
    ):
        processes = children(supervisor.pid)
        owner = await sign_up(one)
        key = await api_key(one, owner)

        # Both processes run, and their events reach a subscriber of either through Redis.
        async with events(url, key, "metrics") as ws:
            server_pids = await pids_seen(ws, "metrics.snapshot", 2)
        assert server_pids <= set(processes)

        # One rate limit window, whichever process counts a request.
        remaining = []
        for _ in range(REQUESTS):
            answer = await http.get(f"{url}/api/v1/models", headers={"X-API-Key": key})
            assert answer.status_code == 200, answer.text
            remaining.append(int(answer.headers["X-RateLimit-Remaining"]))
        assert remaining == list(range(remaining[0], remaining[0] - REQUESTS, -1))

        await model_served_by_both(url, one, http, owner, key)
        stranger_key = await api_key(one, await sign_up(one))
        await mcp_session_across_processes(url, http, key, stranger_key)
        await legacy_sse_across_processes(url, http, key)

    assert supervisor.returncode == 0
    assert await all_gone(processes)


async def model_served_by_both(
    url: str, one: httpx.AsyncClient, http: httpx.AsyncClient, owner: Account, key: str
) -> None:
    """A model uploaded through one process is loaded by both as soon as it is ready, and serves from
    both."""
    async with events(url, key, "metrics") as ws:
        uploaded = await upload(one, owner, mlp_bytes(), name="mlp")
        assert uploaded.status_code == 201, uploaded.text
        model_id = uploaded.json()["model_id"]
        assert (await until_settled(one, owner, model_id))["status"] == "ready"
        assert len(await pids_seen(ws, "metrics.snapshot", 2, lambda d: d["models_loaded"] == 1)) == 2
    body = {"inputs": {"input": [[0.1, 0.2, 0.3, 0.4]]}}
    async with events(url, key, "models") as ws:
        outputs = []
        for _ in range(REQUESTS):
            answer = await http.post(
                f"{url}/api/v1/models/{model_id}/predict", json=body, headers={"X-API-Key": key}
            )
            assert answer.status_code == 200, answer.text
            outputs.append(answer.json()["outputs"])
        assert all(o == outputs[0] for o in outputs)
        assert len(await pids_seen(ws, "model.predictions", 2)) == 2


async def mcp_session_across_processes(
    url: str, http: httpx.AsyncClient, key: str, stranger_key: str
) -> None:
    """A session opened on one process answers on every connection, whichever process takes it; only to
    the credential that opened it; and ends for all with its DELETE."""
    opened = await rpc(
        http,
        url,
        key,
        "initialize",
        protocolVersion="2025-11-25",
        capabilities={},
        clientInfo={"name": "workers-test", "version": "1"},
    )
    assert opened.status_code == 200, opened.text
    session = opened.headers[SESSION]
    assert session.split(".", 1)[0] in {"p0", "p1"}
    headers = {**MCP_HEADERS, "X-API-Key": key, SESSION: session, "MCP-Protocol-Version": "2025-11-25"}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post(f"{url}/api/v1/mcp", json=note, headers=headers)).status_code == 202
    for _ in range(REQUESTS):
        listed = await rpc(http, url, key, "tools/list", session)
        assert listed.status_code == 200, listed.text
        assert listed.headers[SESSION] == session
        assert any(t["name"] == "predict" for t in listed.json()["result"]["tools"])

    for _ in range(4):
        assert (await rpc(http, url, stranger_key, "tools/list", session)).status_code == 404

    for _ in range(4):  # a GET stream, relayed or not, ends when its client leaves
        async with http.stream(
            "GET", f"{url}/api/v1/mcp", headers={**headers, "Accept": "text/event-stream"}
        ) as stream:
            assert stream.status_code in (200, 409), await stream.aread()
            if stream.status_code == 200:
                assert stream.headers["content-type"].startswith("text/event-stream")

    assert (await http.delete(f"{url}/api/v1/mcp", headers=headers)).status_code == 200
    for _ in range(4):
        assert (await rpc(http, url, key, "tools/list", session)).status_code == 404


async def test_stopping_or_killing_the_supervisor_stops_every_process_and_worker(
    workers_env: dict[str, str], tmp_path: Path
) -> None:
    async with serving(workers_env, tmp_path / "server.log") as (url, supervisor):
        started = time.monotonic()  # its processes answer: they started before this
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            owner = await sign_up(http)
            rented = await http.post("/api/v1/gpu/instances/local/cpu0", json={}, headers=owner.headers)
            assert rented.status_code == 201, rented.text
        worker_pid = int(rented.json()["instance_id"].rsplit("-", 1)[1])
        assert alive(worker_pid)
        # A process that dies on its own (here: the one not holding the worker), once past its start, is
        # replaced, and the port keeps answering.
        servers = [p for p in children(supervisor.pid) if server_process(p)]
        holder = parent_of(worker_pid)
        assert len(servers) == 2 and holder in servers
        await asyncio.sleep(max(0.0, START_GRACE_S + 0.5 - (time.monotonic() - started)))
        other = next(p for p in servers if p != holder)
        os.kill(other, signal.SIGKILL)
        for _ in range(200):
            replaced = [p for p in children(supervisor.pid) if server_process(p) and alive(p)]
            if len(replaced) == 2 and other not in replaced:
                break
            await asyncio.sleep(0.1)
        assert len(replaced) == 2 and other not in replaced
        await until_healthy(url, supervisor)
        processes = children(supervisor.pid)
        supervisor.kill()  # no chance to stop anything itself: the kernel tells its processes
        await asyncio.to_thread(supervisor.wait, 10)
        assert await all_gone([*processes, worker_pid])


async def legacy_sse_across_processes(url: str, http: httpx.AsyncClient, key: str) -> None:
    """A legacy SSE stream's messages, POSTed on new connections, reach the process holding the stream."""
    async with (
        httpx.AsyncClient(timeout=TIMEOUT_S) as streaming,
        streaming.stream("GET", f"{url}/api/v1/mcp/sse", headers={"X-API-Key": key}) as stream,
    ):
        assert stream.status_code == 200
        lines = stream.aiter_lines()
        path = ""
        async for line in lines:
            if line.startswith("data: "):
                path = line.removeprefix("data: ")
                break
        assert path.startswith(("/api/v1/mcp/messages/p0/", "/api/v1/mcp/messages/p1/")), path
        headers = {"X-API-Key": key, "Content-Type": "application/json"}
        init = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        }
        messages = [
            {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            *({"jsonrpc": "2.0", "id": n, "method": "ping"} for n in range(1, REQUESTS)),
        ]
        for message in messages:
            posted = await http.post(url + path, json=message, headers=headers)
            assert posted.status_code == 202, posted.text
        answered = set()
        async for line in lines:
            if line.startswith("data: "):
                answered.add(json.loads(line.removeprefix("data: "))["id"])
                if answered == set(range(REQUESTS)):
                    break
