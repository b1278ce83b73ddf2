"""A real browser for the console's tests: Debian's Chromium driven by Playwright (never a downloaded
browser), and screenshots of each page under ``tests/console/screenshots/`` (not committed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).parent / "screenshots"
# As root in a container there is no user namespace for Chromium's sandbox; the network is closed, so
# nothing in the background may try to reach Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture
async def browser_page() -> AsyncIterator[Page]:
    """A fresh page (its own cookies) in headless Chromium, desktop-sized."""
    assert CHROMIUM.is_file(), "browser tests need Debian's chromium package: apt-get install -y chromium"  # noqa: ASYNC240
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
            yield await context.new_page()
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> Path:
    """Save the whole page as ``screenshots/<name>.png``; returns the path."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
