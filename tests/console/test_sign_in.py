"""Signing in to the console, registering and signing out, over HTTP and in a real browser; the CSRF token
and the security headers every page carries."""

from __future__ import annotations

import httpx
from playwright.async_api import Page, expect

from tests.conftest import PASSWORD, LiveServer, sign_up
from tests.console.browser import PHONE, screenshot
from tests.console.session import console_sign_in, csrf_of


async def test_every_page_sends_a_strict_content_security_policy(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        page = await http.get("/console/sign-in")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy
    assert "form-action 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    csrf_cookie = next(h for h in page.headers.get_list("set-cookie") if h.startswith("aiserve_csrf="))
    assert "HttpOnly" in csrf_cookie and "SameSite=lax" in csrf_cookie


async def test_a_form_without_its_csrf_token_is_refused(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        account = await sign_up(http)
        await http.get("/console/sign-in")  # the browser has a nonce, but the form lacks the token
        forged = await http.post("/console/sign-in", data={"email": account.email, "password": PASSWORD})
        wrong = await http.post(
            "/console/sign-in", data={"email": account.email, "password": PASSWORD, "csrf_token": "00" * 32}
        )
    assert forged.status_code == wrong.status_code == 403
    assert "aiserve_session" not in http.cookies


async def test_a_session_cookie_is_http_only_and_signing_out_ends_the_login(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        account = await sign_up(http)
        page = await http.get("/console/sign-in")
        form = {"csrf_token": csrf_of(page.text), "email": account.email, "password": PASSWORD}
        signed_in = await http.post("/console/sign-in", data={**form, "next": "//evil.example/x"})
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == "/console"  # never off-site
        session = next(
            h for h in signed_in.headers.get_list("set-cookie") if h.startswith("aiserve_session=")
        )
        assert "HttpOnly" in session and "SameSite=lax" in session and "Secure" not in session
        token = http.cookies["aiserve_session"]
        assert (
            await http.get("/api/v1/user/me", headers={"Authorization": f"Bearer {token}"})
        ).status_code == 200

        sign_out = await http.post("/console/sign-out", data={"csrf_token": csrf_of(page.text)})
        assert sign_out.status_code == 303
        after = await http.get("/api/v1/user/me", headers={"Authorization": f"Bearer {token}"})
    assert after.status_code == 401  # the login itself ended, not just the cookie


async def test_a_page_that_needs_a_person_sends_a_stranger_to_sign_in(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        account = await sign_up(http)
        await console_sign_in(http, account.email)
        wrong = await http.post(
            "/console/sign-in",
            data={
                "csrf_token": csrf_of((await http.get("/console/register")).text),
                "email": account.email,
                "password": "not the password",
            },
        )
    assert wrong.status_code == 401
    assert "invalid email or password" in wrong.text


async def test_registering_and_signing_in_in_a_browser(live_server: LiveServer, browser_page: Page) -> None:
    page = browser_page
    await page.goto(f"{live_server.url}/console/register")
    await page.get_by_label("Email").fill("browser-person@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Register").click()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await page.keyboard.press("Tab")  # the form is reachable by keyboard alone
    await page.get_by_label("Email").fill("browser-person@example.com")
    await page.get_by_label("Password").fill("wrong password")
    await page.get_by_label("Password").press("Enter")
    await expect(page.get_by_role("alert")).to_contain_text("invalid email or password")
    await screenshot(page, "sign-in-phone")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the sign-in page scrolls sideways on a phone"
