"""The ``aiserve`` command: help, database upgrade, users, admins and keys."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from aiserve_mcp.app import create_app
from aiserve_mcp.settings import Settings
from tests.conftest import running

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

    demoted = aiserve(server_env, "user", "admin", "--email", "root@example.com", "--revoke")
    assert "no longer an admin" in demoted.stdout


def test_mcp_without_a_key_explains_itself(server_env: dict[str, str]) -> None:
    result = aiserve(server_env, "mcp")
    assert result.returncode != 0 and "AISERVE_API_KEY" in result.stderr
    assert result.stdout == ""
