"""Rate limits: 100 requests per window per principal, per-address limits on login, shared through Redis."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from tests.conftest import LOCAL_REDIS_URL, PASSWORD, free_port, running, sign_up, until_healthy

LONG_WINDOW = {"rate_limit_window_s": 3600}  # so a window boundary cannot fall inside a test


@pytest.fixture
async def limited_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update=LONG_WINDOW))
    async with running(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
            yield client


async def test_hundred_pass_and_the_next_is_refused(limited_client: httpx.AsyncClient) -> None:
    account = await sign_up(limited_client)
    for i in range(100):
        response = await limited_client.get("/api/v1/user/me", headers=account.headers)
        assert response.status_code == 200, i
        assert response.headers["X-RateLimit-Remaining"] == str(99 - i)
        assert response.headers["X-RateLimit-Limit"] == "100"
    refused = await limited_client.get("/api/v1/user/me", headers=account.headers)
    assert refused.status_code == 429
    assert refused.json()["code"] == "RATE_LIMITED"
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    # Another user has a budget of their own.
    other = await sign_up(limited_client)
    assert (await limited_client.get("/api/v1/user/me", headers=other.headers)).status_code == 200


async def test_login_is_limited_per_client_address(limited_client: httpx.AsyncClient) -> None:
    account = await sign_up(limited_client)  # one registration and one login: 2 of 20
    attempts = [{"email": account.email, "password": "guess"}] * 18
    for body in attempts:
        assert (await limited_client.post("/api/v1/auth/login", json=body)).status_code == 401
    blocked = await limited_client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": PASSWORD}
    )
    assert blocked.status_code == 429 and blocked.json()["code"] == "RATE_LIMITED"
    assert "Retry-After" in blocked.headers


async def test_two_processes_share_one_budget_through_redis(server_env: dict[str, str]) -> None:
    env = {**server_env, "AISERVE_REDIS_URL": LOCAL_REDIS_URL, "AISERVE_RATE_LIMIT_WINDOW_S": "3600"}
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen([sys.executable, "-m", "aiserve_mcp", "serve", "--port", str(port)], env=env)
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        await until_healthy(urls[0], processes[0])
        await until_healthy(urls[1], processes[1])
        async with (
            httpx.AsyncClient(base_url=urls[0]) as first,
            httpx.AsyncClient(base_url=urls[1]) as second,
        ):
            account = await sign_up(first)
            for i in range(100):
                response = await (first, second)[i % 2].get("/api/v1/user/me", headers=account.headers)
                assert response.status_code == 200, (i, response.text)
            for client in (first, second):
                refused = await client.get("/api/v1/user/me", headers=account.headers)
                assert refused.status_code == 429, refused.text
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
