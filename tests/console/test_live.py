"""Live console pages: ``/ws`` signed in by the console's session cookie (from this server's pages only),
and in a real browser, an instance rented on the GPUs page appearing on the overview open in another tab
without a reload, then going away when destroyed; screenshots, phone width, no CSP violation."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.async_api import ConsoleMessage, Dialog, Page, expect

from aiserve_mcp.core.settings import LOOPBACK_ORIGINS, Settings
from aiserve_mcp.protocols.websocket import SESSION_COOKIE, origin_allowed
from tests.conftest import PASSWORD, LiveServer, funded, sign_up
from tests.console.browser import PHONE, screenshot
from tests.console.renting import renting
from tests.console.session import console_sign_in
from tests.core.test_events import closed_with, receive_json, send_json, socket, subscribe


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return renting(settings)


def test_an_origin_is_this_servers_by_its_host_public_url_or_the_allowed_list() -> None:
    def allowed(origin: str, host: str = "console.example:8443", public_url: str | None = None) -> bool:
        return origin_allowed(origin, host, public_url, LOOPBACK_ORIGINS)

    assert allowed("https://console.example:8443") and allowed("http://console.example:8443")
    assert allowed("https://aiserve.example", public_url="https://aiserve.example/base")
    assert allowed("http://127.0.0.1:5173") and allowed("http://localhost:80")
    for foreign in (
        "https://evil.example",
        "https://console.example",  # another port is another origin
        "http://127.0.0.1:80.evil.example",
        "http://127.0.0.1:",
        "null",
        "https://console.example:8443/path",
        "ftp://console.example:8443",
    ):
        assert not allowed(foreign), foreign


async def session_of(http: httpx.AsyncClient) -> str:
    account = await funded(http)
    await console_sign_in(http, account.email)
    return http.cookies[SESSION_COOKIE]


async def test_this_servers_pages_open_the_socket_with_the_session_cookie(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        session = await session_of(http)
        headers = {"Origin": live_server.url, "Cookie": f"{SESSION_COOKIE}={session}"}
        async with socket(live_server.url, headers=headers) as ws:
            await subscribe(ws, "instances")
            rented = await http.post(
                "/api/v1/gpu/instances/local/cpu0",
                json={"duration_hours": 1},
                headers={"Authorization": f"Bearer {session}"},
            )
            assert rented.status_code == 201, rented.text
            event = await receive_json(ws)
            assert (event["stream"], event["data"]["contract_id"]) == (
                "instances",
                rented.json()["contract_id"],
            )


async def test_a_foreign_page_cannot_ride_on_the_session_cookie(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        session = await session_of(http)
    cookie = f"{SESSION_COOKIE}={session}"
    async with socket(live_server.url, headers={"Origin": "https://evil.example", "Cookie": cookie}) as ws:
        error = await receive_json(ws)
        assert (error["type"], error["code"]) == ("error", "AUTH_INVALID")
        assert "https://evil.example" in error["error"]
        assert await closed_with(ws) == 4401


async def test_programs_without_an_origin_authenticate_as_before(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        session = await session_of(http)
        account = await sign_up(http)
    cookie = {"Cookie": f"{SESSION_COOKIE}={session}"}
    async with socket(live_server.url, account.access_token) as ws:
        await subscribe(ws, "instances")
    async with socket(live_server.url, headers=cookie) as ws:  # no Origin: not a page, the cookie is not used
        await send_json(ws, {"type": "auth", "token": account.access_token})
        assert await receive_json(ws) == {"type": "authenticated"}
    foreign = {"Origin": "https://agent.example", **cookie}
    async with socket(live_server.url, headers=foreign, query=f"?token={account.access_token}") as ws:
        await subscribe(ws, "spending")  # a token of its own works from any page, as before


def watch_for_csp_violations(page: Page, violations: list[str]) -> None:
    def seen(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(f"{page.url}: {message.text}")

    page.on("console", seen)


async def assert_fits_a_phone(page: Page, name: str) -> None:
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await screenshot(page, name)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{page.url} scrolls sideways on a phone ({width} px)"


async def accept(dialog: Dialog) -> None:
    await dialog.accept()


async def test_an_instance_rented_in_one_tab_appears_live_in_another(
    live_server: LiveServer, browser_page: Page
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        account = await funded(http, 100)
    violations: list[str] = []
    overview = browser_page
    watch_for_csp_violations(overview, violations)
    await overview.goto(f"{live_server.url}/console")
    await overview.get_by_label("Email").fill(account.email)
    await overview.get_by_label("Password").fill(PASSWORD)
    await overview.get_by_role("button", name="Sign in").click()
    await expect(overview.get_by_role("heading", name="Overview")).to_be_visible()
    await expect(overview.locator("html")).to_have_attribute("data-live", "on")
    instances = overview.locator('[data-fragment="instances"]')
    await expect(instances).to_contain_text("No instances are running.")
    await expect(overview.locator("#credits")).to_have_text("$100.00")
    await overview.evaluate("window.notReloaded = true")

    gpus = await overview.context.new_page()
    watch_for_csp_violations(gpus, violations)
    await gpus.goto(f"{live_server.url}/console/gpus")
    await gpus.get_by_label("Provider").select_option("local")
    await gpus.get_by_label("Show at most").press("Enter")  # the filter form, by keyboard
    await expect(gpus).to_have_url(re.compile(r"/console/gpus\?.*provider=local"))
    offer = gpus.locator('tr[data-offer="local:cpu0"]')
    await offer.get_by_label("Hours").fill("2")
    await offer.get_by_label("Hours").press("Enter")  # rented by keyboard alone
    await expect(gpus.get_by_role("status")).to_contain_text("for 2 h")
    await expect(gpus.get_by_role("status")).to_contain_text("status: running")
    await screenshot(gpus, "gpus")

    await expect(instances.locator("tr[data-contract]")).to_have_count(1)  # told by /ws, fetched by live.js
    await expect(instances).to_contain_text("running")
    await expect(overview.locator("#credits")).to_have_text("$99.00")
    assert await overview.evaluate("window.notReloaded === true")
    await screenshot(overview, "overview")

    gpus.once("dialog", accept)
    await gpus.get_by_role("button", name="Destroy").click()
    await expect(gpus.get_by_role("status")).to_contain_text("status: destroyed")
    await expect(instances).to_contain_text("No instances are running.")
    assert await overview.evaluate("window.notReloaded === true")

    await assert_fits_a_phone(gpus, "gpus-phone")
    await assert_fits_a_phone(overview, "overview-phone")
    assert violations == []
