"""The GPUs page over plain HTTP (no JavaScript): searching offers with the filter form, renting and
destroying through forms, the tools' refusals in the alert box, the CSRF token, and ownership."""

from __future__ import annotations

import re
from html import unescape

import httpx
import pytest
from pydantic import SecretStr

from aiserve_mcp.app import create_app
from aiserve_mcp.core.settings import Settings
from tests.conftest import Account, LiveServer, free_port, funded, serve, sign_up
from tests.console.renting import contract_status, rent_by_api, renting
from tests.console.session import console_sign_in, csrf_of


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return renting(settings)


def alert(html: str) -> str:
    match = re.search(r'<p class="alert" role="alert">(.*?)</p>', html, re.S)
    assert match is not None, "the page shows no alert"
    return unescape(match.group(1))


def notice(html: str) -> str:
    match = re.search(r'<p class="notice" role="status">(.*?)</p>', html, re.S)
    assert match is not None, "the page shows no notice"
    return unescape(match.group(1))


def rent_form(page: httpx.Response, offer: str, hours: str = "1", back: str = "") -> dict[str, str]:
    return {
        "csrf_token": csrf_of(page.text),
        "provider": offer.split(":")[0],
        "instance_id": offer,
        "duration_hours": hours,
        "back": back,
    }


