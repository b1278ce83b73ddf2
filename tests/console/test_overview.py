"""The overview page over plain HTTP: credits, spending per window against its limit, running instances
with their cost so far, and models, all as the API reports them; its live parts rendered alone."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from aiserve_mcp.console.gpus import cost_so_far
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.tools.gpu_instances import ContractOut
from tests.conftest import LiveServer, funded, sign_up
from tests.console.renting import rent_by_api, renting
from tests.console.session import console_sign_in
from tests.serving.test_models import mlp_bytes, until_settled, upload


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return renting(settings)


def part(html: str, name: str) -> str:
    """The HTML of the live part ``name`` of a page."""
    match = re.search(rf'<div data-fragment="{name}"[^>]*>(.*?)\n  </div>', html, re.S)
    assert match is not None, f"the page has no {name} part"
    return match.group(1)


def meter(html: str, window: str) -> tuple[str, str]:
    """What the ``window`` meter says (``$spent of $limit``) and its value (percent of the limit)."""
    label = rf'<span>{window}</span>\s*<span class="num">([^<]*)</span>\s*</div>'
    match = re.search(label + r'\s*<meter [^>]*value="([^"]*)"', html)
    assert match is not None, f"no {window} meter"
    return match.group(1), match.group(2)


async def test_the_overview_shows_what_the_api_reports(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        owner = await funded(http, 500)
        limits = await http.put(
            "/api/v1/guardrails/limits", json={"limits": {"daily": 4}}, headers=owner.headers
        )
        assert limits.status_code == 200, limits.text
        contract_id = await rent_by_api(http, owner, "cpu0", hours=2)  # 1 USD held and spent
        uploaded = await upload(http, owner, mlp_bytes(), name="overview-mlp")
        assert uploaded.status_code == 201, uploaded.text
        model_id = uploaded.json()["model_id"]
        assert (await until_settled(http, owner, model_id))["status"] == "ready"
        ledger = (await http.get("/api/v1/billing/transactions", headers=owner.headers)).json()
        assert (ledger["credits"], ledger["held"]) == (499.0, 1.0)

        await console_sign_in(http, owner.email)
        page = await http.get("/console")
    assert page.status_code == 200, page.text
    balance = part(page.text, "balance")
    assert '<strong id="credits">$499.00</strong>' in balance
    assert "$1.00 held for running instances." in balance
    assert meter(balance, "Hourly") == ("$1.00 of $100.00", "1.0")
    assert meter(balance, "Daily") == ("$1.00 of $4.00", "25.0")
    assert meter(balance, "Monthly") == ("$1.00 of $5,000.00", "0.0")

    instances = part(page.text, "instances")
    row = re.search(rf'<tr data-contract="{contract_id}">(.*?)</tr>', instances, re.S)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    assert cells[1:4] == ["local", "running", "$0.50"]
    assert Decimal(0) <= Decimal(cells[4].removeprefix("$")) < Decimal("0.01")  # seconds at 0.5 USD/h
    assert cells[5] in ("1 h 59 min", "2 h")

    models = part(page.text, "models")
    assert f'<tr data-model="{model_id}">' in models
    assert "overview-mlp" in models and "<td>onnx</td>" in models and "<td>ready</td>" in models


async def test_a_new_account_sees_empty_parts_and_no_invented_numbers(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        account = await sign_up(http)
        await console_sign_in(http, account.email)
        page = await http.get("/console")
    assert '<strong id="credits">$0.00</strong>' in page.text
    assert meter(page.text, "Weekly") == ("$0.00 of $2,000.00", "0.0")
    assert "Frees up" not in page.text
    assert "No instances are running." in part(page.text, "instances")
    assert "No models yet." in part(page.text, "models")


async def test_each_live_part_renders_alone_for_its_owner_only(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        owner = await funded(http)
        contract_id = await rent_by_api(http, owner)
        stranger = await http.get("/console/fragments/instances")
        assert stranger.status_code == 303
        assert stranger.headers["location"].startswith("/console/sign-in?next=")

        await console_sign_in(http, owner.email)
        instances = await http.get("/console/fragments/instances")
        assert instances.status_code == 200
        assert f'data-contract="{contract_id}"' in instances.text and "<html" not in instances.text
        assert "script-src 'self'" in instances.headers["content-security-policy"]
        assert instances.headers["cache-control"] == "no-store"
        balance = await http.get("/console/fragments/balance")
        assert '<strong id="credits">$499.50</strong>' in balance.text
        assert (await http.get("/console/fragments/nothing")).status_code == 404

    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as other:
        someone = await sign_up(other)
        await console_sign_in(other, someone.email)
        theirs = await other.get("/console/fragments/instances")
    assert contract_id not in theirs.text and "No instances are running." in theirs.text


def contract(started: datetime, hours: int, billing: str, **more: Any) -> ContractOut:
    return ContractOut.model_validate(
        {
            "id": "ctr_1",
            "provider": "vastai",
            "instance_id": "1",
            "offer_id": "1",
            "status": "running",
            "status_message": None,
            "gpu_model": "RTX 4090",
            "pool": "default",
            "num_gpus": 1,
            "vram_gb": 24,
            "location": "US",
            "price_per_hour": 0.6,
            "billing": billing,
            "duration_hours": hours,
            "auto_renew": False,
            "estimated_cost": 0.6 * hours,
            "endpoint": None,
            "created_at": started,
            "expires_at": started + timedelta(hours=hours),
            "destroyed_at": None,
            **more,
        }
    )


def test_cost_so_far_is_what_ending_the_instance_now_would_charge() -> None:
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    half_hour_ago = now - timedelta(minutes=30)
    assert cost_so_far(contract(half_hour_ago, 2, "metered"), now) == Decimal("0.3")
    assert cost_so_far(contract(half_hour_ago, 2, "prepaid"), now) == Decimal("0.6")  # the first hour
    long_ago = now - timedelta(hours=5)
    assert cost_so_far(contract(long_ago, 2, "metered"), now) == Decimal("1.2")  # at most its hours
    renewed = contract(long_ago, 2, "metered", auto_renew=True, expires_at=long_ago + timedelta(hours=6))
    assert cost_so_far(renewed, now) == Decimal("3.0")  # two periods charged, the third half used
