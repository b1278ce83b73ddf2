"""The approvals inbox over HTTP: a rent that an agent's key asked for and the policy held shows up with
its amount, its key and its expiry; approving it from the console runs it once (a second approval changes
nothing), denying it spends nothing; decisions need the page's CSRF token; another person's approval is
404; the policy and webhook forms. In a real browser: an agent's request appears in the open inbox without
a reload, the person approves it, and the instance runs; screenshots."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.async_api import Page, expect

from aiserve_mcp.core.settings import Settings
from tests.conftest import PASSWORD, Account, LiveServer, funded
from tests.console.approving import active_contracts, agent_key, agent_rents, hold_everything
from tests.console.browser import DESKTOP, screenshot
from tests.console.renting import renting
from tests.console.session import console_sign_in, csrf_of
from tests.console.test_live import assert_fits_a_phone, watch_for_csp_violations


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return renting(settings)


async def person_with_a_pending_rent(http: httpx.AsyncClient) -> tuple[Account, dict[str, object]]:
    """A funded person signed in to the console through ``http``, whose agent's rent waits for them."""
    account = await funded(http, 100)
    await console_sign_in(http, account.email)
    await hold_everything(http, account)
    approval = await agent_rents(http, await agent_key(http, account))
    return account, approval


async def decide(http: httpx.AsyncClient, approval_id: str, decision: str, back: str) -> httpx.Response:
    page = await http.get("/console/approvals" if back == "inbox" else f"/console/approvals/{approval_id}")
    form = {"csrf_token": csrf_of(page.text), "decision": decision, "back": back}
    return await http.post(f"/console/approvals/{approval_id}", data=form)


async def status_of(http: httpx.AsyncClient, account: Account, approval_id: str) -> str:
    answer = await http.get(f"/api/v1/approvals/{approval_id}", headers=account.headers)
    assert answer.status_code == 200, answer.text
    status = answer.json()["status"]
    assert isinstance(status, str)
    return status


