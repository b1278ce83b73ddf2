"""The "Credits" page and the sandbox's stand-in checkout page, over HTTP and in a real browser: the balance,
the form that opens a checkout page (Stripe's, or the sandbox's own), the way back, and credits added once."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from playwright.async_api import Page, expect
from pydantic import SecretStr

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.rest_compat.endpoint import WEBHOOK_PATH
from tests.conftest import Account, free_port, serve, sign_up
from tests.console.browser import PHONE, screenshot
from tests.console.session import console_sign_in, csrf_of
from tests.fakes.stripe_api.checkout import pay_session
from tests.fakes.stripe_api.server import stripe_app
from tests.fakes.stripe_api.state import API_KEY, StripeState

WEBHOOK_SECRET = "whsec_test_console_0123456789"
SANDBOX_PAGE = re.compile(r"/console/checkout/sandbox/(sandbox_cs_[0-9a-f]+)$")


@asynccontextmanager
async def console(settings: Settings, stripe: StripeState | None = None) -> AsyncIterator[str]:
    """The app served at its public address, paying through the local Stripe (``stripe``) or the sandbox."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    update: dict[str, object] = {"public_url": url, "billing_sandbox": stripe is None}
    async with serve(stripe_app(stripe or StripeState())) as stripe_url:
        if stripe is not None:
            stripe.webhook_url, stripe.webhook_secret = url + WEBHOOK_PATH, WEBHOOK_SECRET
            update |= {
                "stripe_api_key": SecretStr(API_KEY),
                "stripe_api_base": stripe_url,
                "stripe_webhook_secret": SecretStr(WEBHOOK_SECRET),
            }
        async with serve(create_app(settings.model_copy(update=update)), port):
            yield url


async def signed_in(http: httpx.AsyncClient) -> tuple[Account, str]:
    account = await sign_up(http)
    await console_sign_in(http, account.email)
    page = await http.get("/console/credits")
    assert page.status_code == 200, page.text
    return account, csrf_of(page.text)


async def available(http: httpx.AsyncClient, account: Account) -> float:
    listed = await http.get("/api/v1/billing/transactions", headers=account.headers)
    credits: float = listed.json()["credits"]
    return credits


async def test_buying_credits_goes_to_stripe_checkout_and_back(settings: Settings) -> None:
    stripe = StripeState()
    async with console(settings, stripe) as url, httpx.AsyncClient(base_url=url) as http:
        stranger = await http.get("/console/credits")
        assert stranger.status_code == 303 and stranger.headers["location"].startswith("/console/sign-in")
        account, csrf = await signed_in(http)
        page = await http.get("/console/credits")
        assert 'name="amount_usd"' in page.text and "Buy credits" in page.text and "$0.00" in page.text
        assert "form-action 'self' https://checkout.stripe.com" in page.headers["content-security-policy"]

        assert (await http.post("/console/credits", data={"amount_usd": "25"})).status_code == 403
        small = await http.post("/console/credits", data={"csrf_token": csrf, "amount_usd": "0.20"})
        assert small.status_code == 400 and "minimum" in small.text and stripe.sessions == {}
        words = await http.post("/console/credits", data={"csrf_token": csrf, "amount_usd": "lots"})
        assert words.status_code == 400 and "is not an amount in USD" in words.text

        bought = await http.post("/console/credits", data={"csrf_token": csrf, "amount_usd": "25.50"})
        assert bought.status_code == 303, bought.text
        [session_id] = stripe.sessions
        assert bought.headers["location"] == f"https://checkout.stripe.com/c/pay/{session_id}"
        assert stripe.sessions[session_id]["amount_total"] == 2550

        await pay_session(stripe, session_id)
        back = await http.get("/console/credits?checkout=success")
        assert "your payment is being confirmed" in back.text and "$25.50" in back.text
        assert await available(http, account) == 25.5
        cancelled = await http.get("/console/credits?checkout=cancelled")
        assert "Checkout cancelled: nothing was charged." in cancelled.text
        assert (await http.get(f"/console/checkout/sandbox/{session_id}")).status_code == 404


async def test_the_sandbox_page_takes_the_payment_and_credits_once(settings: Settings) -> None:
    async with console(settings) as url, httpx.AsyncClient(base_url=url) as http:
        account, csrf = await signed_in(http)
        assert "moves no money" in (await http.get("/console/credits")).text
        bought = await http.post("/console/credits", data={"csrf_token": csrf, "amount_usd": "30"})
        assert bought.status_code == 303, bought.text
        location = bought.headers["location"]
        assert location.startswith(url) and SANDBOX_PAGE.search(location)

        shown = await http.get(location)
        assert shown.status_code == 200 and "$30.00" in shown.text
        assert f'href="{url}/console/credits?checkout=cancelled"' in shown.text
        assert (await http.post(location, data={})).status_code == 403
        assert await available(http, account) == 0

        pays = await asyncio.gather(*(http.post(location, data={"csrf_token": csrf}) for _ in range(5)))
        assert {p.status_code for p in pays} == {303}
        assert {p.headers["location"] for p in pays} == {f"{url}/console/credits?checkout=success"}
        assert await available(http, account) == 30.0
        again = await http.post(location, data={"csrf_token": csrf})
        assert again.status_code == 303 and await available(http, account) == 30.0
        assert "This checkout is paid." in (await http.get(location)).text
        listed = (await http.get("/api/v1/billing/transactions", headers=account.headers)).json()
        assert [(t["status"], t["gateway"]) for t in listed["transactions"]] == [("succeeded", "sandbox")]
        missing = await http.get("/console/checkout/sandbox/sandbox_cs_0000")
        assert missing.status_code == 404 and "no such checkout session" in missing.text


async def test_buying_credits_in_a_browser(settings: Settings, browser_page: Page) -> None:
    async with console(settings) as url, httpx.AsyncClient(base_url=url) as http:
        account = await sign_up(http)
        page = browser_page
        await page.goto(f"{url}/console/credits")
        await page.get_by_label("Email").fill(account.email)
        await page.get_by_label("Password").fill("correct horse battery")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Credits", exact=True)).to_be_visible()
        await page.get_by_label("Amount").fill("12.50")
        await page.get_by_role("button", name="Buy credits").click()
        await expect(page.get_by_role("heading", name="Sandbox checkout")).to_be_visible()
        await expect(page.locator("#checkout-amount")).to_have_text("$12.50")
        await screenshot(page, "sandbox-checkout")
        await page.get_by_role("button", name="Pay $12.50").click()
        await expect(page.get_by_role("status")).to_contain_text("your payment is being confirmed")
        await expect(page.locator("#credits-available")).to_have_text("$12.50")
        await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
        await screenshot(page, "credits-phone")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], "the credits page scrolls sideways on a phone"
