"""The ``aiserve`` command: help, database upgrade, users, admins and keys."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest

from aiserve_mcp import __version__
from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from tests.conftest import free_port, running

COMMANDS = [
    [],
    ["serve"],
    ["mcp"],
    ["db"],
    ["db", "upgrade"],
    ["user"],
    ["user", "create"],
    ["user", "admin"],
    ["key"],
    ["key", "create"],
    ["key", "list"],
    ["key", "revoke"],
]


def aiserve(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiserve_mcp", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "aiserve")
def test_help(command: list[str], server_env: dict[str, str]) -> None:
    result = aiserve(server_env, *command, "--help")
    assert result.returncode == 0 and "usage: aiserve" in result.stdout


async def test_user_admin_and_key_from_the_cli(settings: Settings, server_env: dict[str, str]) -> None:
    assert "latest schema" in aiserve(server_env, "db", "upgrade").stdout
    created = aiserve(
        server_env, "user", "create", "--email", "Root@Example.com", "--password", "s3cret-pass", "--admin"
    )
    assert created.returncode == 0, created.stderr
    assert "created admin user root@example.com" in created.stdout
    duplicate = aiserve(
        server_env, "user", "create", "--email", "root@example.com", "--password", "s3cret-pass"
    )
    assert duplicate.returncode != 0 and "already exists" in duplicate.stderr
    weak = aiserve(server_env, "user", "create", "--email", "x@example.com", "--password", "short")
    assert weak.returncode != 0
    key = aiserve(
        server_env,
        "key",
        "create",
        "--email",
        "root@example.com",
        "--scope",
        "account:read",
        "--scope",
        "admin",
    )
    assert key.returncode == 0, key.stderr
    plaintext = key.stdout.strip()
    assert plaintext.startswith("ak_live_")
    simple = aiserve(server_env, "key", "create", "--email", "root@example.com").stdout.strip()

    app = create_app(settings)
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
            users = await client.get("/api/v1/admin/users", headers={"X-API-Key": plaintext})
            assert users.status_code == 200 and users.json()["users"][0]["is_admin"] is True
            me = (await client.get("/api/v1/user/me", headers={"X-API-Key": plaintext})).json()
            assert me["scopes"] == ["account:read", "admin"]
            # A key made the simple way cannot lift limits or act as an administrator.
            plain = (await client.get("/api/v1/user/me", headers={"X-API-Key": simple})).json()
            assert "guardrails:write" in plain["scopes"]
            assert not {"guardrails:admin", "admin"} & set(plain["scopes"])
            refused = await client.get("/api/v1/admin/users", headers={"X-API-Key": simple})
            assert refused.status_code == 403

    listed = aiserve(server_env, "key", "list", "--email", "root@example.com")
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert len(rows) == 2 and all(row[2] == "active" for row in rows), listed.stdout
    assert plaintext not in listed.stdout and simple not in listed.stdout  # secrets are never shown
    revoked = aiserve(server_env, "key", "revoke", "--email", "root@example.com", "--id", rows[1][0])
    assert revoked.returncode == 0 and rows[1][0] in revoked.stdout
    assert "revoked" in aiserve(server_env, "key", "list", "--email", "root@example.com").stdout
    async with running(create_app(settings)) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
            gone = await client.get("/api/v1/user/me", headers={"X-API-Key": simple})
            assert gone.status_code == 401 and "revoked" in gone.text
    other = aiserve(server_env, "key", "revoke", "--email", "root@example.com", "--id", "no-such-key")
    assert other.returncode != 0

    demoted = aiserve(server_env, "user", "admin", "--email", "root@example.com", "--revoke")
    assert "no longer an admin" in demoted.stdout


def test_mcp_without_a_key_explains_itself(server_env: dict[str, str]) -> None:
    result = aiserve(server_env, "mcp")
    assert result.returncode != 0 and "AISERVE_API_KEY" in result.stderr
    assert result.stdout == ""


def test_version(server_env: dict[str, str]) -> None:
    result = aiserve(server_env, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"aiserve {__version__}"


def test_serve_prints_a_banner_and_each_log_line_once(server_env: dict[str, str]) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "aiserve_mcp", "serve", "--port", str(port)],
        env={**server_env, "AISERVE_LOG_LEVEL": "INFO"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert f"aiserve {__version__} on http://127.0.0.1:{port}" in stderr
    assert "  providers: local" in stderr
    assert "  payments:  off (set AISERVE_STRIPE_API_KEY, or AISERVE_BILLING_SANDBOX=true" in stderr
    assert "  database:  " in stderr and "Traceback" not in stderr
    messages = [line.split(" ", 2)[-1] for line in stderr.splitlines() if line.strip()]
    repeated = {m for m in messages if messages.count(m) > 1}
    assert not repeated, repeated