async def test_the_inbox_shows_a_pending_rent_and_approving_it_runs_it_once(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        account, approval = await person_with_a_pending_rent(http)
        approval_id = str(approval["id"])
        inbox = await http.get("/console/approvals")
        assert inbox.status_code == 200, inbox.text
        pending = inbox.text.split('id="history-heading"')[0]
        assert f'data-approval="{approval_id}"' in pending
        assert str(approval["description"]) in pending
        assert "$0.50" in pending
        assert re.search(r"API key “agent” \(ak_[A-Za-z0-9_-]+…\)", pending)
        assert re.search(r"in (59|60) min", pending) or "in 1 h" in pending
        assert f'id="approve-{approval_id}"' in pending and f'id="deny-{approval_id}"' in pending
        assert await active_contracts(http, account) == []  # nothing is rented while it waits

        approved = await decide(http, approval_id, "approve", "inbox")
        assert approved.status_code == 303, approved.text
        assert approved.headers["location"] == f"/console/approvals?decided={approval_id}"
        after = await http.get(approved.headers["location"])
        assert "Approved: " in after.text and "Done." in after.text
        assert "Nothing is waiting for your approval." in after.text
        assert 'class="status status-executed"' in after.text
        (contract,) = await active_contracts(http, account)
        assert contract["status"] == "running"

        again = await decide(http, approval_id, "approve", "page")
        assert again.status_code == 303
        assert len(await active_contracts(http, account)) == 1  # decided already: a no-op
        page = await http.get(f"/console/approvals/{approval_id}")
        assert page.status_code == 200
        assert 'id="approval-status">executed<' in page.text
        assert contract["contract_id"] in page.text  # the result of the rent
        assert f'id="approve-{approval_id}"' not in page.text


async def test_denying_from_the_approvals_page_spends_nothing(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        account, approval = await person_with_a_pending_rent(http)
        approval_id = str(approval["id"])
        page = await http.get(httpx.URL(str(approval["url"])).path)  # where the approval's url points
        assert page.status_code == 200, page.text
        assert 'id="approval-status">pending<' in page.text
        assert '"duration_hours": 1' in page.text  # the arguments it would run with
        assert 'name="back" value="page"' in page.text  # its buttons come back here

        denied = await decide(http, approval_id, "deny", "page")
        assert denied.status_code == 303, denied.text
        assert denied.headers["location"] == f"/console/approvals/{approval_id}"
        after = await http.get(denied.headers["location"])
        assert "Denied: " in after.text and "Nothing was done or spent." in after.text
        assert await status_of(http, account, approval_id) == "denied"
        assert await active_contracts(http, account) == []
        ledger = await http.get("/api/v1/billing/transactions", headers=account.headers)
        assert (ledger.json()["credits"], ledger.json()["held"]) == (100, 0)


async def test_a_decision_needs_the_pages_csrf_token(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        account, approval = await person_with_a_pending_rent(http)
        approval_id = str(approval["id"])
        for form in ({"decision": "approve"}, {"decision": "approve", "csrf_token": "0" * 64}):
            refused = await http.post(f"/console/approvals/{approval_id}", data=form)
            assert refused.status_code == 403, refused.text
        assert await status_of(http, account, approval_id) == "pending"
        assert await active_contracts(http, account) == []


async def test_another_persons_approval_is_not_found(live_server: LiveServer) -> None:
    async with (
        httpx.AsyncClient(base_url=live_server.url, timeout=30) as owner,
        httpx.AsyncClient(base_url=live_server.url, timeout=30) as other,
    ):
        account, approval = await person_with_a_pending_rent(owner)
        approval_id = str(approval["id"])
        await console_sign_in(other, (await funded(other)).email)
        page = await other.get(f"/console/approvals/{approval_id}")
        assert page.status_code == 404
        assert str(approval["description"]) not in page.text
        inbox = await other.get("/console/approvals")
        assert approval_id not in inbox.text
        form = {"csrf_token": csrf_of(inbox.text), "decision": "approve", "back": "inbox"}
        refused = await other.post(f"/console/approvals/{approval_id}", data=form)
        assert refused.status_code == 404
        assert await status_of(owner, account, approval_id) == "pending"


async def test_the_policy_form_sets_when_to_ask(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        account = await funded(http, 100)
        await console_sign_in(http, account.email)
        inbox = await http.get("/console/approvals")
        assert 'value="never" id="mode-never" checked' in inbox.text
        form = {"csrf_token": csrf_of(inbox.text), "mode": "above", "threshold": "5"}
        saved = await http.post("/console/approvals/policy", data=form)
        assert saved.status_code == 303, saved.text
        policy = await http.get("/api/v1/guardrails/approvals/policy", headers=account.headers)
        assert (policy.json()["mode"], policy.json()["threshold"]) == ("above", 5.0)
        after = await http.get(saved.headers["location"])
        assert "Approval policy saved." in after.text and 'value="5.00"' in after.text

        no_threshold = await http.post("/console/approvals/policy", data={**form, "threshold": ""})
        assert no_threshold.status_code == 400
        assert "threshold" in no_threshold.text


async def test_the_webhook_form_refuses_a_private_address_and_shows_a_new_secret_once(
    live_server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        account = await funded(http, 100)
        await console_sign_in(http, account.email)
        csrf = csrf_of((await http.get("/console/approvals")).text)
        private = await http.post(
            "/console/approvals/webhook", data={"csrf_token": csrf, "url": live_server.url}
        )
        assert private.status_code == 400  # http:// is for allowed hosts only
        private = await http.post(
            "/console/approvals/webhook", data={"csrf_token": csrf, "url": "https://127.0.0.1/hook"}
        )
        assert private.status_code == 403, private.text
        assert "AISERVE_APPROVAL_WEBHOOK_ALLOWED_HOSTS" in private.text
        webhook = await http.get("/api/v1/guardrails/approvals/webhook", headers=account.headers)
        assert webhook.json()["url"] is None


async def test_an_agents_request_appears_live_and_approving_it_in_the_browser_rents(
    live_server: LiveServer, browser_page: Page
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        account = await funded(http, 100)
        await hold_everything(http, account)
        agent = await agent_key(http, account)
        violations: list[str] = []
        page = browser_page
        watch_for_csp_violations(page, violations)
        await page.goto(f"{live_server.url}/console/approvals")
        await page.get_by_label("Email").fill(account.email)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Approvals", exact=True)).to_be_visible()
        await expect(page.get_by_role("link", name="Approvals")).to_have_attribute("aria-current", "page")
        await expect(page.locator("html")).to_have_attribute("data-live", "on")
        pending = page.locator('[data-fragment="approvals"]')
        await expect(pending).to_contain_text("Nothing is waiting for your approval.")
        await page.evaluate("window.notReloaded = true")

        approval = await agent_rents(http, agent)  # the agent asks, through the API
        item = pending.locator(f'li[data-approval="{approval["id"]}"]')
        await expect(item).to_contain_text(str(approval["description"]))  # told by /ws, fetched by live.js
        await expect(item).to_contain_text("$0.50")
        await expect(item).to_contain_text("API key “agent”")
        assert await page.evaluate("window.notReloaded === true")
        await screenshot(page, "approvals-pending")
        await assert_fits_a_phone(page, "approvals-pending-phone")
        await page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]

        await item.get_by_role("button", name="Approve").click()
        await expect(page.get_by_role("status")).to_contain_text("Done.")
        await expect(pending).to_contain_text("Nothing is waiting for your approval.")
        decided = page.locator(f'[data-fragment="approval_history"] tr[data-approval="{approval["id"]}"]')
        await expect(decided).to_contain_text("executed")
        await screenshot(page, "approvals-approved")
        (contract,) = await active_contracts(http, account)

        await decided.get_by_role("link").click()
        await expect(page.locator("#approval-status")).to_have_text("executed")
        await expect(page.locator("pre.json").last).to_contain_text(contract["contract_id"])
        await screenshot(page, "approval")

        await page.get_by_role("link", name="Overview").click()
        instances = page.locator('[data-fragment="instances"] tr[data-contract]')
        await expect(instances).to_have_count(1)
        await expect(instances).to_contain_text("running")
        assert violations == []
