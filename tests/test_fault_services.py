"""The private servers that fault tests kill: they answer, die whole (children included) on SIGKILL, come
back on the same port, and leave no process, directory or shared memory behind, even when the test fails
or the process that started them is SIGKILLed."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.fault_services import (
    PrivatePostgres,
    PrivateRedis,
    _release_shared_memory,
    private_postgres_fixture,  # noqa: F401
    private_redis_fixture,  # noqa: F401
    process_alive,
)

REPO = Path(__file__).resolve().parent.parent


def cmdlines_mentioning(fragment: str) -> list[str]:
    """The command lines of the live processes whose command line contains ``fragment``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and fragment in cmdline and process_alive(int(entry.name)):
            found.append(cmdline)
    return found


def shared_memory_made_by(pid: int) -> list[str]:
    """The System V shared memory segments that process ``pid`` created."""
    rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return [row for row in rows if int(row.split()[4]) == pid]


def wait_until_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait for ``pids`` to die; returns those still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if process_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive


async def test_redis_dies_and_comes_back_empty_on_its_port(private_redis: PrivateRedis) -> None:
    client = Redis.from_url(private_redis.url, retry=Retry(NoBackoff(), 1))
    try:
        await client.set("key", "value")
        assert await client.get("key") == b"value"
        url, pid = private_redis.url, private_redis.pid
        assert pid is not None

        private_redis.kill()
        assert not process_alive(pid)
        assert not private_redis.running
        with pytest.raises(RedisConnectionError):
            await client.ping()

        await asyncio.to_thread(private_redis.start)
        assert private_redis.url == url
        assert private_redis.pid not in (None, pid)
        assert await client.ping()
        assert await client.get("key") is None

        await client.set("key", "again")
        private_redis.stop()
        assert not private_redis.running
        private_redis.restart()
        assert await client.get("key") is None
        assert sorted(path.name for path in private_redis.directory.iterdir()) == ["server.log"]
    finally:
        await client.aclose()


def test_a_server_started_from_a_short_lived_thread_outlives_it(private_redis: PrivateRedis) -> None:
    thread = threading.Thread(target=private_redis.restart)
    thread.start()
    thread.join()
    time.sleep(0.2)
    assert private_redis.running


async def test_postgres_dies_whole_and_recovers_on_its_port(private_postgres: PrivatePostgres) -> None:
    connection = await asyncpg.connect(private_postgres.dsn)
    assert await connection.fetchval("SELECT 1") == 1
    await connection.execute("CREATE TABLE survivor (id int); INSERT INTO survivor VALUES (7)")
    cluster = private_postgres.pids()
    assert len(cluster) > 2, "the postmaster, this connection's backend and auxiliary processes"
    url = private_postgres.url

    private_postgres.kill()
    assert [pid for pid in cluster if process_alive(pid)] == []
    assert cmdlines_mentioning(str(private_postgres.data_dir)) == []
    assert shared_memory_made_by(cluster[0]) == []
    assert private_postgres.pids() == []
    with pytest.raises(asyncpg.PostgresConnectionError):
        await connection.fetchval("SELECT 1")
    with pytest.raises(OSError):
        await asyncpg.connect(private_postgres.dsn)

    await asyncio.to_thread(private_postgres.start)
    assert private_postgres.url == url
    again = await asyncpg.connect(private_postgres.dsn)
    try:
        assert await again.fetchval("SELECT 1") == 1
        assert await again.fetchval("SELECT id FROM survivor") == 7, "a committed row survives a crash"
    finally:
        await again.close()

    private_postgres.restart()
    assert private_postgres.url == url
    assert len(cmdlines_mentioning(str(private_postgres.data_dir))) == 1


async def test_postgres_creates_databases_and_stops_cleanly(private_postgres: PrivatePostgres) -> None:
    url = private_postgres.create_database("faults")
    assert url == f"postgresql+asyncpg://postgres@127.0.0.1:{private_postgres.port}/faults"
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT current_database()"))).scalar() == "faults"
        cluster = private_postgres.pids()

        private_postgres.stop()
        assert wait_until_dead(cluster, timeout=0) == []
        assert not (private_postgres.data_dir / "postmaster.pid").exists()
        assert "database system is shut down" in (private_postgres.directory / "server.log").read_text()

        private_postgres.start()
        await engine.dispose()
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


def test_servers_leave_nothing_behind_when_the_test_fails() -> None:
    with (
        pytest.raises(RuntimeError, match="the test failed"),
        PrivateRedis() as redis_server,
        PrivatePostgres() as postgres,
    ):
        assert redis_server.pid is not None
        pids = [redis_server.pid, *postgres.pids()]
        directories = [redis_server.directory, postgres.directory]
        raise RuntimeError("the test failed")
    assert [pid for pid in pids if process_alive(pid)] == []
    assert [path for path in directories if path.exists()] == []
    assert shared_memory_made_by(pids[1]) == []


STARTER = """
import time
from tests.fault_services import PrivatePostgres, PrivateRedis

redis_server, postgres = PrivateRedis(), PrivatePostgres()
redis_server.start()
postgres.start()
print(redis_server.directory, postgres.directory, redis_server.pid, *postgres.pids(), flush=True)
time.sleep(60)
"""


def test_servers_die_with_the_process_that_started_them() -> None:
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert starter.stdout is not None
        started = starter.stdout.readline().split()
    finally:
        starter.kill()
        _, errors = starter.communicate()
    assert started, errors
    directories, pids = [Path(path) for path in started[:2]], [int(pid) for pid in started[2:]]
    try:
        assert wait_until_dead(pids) == []
    finally:
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)
        _release_shared_memory(pids[1])
    assert shared_memory_made_by(pids[1]) == []
