"""The "Models" pages over HTTP and in a real browser: uploading a model through the console's form, its
status in the list, its metrics with the latency chart, deleting it, and the uploads the form refuses."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import ConsoleMessage, Dialog, FilePayload, Page, expect
from starlette.applications import Starlette

from aiserve_mcp.core.settings import Settings
from tests.conftest import Account, LiveServer, app_client, sign_up
from tests.console.browser import DESKTOP, PHONE, screenshot
from tests.console.session import console_sign_in, csrf_of
from tests.serving.test_models import mlp_bytes, until_settled

ROWS = [[0.1, 0.2, 0.3, 0.4], [1.0, -2.0, 3.5, 0.0]]


async def signed_in_console(http: httpx.AsyncClient) -> tuple[Account, str]:
    """A new account signed in to the console through ``http``, and the CSRF token of its models page."""
    account = await sign_up(http)
    await console_sign_in(http, account.email)
    page = await http.get("/console/models")
    assert page.status_code == 200, page.text
    return account, csrf_of(page.text)


async def upload(
    http: httpx.AsyncClient, csrf: str | None, content: bytes, filename: str = "mlp.onnx", **fields: str
) -> httpx.Response:
    data = {"csrf_token": csrf, **fields} if csrf else fields
    return await http.post(
        "/console/models", data=data, files={"model": (filename, content, "application/octet-stream")}
    )


async def test_upload_list_metrics_chart_and_delete(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        account, csrf = await signed_in_console(http)
        uploaded = await upload(http, csrf, mlp_bytes(), name="tiny mlp", version="2.1.0")
        assert uploaded.status_code == 303, uploaded.text
        location = uploaded.headers["location"]
        match = re.fullmatch(r"/console/models/([0-9a-f-]+)\?notice=uploaded", location)
        assert match is not None, location
        model_id = match.group(1)

        listing = await http.get("/console/models")
        assert "tiny mlp" in listing.text and f'href="/console/models/{model_id}"' in listing.text
        assert re.search(r'class="status status-(loading|ready)"', listing.text)
        assert (await until_settled(http, account, model_id))["status"] == "ready"

        fresh = await http.get(location)
        assert fresh.status_code == 200 and "Model uploaded" in fresh.text and "2.1.0" in fresh.text
        assert "status-ready" in fresh.text and "<svg" not in fresh.text
        assert "appears after the first prediction" in fresh.text

        predict = f"/api/v1/models/{model_id}/predict"
        for _ in range(5):
            answer = await http.post(predict, json={"inputs": {"input": ROWS}}, headers=account.headers)
            assert answer.status_code == 200, answer.text
        charted = await http.get(f"/console/models/{model_id}")
        assert charted.status_code == 200
        assert "5 predictions on this server" in charted.text
        svg = re.search(r'<svg class="chart".*?</svg>', charted.text, re.DOTALL)
        assert svg is not None
        bars = re.findall(r'<rect [^>]*width="([0-9.]+)"[^>]*class="bar bar-(\w+)"', svg.group(0))
        assert [label for _, label in bars] == ["average", "p50", "p95", "p99"]
        assert max(float(width) for width, _ in bars) == 410.0  # the slowest measure spans the scale
        assert " style=" not in charted.text  # the CSP forbids inline styles

        deleted = await http.post(f"/console/models/{model_id}/delete", data={"csrf_token": csrf})
        assert deleted.status_code == 303 and deleted.headers["location"] == "/console/models?notice=deleted"
        after = await http.get(deleted.headers["location"])
        assert "Model deleted" in after.text and "tiny mlp" not in after.text
        gone = await http.get(f"/api/v1/models/{model_id}", headers=account.headers)
        assert gone.status_code == 404


@pytest.fixture
async def small_uploads(settings: Settings) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The app in process, taking model files of at most 2,000 bytes."""
    async with app_client(settings.model_copy(update={"model_max_file_bytes": 2_000})) as started:
        yield started


