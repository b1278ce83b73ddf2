"""Workers never outlive the server that started them: a ``kill -9`` of ``aiserve serve`` takes its workers
(rented ones and model replicas) with it, the next start ends their contracts and settles their holds for
the time they ran, a worker notices a dead parent by itself (with and without the kernel's parent-death
signal), and Ctrl-C stops everything without a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from aiserve_mcp.worker import TOKEN_ENV
from aiserve_mcp.worker.launch import CONTRACT_ENV, PDEATHSIG_ENV, contract_workdirs
from tests.conftest import REDIS_URL, Account, free_port, funded, sign_up, until_healthy
from tests.serving.test_model_deployments import torchscript
from tests.serving.test_models import until_settled, upload

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

PRICE = Decimal(36)  # USD per hour: one cent per second


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie waiting to be collected has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def workers_of(parent: int) -> list[int]:
    """Pids of ``parent``'s children that run ``aiserve worker``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if int(stat[stat.rfind(")") + 2 :].split()[1]) == parent and cmdline[1:4] == [
            b"-m",
            b"aiserve_mcp",
            b"worker",
        ]:
            found.append(int(entry.name))
    return sorted(found)


async def until_gone(pids: list[int], within_s: float) -> float:
    """Seconds until none of ``pids`` runs; fails after ``within_s``."""
    started = time.monotonic()
    while any(running(pid) for pid in pids):
        assert time.monotonic() - started < within_s, f"still running: {[p for p in pids if running(p)]}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def pid_of(instance_id: str) -> int:
    return int(instance_id.rsplit("-", 1)[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@asynccontextmanager
async def aiserve_serve(env: dict[str, str], log: Path, *, own_group: bool = False) -> AsyncIterator[Server]:
    """``aiserve serve`` as a subprocess (its stderr, and its workers', in ``log``), healthy; killed at the
    end if it still runs."""
    port = free_port()
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "aiserve_mcp", "serve", "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=sink,
            start_new_session=own_group,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        await until_healthy(server.url, process, log)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def reserve_local(http: httpx.AsyncClient, owner: Account, count: int) -> list[dict[str, object]]:
    answer = await http.post(
        "/api/v1/gpu/instances/reserve",
        json={"count": count, "filters": {"provider": "local"}, "config": {"duration_hours": 1}},
        headers=owner.headers,
    )
    assert answer.status_code == 201, answer.text
    reserved: list[dict[str, object]] = answer.json()["reserved"]
    assert len(reserved) == count and {r["status"] for r in reserved} == {"running"}
    return reserved


async def test_a_killed_server_takes_its_workers_along_and_its_restart_ends_their_contracts(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **server_env,
        "AISERVE_BILLING_SANDBOX": "true",
        "AISERVE_LOCAL_CPU_SLOTS": "2",
        "AISERVE_LOCAL_PRICE_PER_HOUR": str(PRICE),
    }
    if REDIS_URL:
        env["AISERVE_REDIS_URL"] = REDIS_URL
    log = tmp_path / "server.log"
    async with aiserve_serve(env, log) as first, httpx.AsyncClient(base_url=first.url, timeout=60) as http:
        owner = await funded(http, 500)
        before_rent = time.time()
        reserved = await reserve_local(http, owner, 2)
        model = await upload(http, owner, torchscript()[0], filename="scaled.pt")  # a model replica worker
        assert (await until_settled(http, owner, model.json()["model_id"]))["status"] == "ready"
        rented = [pid_of(str(r["instance_id"])) for r in reserved]
        workers = workers_of(first.process.pid)
        assert set(rented) < set(workers) and len(workers) == 3, (rented, workers)
        for pid, contract in zip(rented, reserved, strict=True):
            assert environ(pid)[CONTRACT_ENV] == contract["contract_id"]
        body = (await http.get("/api/v1/billing/transactions", headers=owner.headers)).json()
        assert body["held"] == float(2 * PRICE)

        os.kill(first.process.pid, signal.SIGKILL)
        killed_at = time.time()
        first.process.wait(10)
        took = await until_gone(workers, within_s=5)
    print(f"every worker gone {took:.2f} s after the kill")
    await asyncio.sleep(2)  # the time the server is down is not charged

    async with aiserve_serve(env, log) as second, httpx.AsyncClient(base_url=second.url, timeout=60) as http:
        stats = (await http.get("/stats")).json()  # counts stored contracts: no refresh asked anything
        assert stats["gpu_instances_active"] == 0
        body = (await http.get("/api/v1/billing/transactions", headers=owner.headers)).json()
        assert body["held"] == 0.0
        charges = [
            Decimal(str(t["amount"])).copy_abs() for t in body["transactions"] if t["kind"] == "charge"
        ]
        assert len(charges) == 2
        ran_at_most = PRICE * Decimal(killed_at + 0.5 - before_rent) / 3600  # until the kill, not the restart
        for charge in charges:
            assert PRICE / 3600 <= charge <= ran_at_most, (charges, ran_at_most)
        assert Decimal(str(body["credits"])) == Decimal(500) - sum(charges)
        listed = (await http.get("/api/v1/gpu/contracts?active=false", headers=owner.headers)).json()[
            "contracts"
        ]
        assert {c["status"] for c in listed} == {"destroyed"}
        assert all("server that started this worker stopped" in c["status_message"] for c in listed), listed
        assert all(contract_workdirs(str(r["contract_id"])) == [] for r in reserved)
        assert "Traceback" not in second.stderr()


INTERMEDIATE = """
import asyncio, json, sys, threading, time
from aiserve_mcp.worker.launch import start_worker

loops = []

def start():
    loop = asyncio.new_event_loop()
    loops.append(loop)  # kept open: a closed loop would stop the worker itself
    env, contract = json.loads(sys.argv[2]), sys.argv[3] or None
    started = start_worker(visible_devices="", extra_env=env, contract_id=contract)
    worker = loop.run_until_complete(started)
    print(json.dumps({"pid": worker.process.pid}), flush=True)

if sys.argv[1] == "thread":
    thread = threading.Thread(target=start)
    thread.start()
    thread.join()  # the thread that forked the worker is gone
else:
    start()
time.sleep(600)
"""


@asynccontextmanager
async def worker_of_intermediate(
    how: str, extra_env: dict[str, str], tmp_path: Path, contract_id: str = ""
) -> AsyncIterator[tuple[subprocess.Popen[bytes], int]]:
    """A worker started (from the main thread, or from a thread that then ends) by an intermediate process
    that the test kills."""
    with (tmp_path / "intermediate.log").open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", INTERMEDIATE, how, json.dumps(extra_env), contract_id],
            stdout=subprocess.PIPE,
            stderr=sink,
        )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        pid = json.loads(line)["pid"]
        yield process, pid
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if "pid" in locals() and running(pid):
            os.kill(pid, signal.SIGKILL)


async def test_the_parent_death_signal_alone_stops_a_worker(tmp_path: Path) -> None:
    """Started from the main thread: the kernel's signal arrives even though the worker would check its
    parent only once an hour."""
    checks_hourly = {"AISERVE_WORKER_PARENT_CHECK_S": "3600"}
    async with worker_of_intermediate("main", checks_hourly, tmp_path) as (intermediate, pid):
        assert environ(pid)[PDEATHSIG_ENV] == "1"
        await asyncio.sleep(0.5)
        assert running(pid)
        intermediate.kill()
        took = await until_gone([pid], within_s=3)
    print(f"the worker stopped {took:.2f} s after its parent was killed")


async def test_the_parent_check_alone_stops_a_worker_started_from_a_thread_that_ended(tmp_path: Path) -> None:
    """Started from a thread that then ends: no parent-death signal is asked for (the kernel would send it
    when that thread ends), so the worker outlives the thread, and its own check stops it once the parent
    process is killed."""
    async with worker_of_intermediate("thread", {}, tmp_path) as (intermediate, pid):
        assert PDEATHSIG_ENV not in environ(pid)
        await asyncio.sleep(1.5)
        assert running(pid), "the worker stopped when the thread that started it ended"
        intermediate.kill()
        took = await until_gone([pid], within_s=4)
    assert "is gone; stopping" in (tmp_path / "intermediate.log").read_text()
    print(f"the worker stopped {took:.2f} s after its parent was killed")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_a_worker_stops_quietly_on_a_signal(signum: signal.Signals) -> None:
    env = {"PATH": os.environ["PATH"], TOKEN_ENV: "t0ken", "AISERVE_LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "aiserve_mcp", "worker", "--port", "0"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        assert "listening" in json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
        process.send_signal(signum)
        code = await asyncio.wait_for(process.wait(), 15)
        stderr = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 0 and "Traceback" not in stderr, stderr


async def test_ctrl_c_stops_the_server_and_its_workers_without_a_traceback(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**server_env, "AISERVE_LOCAL_CPU_SLOTS": "2", "AISERVE_LOG_LEVEL": "INFO"}
    log = tmp_path / "server.log"
    async with aiserve_serve(env, log, own_group=True) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            owner = await sign_up(http)
            reserved = await reserve_local(http, owner, 2)
        pids = [pid_of(str(r["instance_id"])) for r in reserved]
        os.killpg(server.process.pid, signal.SIGINT)  # what a terminal sends its foreground group on Ctrl-C
        code = await asyncio.to_thread(server.process.wait, 30)
        await until_gone(pids, within_s=5)
    stderr = log.read_text()
    assert code == 0 and "Traceback" not in stderr, stderr
    assert "Shutting down" in stderr  # the server's own log was collected
