"""Processes that start together on a fresh data directory agree on everything they create there."""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
from multiprocessing.synchronize import Barrier
from pathlib import Path

import httpx
import pytest

from aiserve_mcp.accounts.security import load_or_create_secret
from tests.conftest import free_port, sign_up, until_healthy

ROUNDS = 40
RACERS = 4


def _race(barrier: Barrier, data_dir: str, results: multiprocessing.Queue[str]) -> None:
    barrier.wait()
    results.put(load_or_create_secret(None, Path(data_dir)))


def test_racing_processes_read_one_complete_secret(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for round_ in range(ROUNDS):
        data_dir = tmp_path / f"round-{round_}"
        barrier = context.Barrier(RACERS)
        results: multiprocessing.Queue[str] = context.Queue()
        racers = [
            context.Process(target=_race, args=(barrier, str(data_dir), results)) for _ in range(RACERS)
        ]
        for racer in racers:
            racer.start()
        secrets = [results.get(timeout=30) for _ in racers]
        for racer in racers:
            racer.join(10)
            assert racer.exitcode == 0
        assert len(set(secrets)) == 1 and len(secrets[0]) >= 32, secrets
        assert (data_dir / "jwt_secret").stat().st_mode & 0o777 == 0o600
        assert [p.name for p in data_dir.iterdir()] == ["jwt_secret"]  # no candidate file is left behind


def test_a_short_or_empty_secret_on_disk_is_refused(tmp_path: Path) -> None:
    (tmp_path / "jwt_secret").write_text("")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        load_or_create_secret(None, tmp_path)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        load_or_create_secret("short", tmp_path)


async def test_servers_started_together_on_a_fresh_data_dir_share_one_key(
    tmp_path: Path, server_env: dict[str, str]
) -> None:
    """Three servers on one fresh SQLite data directory: each migrates, and a token one of them signed is
    good at every other."""
    env = {**server_env, "AISERVE_DATA_DIR": str(tmp_path / "fresh")}
    env.pop("AISERVE_DATABASE_URL")  # the embedded default: SQLite in the (new) data directory
    ports = [free_port() for _ in range(3)]
    processes = [
        subprocess.Popen([sys.executable, "-m", "aiserve_mcp", "serve", "--port", str(port)], env=env)
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        await asyncio.gather(*(until_healthy(url, p) for url, p in zip(urls, processes, strict=True)))
        async with httpx.AsyncClient(base_url=urls[0]) as first:
            account = await sign_up(first)
        for url in urls[1:]:
            async with httpx.AsyncClient(base_url=url) as other:
                me = await other.get("/api/v1/user/me", headers=account.headers)
                assert me.status_code == 200, me.text
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(15)
