"""``kill -9`` of the server in the middle of payment and spending bursts, then every request replayed
with its idempotency key on a new server: every acknowledged payment and spend survived, every replay of
one is a duplicate, and the totals count each request exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from decimal import Decimal

import httpx

from tests.conftest import REDIS_URL, free_port, sign_up, until_healthy

KILL_AFTER = 12  # answers received before the server is killed
MAX_PAIRS = 120  # payments and spends sent at most (120 spends stay under the default hourly limit)
PAYMENT = Decimal("3.25")
SPEND = Decimal("0.75")


async def _start(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "aiserve_mcp", "serve", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    await until_healthy(url, process)
    return process, url


def _pay(http: httpx.AsyncClient, headers: dict[str, str], i: int) -> asyncio.Task[httpx.Response]:
    body = {"amount": float(PAYMENT), "payment_preference": {"type": "card", "card_token": "tok_visa"}}
    return asyncio.ensure_future(
        http.post("/api/v1/billing/payment", json=body, headers={**headers, "Idempotency-Key": f"pay-{i}"})
    )


def _spend(http: httpx.AsyncClient, headers: dict[str, str], i: int) -> asyncio.Task[httpx.Response]:
    body = {"amount": float(SPEND), "idempotency_key": f"spend-{i}"}
    return asyncio.ensure_future(http.post("/api/v1/guardrails/spending/record", json=body, headers=headers))


async def test_a_killed_server_loses_nothing_acknowledged_and_counts_replays_once(
    server_env: dict[str, str],
) -> None:
    env = {**server_env, "AISERVE_BILLING_SANDBOX": "true", "AISERVE_RATE_LIMIT": "100000"}
    if REDIS_URL:
        env["AISERVE_REDIS_URL"] = REDIS_URL
    process, url = await _start(env)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            owner = await sign_up(http)
            burst: list[asyncio.Task[httpx.Response]] = []
            for i in range(MAX_PAIRS):  # a steady stream, so that the kill lands with requests in flight
                burst += [_pay(http, owner.headers, i), _spend(http, owner.headers, i)]
                await asyncio.sleep(0.002)
                if sum(task.done() for task in burst) >= KILL_AFTER:
                    break
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
            answers = await asyncio.gather(*burst, return_exceptions=True)
    finally:
        if process.poll() is None:
            process.kill()
    acknowledged = {
        i for i, answer in enumerate(answers) if isinstance(answer, httpx.Response) and answer.is_success
    }
    assert KILL_AFTER <= len(acknowledged) < len(burst), "the kill did not land mid-burst"
    pairs = len(burst) // 2

    process, url = await _start(env)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            replays = await asyncio.gather(
                *(make(http, owner.headers, i) for i in range(pairs) for make in (_pay, _spend))
            )
            again = await asyncio.gather(
                *(make(http, owner.headers, i) for i in range(pairs) for make in (_pay, _spend))
            )
            for i, (replay, second) in enumerate(zip(replays, again, strict=True)):
                assert replay.is_success and second.is_success, (replay.text, second.text)
                is_spend = i % 2 == 1
                if is_spend:
                    assert second.json()["duplicate"] is True
                    if i in acknowledged:
                        assert replay.json()["duplicate"] is True
                else:
                    paid = replay.json()["transaction"]["id"]
                    assert second.json()["transaction"]["id"] == paid
                    if i in acknowledged:
                        first = answers[i]
                        assert isinstance(first, httpx.Response)
                        assert first.json()["transaction"]["id"] == paid
            ledger = (await http.get("/api/v1/billing/transactions?limit=500", headers=owner.headers)).json()
            payments = [t for t in ledger["transactions"] if t["kind"] == "payment"]
            assert len(payments) == pairs and Decimal(str(ledger["credits"])) == PAYMENT * pairs
            spending = (await http.get("/api/v1/guardrails/spending", headers=owner.headers)).json()
            hourly = {w["window"]: w["spent"] for w in spending["windows"]}["hourly"]
            assert Decimal(str(hourly)) == SPEND * pairs
    finally:
        process.terminate()
        process.wait(15)
