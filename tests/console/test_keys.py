"""The "Limits & keys" page over HTTP and in a real browser: spending limits lowered, raised, added and
removed; API keys created with scopes and a budget, their secret shown once, and revoked."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import ConsoleMessage, Dialog, Page, expect

from tests.conftest import Account, LiveServer, api_key, sign_up
from tests.console.browser import DESKTOP, PHONE, screenshot
from tests.console.session import console_sign_in, csrf_of

SECRET = re.compile(r"ak_live_[A-Za-z0-9_-]{16,}")


def ticked(html: str) -> set[str]:
    """The scopes whose checkboxes the key form ticks."""
    return set(re.findall(r'name="scopes" value="([a-z:]+)" id="[^"]+" checked', html))


async def signed_in_console(http: httpx.AsyncClient) -> tuple[Account, str]:
    """A new account signed in to the console through ``http``, and the CSRF token of its keys page."""
    account = await sign_up(http)
    await console_sign_in(http, account.email)
    page = await http.get("/console/keys")
    assert page.status_code == 200, page.text
    return account, csrf_of(page.text)


async def limits_of(http: httpx.AsyncClient, account: Account, key_id: str | None = None) -> dict[str, float]:
    params = {"api_key_id": key_id} if key_id else {}
    answer = await http.get("/api/v1/guardrails/limits", params=params, headers=account.headers)
    assert answer.status_code == 200, answer.text
    return {w["window"]: w["limit"] for w in answer.json()["limits"]}


async def test_a_new_key_shows_its_secret_once_with_default_scopes_and_its_budget(
    live_server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        account, csrf = await signed_in_console(http)
        form_page = await http.get("/console/keys")
        defaults = ticked(form_page.text)
        assert "guardrails:admin" not in defaults and "admin" not in defaults
        assert {"account:read", "guardrails:write", "models:read"} <= defaults
        assert 'value="admin"' not in form_page.text  # only an administrator may grant admin

        form = {
            "csrf_token": csrf,
            "name": "nightly agent",
            "expires_on": "2099-12-31",
            "scopes": sorted(defaults),
            "budget.daily": "20",
            "budget.monthly": "150.50",
        }
        created = await http.post("/console/keys", data=form)
        assert created.status_code == 201, created.text
        assert created.headers["cache-control"] == "no-store"
        secrets = SECRET.findall(created.text)
        assert len(secrets) == 1
        secret = secrets[0]
        assert "shown this once" in created.text and "It will not be shown again" in created.text
        assert secret not in str(created.headers)  # not in a cookie, not in a URL

        reloaded = await http.get("/console/keys")
        assert secret not in reloaded.text and SECRET.search(reloaded.text) is None
        assert secret[:14] in reloaded.text  # the prefix, to recognise it
        assert "daily $20.00" in reloaded.text and "monthly $150.50" in reloaded.text

        whoami = await http.get("/api/v1/user/me", headers={"Authorization": f"Bearer {secret}"})
        assert whoami.status_code == 200, whoami.text
        assert set(whoami.json()["scopes"]) == defaults
        key_id = whoami.json()["api_key_id"]
        assert await limits_of(http, account, key_id) == {"daily": 20.0, "monthly": 150.5}
        keys = (await http.get("/api/v1/auth/apikeys", headers=account.headers)).json()["api_keys"]
        assert keys[0]["expires_at"].startswith("2100-01-01T00:00:00")

        admin_key = await http.post(
            "/console/keys", data={**form, "name": "limits", "scopes": ["guardrails:admin"]}
        )
        assert admin_key.status_code == 201  # ticked, so granted
        admin_secret = SECRET.findall(admin_key.text)[0]
        held = await http.get("/api/v1/user/me", headers={"Authorization": f"Bearer {admin_secret}"})
        assert held.status_code == 403  # it holds guardrails:admin and nothing else, as asked


async def test_a_refused_key_keeps_the_form_and_shows_the_tools_message(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        account, csrf = await signed_in_console(http)
        form = {"csrf_token": csrf, "name": "agent", "scopes": ["models:read"], "budget.daily": "1.234"}
        refused = await http.post("/console/keys", data=form)
        past = await http.post("/console/keys", data={**form, "budget.daily": "", "expires_on": "2001-01-01"})
        forged = await http.post("/console/keys", data={"name": "forged", "scopes": ["models:read"]})
        keys = (await http.get("/api/v1/auth/apikeys", headers=account.headers)).json()["api_keys"]
    assert refused.status_code == 400
    assert "budget" in refused.text and 'value="1.234"' in refused.text and 'value="agent"' in refused.text
    assert ticked(refused.text) == {"models:read"}
    assert past.status_code == 400 and "expires_at must be in the future" in past.text
    assert forged.status_code == 403
    assert keys == []


async def test_revoking_a_key_ends_it_and_another_persons_key_cannot_be_revoked(
    live_server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        stranger = await sign_up(http)
        stranger_bearer = {"Authorization": f"Bearer {await api_key(http, stranger)}"}
        stranger_id = (await http.get("/api/v1/user/me", headers=stranger_bearer)).json()["api_key_id"]
        account, csrf = await signed_in_console(http)
        key = await api_key(http, account)
        bearer = {"Authorization": f"Bearer {key}"}
        key_id = (await http.get("/api/v1/user/me", headers=bearer)).json()["api_key_id"]

        theirs = await http.post(f"/console/keys/{stranger_id}/revoke", data={"csrf_token": csrf})
        assert theirs.status_code == 404 and 'role="alert"' in theirs.text
        assert (await http.get("/api/v1/user/me", headers=stranger_bearer)).status_code == 200

        assert (await http.post(f"/console/keys/{key_id}/revoke", data={})).status_code == 403
        assert (await http.get("/api/v1/user/me", headers=bearer)).status_code == 200

        revoked = await http.post(f"/console/keys/{key_id}/revoke", data={"csrf_token": csrf})
        assert revoked.status_code == 303 and revoked.headers["location"] == "/console/keys?notice=revoked"
        page = await http.get(revoked.headers["location"])
        assert "API key revoked." in page.text and "(revoked)" in page.text
        assert f"/console/keys/{key_id}/revoke" not in page.text  # no button for a revoked key
        assert (await http.get("/api/v1/user/me", headers=bearer)).status_code == 401


async def test_limits_are_lowered_raised_added_and_removed(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        account, csrf = await signed_in_console(http)
        before = await limits_of(http, account)
        assert before["daily"] == 500.0  # the server's default
        page = (await http.get("/console/keys")).text
        assert 'name="limit.daily"' in page and 'value="500.00"' in page

        lowered = await http.post(
            "/console/keys/limits",
            data={"csrf_token": csrf, "limit.daily": "25.5", "new_window": "72h", "new_limit": "60"},
        )
        assert lowered.status_code == 303 and lowered.headers["location"] == "/console/keys?notice=limits"
        assert "Spending limits saved." in (await http.get(lowered.headers["location"])).text
        after = await limits_of(http, account)
        assert after["daily"] == 25.5 and after["72h"] == 60.0 and after["hourly"] == before["hourly"]

        raised = await http.post(
            "/console/keys/limits", data={"csrf_token": csrf, "limit.daily": "900", "limit.72h": ""}
        )
        assert raised.status_code == 303  # a console login holds guardrails:admin
        final = await limits_of(http, account)
        assert final["daily"] == 900.0 and "72h" not in final

        refused = await http.post(
            "/console/keys/limits", data={"csrf_token": csrf, "new_window": "3 days", "new_limit": "5"}
        )
        assert (
            refused.status_code == 400 and "invalid input for &#39;set_spending_limits&#39;" in refused.text
        )
        half = await http.post("/console/keys/limits", data={"csrf_token": csrf, "new_window": "2d"})
        assert half.status_code == 400 and "needs both a name" in half.text
        assert await limits_of(http, account) == final


async def test_creating_and_revoking_a_key_in_a_browser(live_server: LiveServer, browser_page: Page) -> None:
    page = browser_page
    violations: list[str] = []

    def csp(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    async def accept(dialog: Dialog) -> None:
        await dialog.accept()

    page.on("console", csp)
    page.on("dialog", accept)
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        account = await sign_up(http)
    await page.goto(f"{live_server.url}/console/keys")
    await page.get_by_label("Email").fill(account.email)
    await page.get_by_label("Password").fill("correct horse battery")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Limits & keys")).to_be_visible()
    await expect(page.get_by_label("guardrails:admin", exact=True)).not_to_be_checked()
    await expect(page.get_by_label("models:read", exact=True)).to_be_checked()
    await screenshot(page, "keys")

    await page.get_by_label("Name").fill("browser agent")
    await page.get_by_label("Daily", exact=True).fill("12")
    await page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key-secret")
    await expect(secret).to_have_text(SECRET)
    await expect(page.get_by_role("cell", name="daily $12.00")).to_be_visible()
    await screenshot(page, "keys-created")
    await page.goto(f"{live_server.url}/console/keys")
    await expect(page.locator("#new-key-secret")).to_have_count(0)

    await page.get_by_role("button", name="Revoke browser agent").click()
    await expect(page.get_by_role("status")).to_have_text("API key revoked.")
    await expect(page.get_by_role("button", name="Revoke browser agent")).to_have_count(0)

    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await page.reload()
    await screenshot(page, "keys-phone")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the keys page scrolls sideways on a phone"
    await page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]
    assert violations == []
