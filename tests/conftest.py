"""Fixtures: a fresh database per test (SQLite, or PostgreSQL when AISERVE_TEST_DATABASE_URL is set), Redis
when AISERVE_TEST_REDIS_URL is set, the app in process, and real servers on loopback ports."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from sqlalchemy.engine import make_url
from starlette.applications import Starlette

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from tests.console.browser import browser_page  # noqa: F401 - the real-browser fixture, for every test

PG_ADMIN_URL = os.environ.get("AISERVE_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("AISERVE_TEST_REDIS_URL")
LOCAL_REDIS_URL = REDIS_URL or "redis://127.0.0.1:6379/15"
LOCAL_PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def _postgres_database(admin_url: str) -> AsyncIterator[str]:
    """A new PostgreSQL database on the server of ``admin_url``, dropped afterwards; yields its URL."""
    name = f"aiserve_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_asyncpg_dsn(admin_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def database_url(tmp_path: Path) -> AsyncIterator[str]:
    """A database of its own for each test."""
    if PG_ADMIN_URL is None:
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    async with _postgres_database(PG_ADMIN_URL) as url:
        yield url


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A PostgreSQL database of its own, whatever the run tests on (for what only works on PostgreSQL)."""
    async with _postgres_database(PG_ADMIN_URL or LOCAL_PG_ADMIN_URL) as url:
        yield url


@pytest.fixture
def redis_prefix() -> str:
    return f"aiserve-test:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis_prefix: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        log_level="WARNING",
    )


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[Starlette]:
    """Run the app's lifespan in a task of its own (its task groups must start and end in one task)."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:
        async with app.router.lifespan_context(app):
            started.set()
            await stop.wait()

    task = asyncio.create_task(lifespan())
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()
    try:
        yield app
    finally:
        stop.set()
        await task


@asynccontextmanager
async def asgi_client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that calls ``app`` in process, as a caller at 127.0.0.1."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080", timeout=30) as c:
        yield c


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The app built from ``settings``, running, with an in-process client."""
    async with running(create_app(settings)) as app, asgi_client(app) as client:
        yield app, client


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    async with running(create_app(settings)) as started:
        yield started


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


@dataclass
class Account:
    email: str
    user_id: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def sign_up(client: httpx.AsyncClient, email: str | None = None) -> Account:
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    registered = await client.post(
        "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "T"}
    )
    assert registered.status_code == 201, registered.text
    login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    body = login.json()
    return Account(email, body["user"]["id"], body["tokens"]["access_token"], body["tokens"]["refresh_token"])


async def api_key(client: httpx.AsyncClient, account: Account, **fields: Any) -> str:
    response = await client.post("/api/v1/auth/apikey", json={"name": "k", **fields}, headers=account.headers)
    assert response.status_code == 201, response.text
    key = response.json()["api_key"]
    assert isinstance(key, str)
    return key


async def funded(http: httpx.AsyncClient, amount: float = 500) -> Account:
    """A new account with ``amount`` USD of credits bought through the sandbox gateway (the app must run
    with ``billing_sandbox``)."""
    account = await sign_up(http)
    paid = await http.post(
        "/api/v1/billing/payment",
        json={"amount": amount, "payment_preference": {"type": "card", "card_token": "tok_visa"}},
        headers=account.headers,
    )
    assert paid.status_code == 201, paid.text
    return account


@pytest.fixture
async def account(client: httpx.AsyncClient) -> Account:
    return await sign_up(client)


@dataclass
class LiveServer:
    url: str
    app: Starlette


@asynccontextmanager
async def serve(app: Starlette, port: int | None = None, **options: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on ``port`` (default: a free one) on loopback, in this event loop, with
    more ``uvicorn.Config`` ``options`` when given (TLS files, say); yields its base URL (http)."""
    port = port or free_port()
    config = {"log_level": "warning", "lifespan": "on", **options}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **config))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    """The app served by uvicorn on a loopback port, in this test's event loop."""
    app = create_app(settings)
    async with serve(app) as url:
        yield LiveServer(url, app)


async def until_healthy(url: str, process: subprocess.Popen[Any], log: Path | None = None) -> None:
    """Wait (30 s at most) until the server ``process`` started answers ``GET /health`` with 200; fail at
    once if it exits, with what it wrote to ``log`` when given."""
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            if process.poll() is not None:
                exited = f"server exited with {process.returncode}"
                if log:
                    exited += f": {await asyncio.to_thread(log.read_text, errors='replace')}"
                raise AssertionError(exited)
            try:
                if (await http.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(url)


@pytest.fixture
def server_env(settings: Settings) -> Iterator[dict[str, str]]:
    """Environment for ``aiserve`` subprocesses that share this test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    env.update(
        AISERVE_DATA_DIR=str(settings.data_dir),
        AISERVE_DATABASE_URL=settings.effective_database_url,
        AISERVE_LOG_LEVEL="WARNING",
        AISERVE_REDIS_PREFIX=settings.redis_prefix,
    )
    yield env
