"""Every authentication path: register, login, tokens, refresh rotation, API keys, scopes, admin."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import httpx
import jwt
from sqlalchemy import update
from starlette.applications import Starlette

from aiserve_mcp.accounts.tables import ApiKey
from aiserve_mcp.bootstrap import Services
from tests.conftest import PASSWORD, Account, api_key, sign_up


def jwt_secret(app: Starlette) -> str:
    return str((app.state.services.settings.data_dir / "jwt_secret").read_text().strip())


async def test_register_returns_the_spec_shape(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register", json={"email": "New@Example.com ", "password": PASSWORD, "name": "User Name"}
    )
    assert response.status_code == 201
    user = response.json()["user"]
    assert set(user) == {"id", "email", "name", "created_at"}
    assert user["email"] == "new@example.com" and user["name"] == "User Name"
    assert user["created_at"].endswith("Z")


async def test_register_refuses_duplicates_and_bad_input(client: httpx.AsyncClient, account: Account) -> None:
    duplicate = await client.post(
        "/api/v1/auth/register", json={"email": account.email.upper(), "password": PASSWORD}
    )
    assert duplicate.status_code == 409 and duplicate.json()["code"] == "CONFLICT"
    bad = await client.post("/api/v1/auth/register", json={"email": "not-an-email", "password": "short"})
    assert bad.status_code == 400
    body = bad.json()
    assert body["code"] == "VALIDATION_ERROR"
    assert {f["field"] for f in body["details"]["fields"]} == {"email", "password"}


async def test_login_returns_tokens_as_in_the_spec(client: httpx.AsyncClient, account: Account) -> None:
    response = await client.post("/api/v1/auth/login", json={"email": account.email, "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    me = (await client.get("/api/v1/user/me", headers=account.headers)).json()["user"]
    # The name and the moment the user registered with (sign_up registers the name "T").
    assert body["user"] == {
        "id": account.user_id,
        "email": account.email,
        "name": "T",
        "created_at": me["created_at"],
    }
    assert body["user"]["created_at"].endswith("Z")
    assert body["tokens"]["expires_in"] == 86400
    assert body["tokens"]["access_token"].startswith("eyJ")
    me = await client.get(
        "/api/v1/user/me", headers={"Authorization": f"Bearer {body['tokens']['access_token']}"}
    )
    assert me.status_code == 200 and me.json()["user"]["email"] == account.email


async def test_login_refuses_wrong_password_and_unknown_user(
    client: httpx.AsyncClient, account: Account
) -> None:
    for email, password in [(account.email, "wrong password"), ("nobody@example.com", PASSWORD)]:
        response = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert response.status_code == 401
        assert response.json() == {"error": "invalid email or password", "code": "AUTH_INVALID"}


async def test_missing_and_malformed_credentials(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/user/export")
    assert missing.status_code == 401 and missing.json()["code"] == "AUTH_REQUIRED"
    basic = await client.get("/api/v1/user/export", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401 and basic.json()["code"] == "AUTH_INVALID"


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_tampered_alg_none_and_expired_tokens_are_refused(
    app: Starlette, client: httpx.AsyncClient, account: Account
) -> None:
    header, payload, signature = account.access_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered = ".".join([header, _b64({**claims, "sub": "someone-else"}), signature])
    unsigned = ".".join([_b64({"alg": "none", "typ": "JWT"}), payload, ""])
    secret = jwt_secret(app)
    now = datetime.now(UTC)
    expired = jwt.encode(
        {**claims, "iat": now - timedelta(days=2), "exp": now - timedelta(days=1)}, secret, "HS256"
    )
    wrong_alg = jwt.encode(claims, secret, "HS512")
    wrong_key = jwt.encode(claims, "x" * 40, "HS256")
    for token in [tampered, unsigned, expired, wrong_alg, wrong_key]:
        response = await client.get("/api/v1/user/export", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        assert response.json()["code"] == "AUTH_INVALID"
    still_good = await client.get("/api/v1/user/export", headers=account.headers)
    assert still_good.status_code == 200


async def test_refresh_rotates_and_reuse_revokes_the_login(
    client: httpx.AsyncClient, account: Account
) -> None:
    first = await client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert first.status_code == 200
    rotated = first.json()["tokens"]
    assert rotated["refresh_token"] != account.refresh_token
    assert (
        await client.get("/api/v1/user/me", headers={"Authorization": f"Bearer {rotated['access_token']}"})
    ).status_code == 200

    replay = await client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert replay.status_code == 401 and replay.json()["code"] == "AUTH_INVALID"
    assert "already used" in replay.json()["error"]

    # The whole family is revoked: the newest refresh token and every access token of that login.
    after = await client.post("/api/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert after.status_code == 401
    for token in (rotated["access_token"], account.access_token):
        me = await client.get("/api/v1/user/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 401


async def test_logout_ends_the_login_only(client: httpx.AsyncClient, account: Account) -> None:
    other = await client.post("/api/v1/auth/login", json={"email": account.email, "password": PASSWORD})
    other_token = other.json()["tokens"]["access_token"]
    out = await client.post("/api/v1/auth/logout", json={"refresh_token": account.refresh_token})
    assert out.status_code == 200
    assert (await client.get("/api/v1/user/me", headers=account.headers)).status_code == 401
    assert (
        await client.get("/api/v1/user/me", headers={"Authorization": f"Bearer {other_token}"})
    ).status_code == 200


async def test_api_key_is_shown_once_and_works_in_both_headers(
    client: httpx.AsyncClient, account: Account
) -> None:
    response = await client.post(
        "/api/v1/auth/apikey",
        json={"name": "production_api_key", "expires_at": "2099-12-31T23:59:59Z"},
        headers=account.headers,
    )
    assert response.status_code == 201
    body = response.json()
    key = body["api_key"]
    assert key.startswith("ak_live_") and len(key) > 40
    assert body["message"] == "Save this API key securely. It will not be shown again."
    assert body["expires_at"] == "2099-12-31T23:59:59Z"
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        me = await client.get("/api/v1/user/me", headers=headers)
        assert me.status_code == 200
        assert me.json()["auth_method"] == "api_key"
    export = (await client.get("/api/v1/user/export", headers=account.headers)).json()
    assert key not in json.dumps(export)
    assert [k["name"] for k in export["api_keys"]] == ["production_api_key"]
    assert export["api_keys"][0]["prefix"] == key[: len("ak_live_") + 6]


async def test_revoked_and_expired_api_keys_are_refused(
    app: Starlette, client: httpx.AsyncClient, account: Account
) -> None:
    revoked = await api_key(client, account)
    expiring = await api_key(client, account, expires_at="2099-01-01T00:00:00Z")
    keys = (await client.get("/api/v1/auth/apikeys", headers=account.headers)).json()["api_keys"]
    revoked_id = next(k["id"] for k in keys if revoked.startswith(k["prefix"]))
    gone = await client.delete(f"/api/v1/auth/apikey/{revoked_id}", headers=account.headers)
    assert gone.status_code == 200 and gone.json()["api_key"]["revoked_at"] is not None

    services: Services = app.state.services
    async with services.db.session() as session:
        await session.execute(
            update(ApiKey)
            .where(ApiKey.prefix == expiring[:14])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    for key, reason in [(revoked, "revoked"), (expiring, "expired"), ("ak_live_forged", "invalid")]:
        response = await client.get("/api/v1/user/me", headers={"X-API-Key": key})
        assert response.status_code == 401
        assert response.json()["code"] == "AUTH_INVALID" and reason in response.json()["error"]


async def test_api_key_expiry_must_be_future_and_zoned(client: httpx.AsyncClient, account: Account) -> None:
    past = await client.post(
        "/api/v1/auth/apikey",
        json={"name": "k", "expires_at": "2001-01-01T00:00:00Z"},
        headers=account.headers,
    )
    assert past.status_code == 400 and "future" in past.json()["error"]
    naive = await client.post(
        "/api/v1/auth/apikey",
        json={"name": "k", "expires_at": "2099-01-01T00:00:00"},
        headers=account.headers,
    )
    assert naive.status_code == 400 and naive.json()["details"]["fields"][0]["field"] == "expires_at"


async def test_scopes_limit_what_a_key_can_do(client: httpx.AsyncClient, account: Account) -> None:
    reader = await api_key(client, account, scopes=["account:read"])
    headers = {"Authorization": f"Bearer {reader}"}
    assert (await client.get("/api/v1/user/export", headers=headers)).status_code == 200
    refused = await client.post("/api/v1/auth/apikey", json={"name": "more"}, headers=headers)
    assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"
    assert refused.json()["details"] == {"required_scope": "account:write"}

    writer = await api_key(client, account, scopes=["account:read", "account:write"])
    escalate = await client.post(
        "/api/v1/auth/apikey", json={"name": "x", "scopes": ["gpu:write"]}, headers={"X-API-Key": writer}
    )
    assert escalate.status_code == 403 and "gpu:write" in escalate.json()["error"]
    inherited = await client.post("/api/v1/auth/apikey", json={"name": "y"}, headers={"X-API-Key": writer})
    assert inherited.status_code == 201 and inherited.json()["scopes"] == ["account:read", "account:write"]
    unknown = await client.post(
        "/api/v1/auth/apikey", json={"name": "z", "scopes": ["root"]}, headers=account.headers
    )
    assert unknown.status_code == 400


async def test_users_cannot_touch_each_others_keys(client: httpx.AsyncClient, account: Account) -> None:
    await api_key(client, account)
    key_id = (await client.get("/api/v1/auth/apikeys", headers=account.headers)).json()["api_keys"][0]["id"]
    intruder = await sign_up(client)
    response = await client.delete(f"/api/v1/auth/apikey/{key_id}", headers=intruder.headers)
    assert response.status_code == 404 and response.json()["code"] == "NOT_FOUND"
    assert (await client.get("/api/v1/auth/apikeys", headers=intruder.headers)).json()["count"] == 0


async def test_admin_only_tools(app: Starlette, client: httpx.AsyncClient, account: Account) -> None:
    refused = await client.get("/api/v1/admin/users", headers=account.headers)
    assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"
    services: Services = app.state.services
    await services.accounts.set_admin(account.email, True)
    allowed = await client.get("/api/v1/admin/users", headers=account.headers)
    assert allowed.status_code == 200
    assert [u["email"] for u in allowed.json()["users"]] == [account.email]


async def test_export_has_the_spec_shape(client: httpx.AsyncClient, account: Account) -> None:
    export = (await client.get("/api/v1/user/export", headers=account.headers)).json()
    assert set(export) == {
        "user",
        "api_keys",
        "usage_quota",
        "gpu_usage",
        "transactions",
        "credits",
        "exported_at",
    }
    assert export["user"]["id"] == account.user_id
    assert "password_hash" not in json.dumps(export)
    quota = (await client.get("/api/v1/quota", headers=account.headers)).json()
    assert export["usage_quota"] == quota  # the quota, as GET /api/v1/quota answers it
    assert set(quota) == {"user_id", "storage", "file_size", "rate_limits"}
    # Byte counts are whole numbers, as in the API reference (not 0.0).
    for count in (
        quota["storage"]["used_bytes"],
        quota["storage"]["limit_bytes"],
        quota["file_size"]["max_bytes"],
    ):
        assert type(count) is int


async def test_a_key_made_the_simple_way_cannot_lift_its_own_limits(
    app: Starlette, client: httpx.AsyncClient, account: Account
) -> None:
    simple = await api_key(client, account)
    me = (await client.get("/api/v1/user/me", headers={"X-API-Key": simple})).json()
    assert "guardrails:write" in me["scopes"] and "guardrails:admin" not in me["scopes"]
    raised = await client.put(
        "/api/v1/guardrails/limits", json={"limits": {"daily": 100000}}, headers={"X-API-Key": simple}
    )
    assert raised.status_code == 403 and "guardrails:admin" in raised.text
    # Nor can it make itself a key that could: a key never grants what its creator lacks.
    escalated = await client.post(
        "/api/v1/auth/apikey",
        json={"name": "x", "scopes": ["guardrails:admin"]},
        headers={"X-API-Key": simple},
    )
    assert escalated.status_code == 403
    # The owner, signed in, grants it by naming it.
    named = await api_key(client, account, scopes=["guardrails:admin", "account:read"])
    me = (await client.get("/api/v1/user/me", headers={"X-API-Key": named})).json()
    assert me["scopes"] == ["account:read", "guardrails:admin"]
    # An administrator's simple key is no administrator's key; one naming "admin" is.
    services: Services = app.state.services
    await services.accounts.set_admin(account.email, True)
    refused = await client.get("/api/v1/admin/users", headers={"X-API-Key": await api_key(client, account)})
    assert refused.status_code == 403
    admin = await api_key(client, account, scopes=["admin", "account:read"])
    assert (await client.get("/api/v1/admin/users", headers={"X-API-Key": admin})).status_code == 200
