"""Consenting to an OAuth client in a real browser: the authorization request sends the person to sign in,
then to the consent page naming the app, its redirect host and its scopes; they untick one, give it a
budget and press Allow, and the browser lands on the app's redirect URI with a code the app exchanges."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import ConsoleMessage, Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from aiserve_mcp.core.settings import Settings
from tests.conftest import PASSWORD, serve, sign_up
from tests.console.browser import DESKTOP, PHONE, screenshot
from tests.protocols.oauth_flow import OAuthServer, authorize_url, exchange, oauth_server, pkce, register


@pytest.fixture
async def served(settings: Settings, tmp_path: Path) -> AsyncIterator[OAuthServer]:
    async with oauth_server(settings, tmp_path) as server:
        yield server


@pytest.fixture
async def app_callback() -> AsyncIterator[str]:
    """The app's own page that a browser is sent back to: its URL."""

    async def callback(request: Request) -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>Connected</title><h1>Connected</h1>")

    async with serve(Starlette(routes=[Route("/callback", callback)])) as url:
        yield f"{url}/callback"


async def test_consent_an_oauth_client_in_a_browser(
    served: OAuthServer, app_callback: str, browser_page: Page
) -> None:
    page = browser_page
    violations: list[str] = []

    def csp(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    page.on("console", csp)
    account = await sign_up(served.http)
    client = await register(served.http, redirect_uris=[app_callback], client_name="Browser host")
    secret = pkce()
    url = authorize_url(
        served.url,
        client["client_id"],
        secret.code_challenge,
        redirect_uri=app_callback,
        scope="gpu:read models:read guardrails:admin",
    )

    await page.goto(url)
    await page.get_by_label("Email").fill(account.email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Connect “Browser host” to your account?")).to_be_visible()
    callback_origin = app_callback.removesuffix("/callback")
    await expect(page.get_by_text(callback_origin, exact=True)).to_be_visible()
    await expect(page.get_by_label("gpu:read", exact=True)).to_be_checked()
    await expect(page.get_by_label("guardrails:admin", exact=True)).not_to_be_checked()
    await screenshot(page, "oauth-consent")

    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await screenshot(page, "oauth-consent-phone")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the consent page scrolls sideways on a phone"
    await page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]

    await page.get_by_label("models:read", exact=True).uncheck()
    await page.get_by_label("Daily", exact=True).fill("7")
    await page.get_by_role("button", name="Allow").click()
    await page.wait_for_url(f"{app_callback}?*")
    await expect(page.get_by_role("heading", name="Connected")).to_be_visible()
    answer = httpx.URL(page.url).params
    assert answer["state"] == "state-1" and answer["iss"] == served.url
    assert violations == []

    issued = await exchange(
        served.http, client["client_id"], answer["code"], secret.code_verifier, redirect_uri=app_callback
    )
    assert issued.status_code == 200, issued.text
    assert issued.json()["scope"] == "gpu:read"
    token = issued.json()["access_token"]
    listed = await served.http.get(
        "/api/v1/guardrails/spending", headers={"Authorization": f"Bearer {token}"}
    )
    assert listed.status_code == 403  # guardrails:read was not granted

    await page.goto(f"{served.url}/console/connections")
    await expect(page.get_by_role("rowheader", name="Browser host")).to_be_visible()
    await expect(page.get_by_role("cell", name="daily $7.00")).to_be_visible()
    await screenshot(page, "oauth-connections")