async def test_the_upload_form_refuses_what_the_api_refuses(
    small_uploads: tuple[Starlette, httpx.AsyncClient],
) -> None:
    _, http = small_uploads
    account, csrf = await signed_in_console(http)
    forged = await upload(http, None, b"\x08\x0a")
    too_large = await upload(http, csrf, b"\x00" * 70_000, "big.onnx")
    over_the_file_limit = await upload(http, csrf, b"\x08" * 3_000, "big.onnx")
    not_a_model = await upload(http, csrf, b"just some text, not a model", "notes.txt")
    no_file = await http.post("/console/models", data={"csrf_token": csrf}, files={"model": ("", b"")})
    bad_version = await upload(http, csrf, b"\x08\x0a", version="x" * 65)
    listed = await http.get("/api/v1/models", headers=account.headers)
    stranger = await sign_up(http)
    someone_elses = await http.get("/console/models/not-yours")

    assert forged.status_code == 403
    assert too_large.status_code == 413 and "larger than this server accepts" in too_large.text
    assert over_the_file_limit.status_code == 413 and "larger than 2000 bytes" in over_the_file_limit.text
    assert not_a_model.status_code == 400 and 'role="alert"' in not_a_model.text
    assert no_file.status_code == 400 and "choose the model file" in no_file.text
    assert bad_version.status_code == 400 and "version" in bad_version.text
    assert listed.json()["models"] == []
    assert stranger.user_id != account.user_id and someone_elses.status_code == 404


async def test_a_model_of_another_person_is_not_shown_or_deleted(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as owner_http:
        _, owner_csrf = await signed_in_console(owner_http)
        uploaded = await upload(owner_http, owner_csrf, mlp_bytes(), name="private")
        model_path = uploaded.headers["location"].split("?")[0]
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        _, csrf = await signed_in_console(http)
        seen = await http.get(model_path)
        deleted = await http.post(f"{model_path}/delete", data={"csrf_token": csrf})
    assert seen.status_code == deleted.status_code == 404
    assert "private" not in seen.text and "private" not in deleted.text


async def test_uploading_a_model_in_a_browser(live_server: LiveServer, browser_page: Page) -> None:
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
    await page.goto(f"{live_server.url}/console/sign-in?next=/console/models")
    await page.get_by_label("Email").fill(account.email)
    await page.get_by_label("Password").fill("correct horse battery")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Models", exact=True)).to_be_visible()
    await screenshot(page, "models-empty")

    await page.get_by_label("Model file").set_input_files(
        files=FilePayload(name="mlp.onnx", mimeType="application/octet-stream", buffer=mlp_bytes())
    )
    await page.get_by_label("Name").fill("browser mlp")
    await page.get_by_role("button", name="Upload").click()
    await expect(page.get_by_role("heading", name="browser mlp")).to_be_visible()
    await expect(page.locator(".status").first).to_have_text("ready", timeout=30_000)  # reloads itself
    model_url = page.url.split("?")[0]
    predict = f"/api/v1/models/{model_url.rsplit('/', 1)[1]}/predict"
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        for _ in range(3):
            answer = await http.post(predict, json={"inputs": {"input": ROWS}}, headers=account.headers)
            assert answer.status_code == 200, answer.text
    await page.goto(model_url)
    await expect(page.get_by_role("img", name="Latency of the latest predictions")).to_be_visible()
    await screenshot(page, "model")

    await page.get_by_role("link", name="Models", exact=True).click()
    await expect(page.get_by_role("link", name="browser mlp")).to_be_visible()
    await screenshot(page, "models")

    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    for url, name in ((f"{live_server.url}/console/models", "models-phone"), (model_url, "model-phone")):
        await page.goto(url)
        await screenshot(page, name)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{url} scrolls sideways on a phone"
    await page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]

    await page.goto(model_url)
    await page.get_by_role("button", name="Delete model").click()
    await expect(page.get_by_role("status")).to_contain_text("Model deleted")
    assert violations == []