async def test_searching_renting_and_destroying_through_the_forms(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        owner = await funded(http)
        await console_sign_in(http, owner.email)
        page = await http.get("/console/gpus", params={"provider": "local", "max_price": "0.5"})
        assert page.status_code == 200, page.text
        assert 'data-offer="local:cpu0"' in page.text and 'data-offer="local:cpu1"' in page.text
        assert "2 of 2 offers" in page.text and '<td class="num">$0.50</td>' in page.text
        assert 'value="0.5"' in page.text and '<option value="local" selected>' in page.text
        assert "No instances are running." in page.text
        too_cheap = await http.get("/console/gpus", params={"provider": "local", "max_price": "0.1"})
        assert "0 of 0 offers" in too_cheap.text

        rented = await http.post(
            "/console/gpus/rent", data=rent_form(page, "local:cpu0", "2", "provider=local&max_price=0.5")
        )
        assert rented.status_code == 303, rented.text
        location = rented.headers["location"]
        assert location.startswith("/console/gpus?provider=local&max_price=0.5&rented=ctr_")
        contract_id = location.rsplit("=", 1)[1]
        assert await contract_status(http, owner, contract_id) == "running"

        after = await http.get(location)
        assert notice(after.text).endswith(f"for 2 h (contract {contract_id}); status: running.")
        assert f'data-contract="{contract_id}"' in after.text
        assert 'data-offer="local:cpu0"' in after.text and "Taken" in after.text  # rented: no form

        destroyed = await http.post(
            "/console/gpus/destroy",
            data={"csrf_token": csrf_of(after.text), "provider": "local", "contract_id": contract_id},
        )
        assert destroyed.status_code == 303, destroyed.text
        assert destroyed.headers["location"] == f"/console/gpus?destroyed={contract_id}"
        gone = await http.get(destroyed.headers["location"])
        assert notice(gone.text).endswith("status: destroyed.")
        assert "No instances are running." in gone.text
        assert await contract_status(http, owner, contract_id) == "destroyed"


async def test_a_rent_the_accounts_policy_holds_goes_to_its_approval_page(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        owner = await funded(http)
        policy = await http.put(
            "/api/v1/guardrails/approvals/policy", json={"mode": "always"}, headers=owner.headers
        )
        assert policy.status_code == 200, policy.text
        await console_sign_in(http, owner.email)
        page = await http.get("/console/gpus", params={"provider": "local"})
        held = await http.post("/console/gpus/rent", data=rent_form(page, "local:cpu0"))
        assert held.status_code == 303, held.text
        approval_id = held.headers["location"].rsplit("/", 1)[1]
        assert held.headers["location"] == f"/console/approvals/{approval_id}"
        approval = await http.get(f"/api/v1/approvals/{approval_id}", headers=owner.headers)
        assert approval.json()["status"] == "pending" and approval.json()["action"] == "rent_gpu_instance"
        assert approval.json()["description"].startswith("Rent CPU (")  # a CPU worker: no GPU count
        contracts = await http.get("/api/v1/gpu/contracts", headers=owner.headers)
        assert contracts.json()["count"] == 0  # nothing is rented while it waits
        shown = await http.get(held.headers["location"])
        assert shown.status_code == 200 and "Approve" in shown.text


async def test_a_form_without_the_csrf_token_rents_and_destroys_nothing(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        owner = await funded(http)
        contract_id = await rent_by_api(http, owner, "cpu1")
        await console_sign_in(http, owner.email)
        page = await http.get("/console/gpus")
        forged = {**rent_form(page, "local:cpu0"), "csrf_token": "00" * 32}
        assert (await http.post("/console/gpus/rent", data=forged)).status_code == 403
        missing = {k: v for k, v in rent_form(page, "local:cpu0").items() if k != "csrf_token"}
        assert (await http.post("/console/gpus/rent", data=missing)).status_code == 403
        destroy = {"provider": "local", "contract_id": contract_id}
        assert (await http.post("/console/gpus/destroy", data=destroy)).status_code == 403
        listed = await http.get("/api/v1/gpu/contracts", headers=owner.headers)
        assert [c["contract_id"] for c in listed.json()["contracts"]] == [contract_id]
        assert await contract_status(http, owner, contract_id) == "running"


async def test_another_persons_instance_cannot_be_destroyed(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        owner = await funded(http)
        contract_id = await rent_by_api(http, owner)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as intruder:
        account = await sign_up(intruder)
        await console_sign_in(intruder, account.email)
        page = await intruder.get("/console/gpus")
        assert contract_id not in page.text
        refused = await intruder.post(
            "/console/gpus/destroy",
            data={"csrf_token": csrf_of(page.text), "provider": "local", "contract_id": contract_id},
        )
        assert refused.status_code == 404
        assert contract_id in alert(refused.text)
        assert await contract_status(intruder, owner, contract_id) == "running"


async def refused_by_api(
    http: httpx.AsyncClient, account: Account, offer: str, hours: int = 1
) -> tuple[int, str]:
    """The status and message of the REST API refusing to rent ``offer``."""
    provider, _, offer_id = offer.partition(":")
    answer = await http.post(
        f"/api/v1/gpu/instances/{provider}/{offer_id}",
        json={"duration_hours": hours},
        headers=account.headers,
    )
    assert answer.status_code >= 400, answer.text
    return answer.status_code, str(answer.json()["error"])


async def assert_refused_as_by_api(
    http: httpx.AsyncClient, account: Account, page: httpx.Response, offer: str, hours: int = 1
) -> httpx.Response:
    """Renting ``offer`` by the form is refused with the API's status and message (in the alert box)."""
    refused = await http.post("/console/gpus/rent", data=rent_form(page, offer, str(hours), "provider=local"))
    assert (refused.status_code, alert(refused.text)) == await refused_by_api(http, account, offer, hours)
    return refused


async def test_refusals_show_the_tools_message_and_status(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        broke = await sign_up(http)  # no credits at all
        await console_sign_in(http, broke.email)
        page = await http.get("/console/gpus", params={"provider": "local"})
        refused = await assert_refused_as_by_api(http, broke, page, "local:cpu0")
        assert refused.status_code == 402 and "credits" in alert(refused.text)
        assert 'data-offer="local:cpu0"' in refused.text  # the same search, shown again
        refused = await assert_refused_as_by_api(http, broke, page, "vastai:123")
        assert refused.status_code == 503 and "AISERVE_VASTAI_API_KEY" in alert(refused.text)
        refused = await assert_refused_as_by_api(http, broke, page, "local:cpu0", hours=0)
        assert refused.status_code == 400 and "duration_hours" in alert(refused.text)

    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        limited = await funded(http)
        lowered = await http.put(
            "/api/v1/guardrails/limits", json={"limits": {"hourly": 0.4}}, headers=limited.headers
        )
        assert lowered.status_code == 200, lowered.text
        await console_sign_in(http, limited.email)
        page = await http.get("/console/gpus", params={"provider": "local"})
        refused = await assert_refused_as_by_api(http, limited, page, "local:cpu0")
        assert refused.status_code == 402 and "hourly" in alert(refused.text)
        listed = await http.get("/api/v1/gpu/contracts", headers=limited.headers)
        assert listed.json()["count"] == 0


async def test_a_provider_that_is_down_is_named_while_the_others_offers_show(settings: Settings) -> None:
    down = renting(settings, vastai_api_key=SecretStr("k"), vastai_url=f"http://127.0.0.1:{free_port()}")
    async with serve(create_app(down)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        account = await funded(http)
        await console_sign_in(http, account.email)
        page = await http.get("/console/gpus")
        assert page.status_code == 200
        assert alert(page.text).startswith("Some providers did not answer. vastai: ")
        assert 'data-offer="local:cpu0"' in page.text
        refused = await assert_refused_as_by_api(http, account, page, "vastai:42")
        assert refused.status_code == 502


async def test_a_stranger_is_sent_to_sign_in(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        page = await http.get("/console/gpus", params={"provider": "local"})
    assert page.status_code == 303
    assert page.headers["location"] == "/console/sign-in?next=%2Fconsole%2Fgpus%3Fprovider%3Dlocal"
