"""Listing GPU offers from two marketplaces of 2,000 offers each: cold and cached latency.

The two marketplaces are the test suite's local vast.ai and io.net servers, each in its own process, so
every number includes real HTTP and JSON on loopback. Rows (p50 / p95 over ``--rounds`` calls):

- floor: the raw library call, both marketplaces fetched concurrently with httpx and decoded, nothing else;
- clients: aiserve's provider clients (request, retry policy, unit conversion, filtering), concurrently;
- tool cold: ``GET /api/v1/gpu/instances?limit=10000`` through the whole app with the cache off
  (authentication, rate limit, both providers, merge, sort, JSON out);
- tool cached: the same route answered from the offer cache.

Run: ``.venv/bin/python -m bench.offer_search`` (from the repository root).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from pydantic import SecretStr

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.gpu.providers.base import OfferQuery
from aiserve_mcp.gpu.providers.ionet import IoNetProvider
from aiserve_mcp.gpu.providers.vastai import VastAiProvider
from tests.conftest import free_port, running, sign_up
from tests.fakes.ionet_api.state import IoNetState
from tests.fakes.vastai_server import API_KEY

OFFERS = 2000
REPO = Path(__file__).resolve().parent.parent
FAKE_SERVER = """
import sys, uvicorn
from tests.fakes.ionet_api.hardware import make_hardware
from tests.fakes.ionet_api.server import ionet_app
from tests.fakes.ionet_api.state import IoNetState
from tests.fakes.vastai_server import VastAiState, make_offers, vastai_app
kind, port = sys.argv[1], int(sys.argv[2])
app = (vastai_app(VastAiState(offers=make_offers({n}, seed=1))) if kind == "vastai"
       else ionet_app(IoNetState(hardware=make_hardware({n}, seed=2))))
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


@asynccontextmanager
async def marketplace(kind: str) -> AsyncIterator[str]:
    port = free_port()
    process = subprocess.Popen(  # noqa: S603, ASYNC220 (this interpreter, a fixed script; started once)
        [sys.executable, "-c", FAKE_SERVER.format(n=OFFERS), kind, str(port)], cwd=REPO
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                try:
                    await client.get(url + "/")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait()


async def measure(call: Callable[[], Awaitable[object]], rounds: int) -> tuple[float, float]:
    await call()  # warm-up: connections, imports
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[max(0, round(0.95 * len(samples)) - 1)]


async def run(rounds: int) -> list[tuple[str, float, float]]:
    rows: list[tuple[str, float, float]] = []
    async with marketplace("vastai") as vast_url, marketplace("ionet") as ionet_url:
        ionet_key = IoNetState().api_key
        async with httpx.AsyncClient(timeout=30) as http:

            async def floor() -> None:
                vast, ionet = await asyncio.gather(
                    http.post(f"{vast_url}/api/v0/bundles/", json={"limit": 3000}),
                    http.get(
                        f"{ionet_url}/enterprise/v1/io-cloud/vmaas/hardware", headers={"x-api-key": ionet_key}
                    ),
                )
                vast.json()
                ionet.json()

            vast_client = VastAiProvider(http, vast_url, API_KEY)
            ionet_client = IoNetProvider(http, ionet_url, ionet_key)

            async def clients() -> None:
                await asyncio.gather(vast_client.search(OfferQuery()), ionet_client.search(OfferQuery()))

            rows.append(("floor: httpx + json, both concurrently", *await measure(floor, rounds)))
            rows.append(("provider clients, both concurrently", *await measure(clients, rounds)))

        for label, ttl in (("tool cold (cache off)", 0.0), ("tool cached", 3600.0)):
            with tempfile.TemporaryDirectory() as data_dir:
                settings = Settings(
                    data_dir=Path(data_dir),
                    vastai_url=vast_url,
                    vastai_api_key=SecretStr(API_KEY),
                    ionet_url=ionet_url,
                    ionet_api_key=SecretStr(ionet_key),
                    offer_cache_ttl_s=ttl,
                    rate_limit=1_000_000,
                    log_level="WARNING",
                )
                async with running(create_app(settings)) as app:
                    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
                    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                        account = await sign_up(client)

                        headers = account.headers

                        async def tool(c: httpx.AsyncClient = client, h: dict[str, str] = headers) -> None:
                            answer = await c.get("/api/v1/gpu/instances?limit=10000", headers=h)
                            assert answer.status_code == 200 and answer.json()["total"] > OFFERS
                            assert not answer.json()["errors"], answer.json()["errors"]

                        rows.append((f"{label}: GET /api/v1/gpu/instances", *await measure(tool, rounds)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("AISERVE_LOG_LEVEL", "WARNING")
    rows = asyncio.run(run(args.rounds))
    floor = rows[0][1]
    print(f"Offer listing, 2 marketplaces x {OFFERS} offers, {args.rounds} rounds (ms)\n")
    print(f"| {'path':<52} | {'p50':>8} | {'p95':>8} | {'p50 / floor':>11} |")
    print(f"|{'-' * 54}|{'-' * 10}|{'-' * 10}|{'-' * 13}|")
    for label, p50, p95 in rows:
        print(f"| {label:<52} | {p50:8.1f} | {p95:8.1f} | {p50 / floor:10.2f}x |")


if __name__ == "__main__":
    main()
