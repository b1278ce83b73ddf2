"""The GPU catalog, the selection score, and the preference and catalog tools."""

from __future__ import annotations

import random
from decimal import Decimal

import httpx
import pytest

from aiserve_mcp.gpu.catalog import TIERS, VENDORS, default_catalog
from aiserve_mcp.gpu.selection import Candidate, Criteria, Priority, rank
from tests.conftest import Account, sign_up

CATALOG = default_catalog()


def test_catalog_has_real_sourced_rows() -> None:
    specs = CATALOG.specs
    assert len(specs) >= 30
    assert len({s.id for s in specs}) == len(specs)
    assert {s.vendor for s in specs} == set(VENDORS)
    for spec in specs:
        assert spec.source.startswith("https://"), spec.id
        assert (
            spec.tier in TIERS
            and spec.vram_gb > 0
            and spec.fp16_tflops > 0
            and spec.memory_bandwidth_gbps > 0
        )
    h100 = CATALOG.match("H100 SXM")
    assert h100 is not None and (h100.vram_gb, h100.fp16_tflops, h100.memory_bandwidth_gbps) == (
        80,
        989.4,
        3350,
    )


@pytest.mark.parametrize(
    ("name", "vram", "expected"),
    [
        ("NVIDIA GeForce RTX 4090", None, "rtx4090"),
        ("RTX 4090", 24.0, "rtx4090"),
        ("rtx_a6000", None, "rtx_a6000"),
        ("A100 PCIE", 40.0, "a100_40g"),
        ("A100 PCIE", 79.6, "a100_80g_pcie"),
        ("AMD Instinct MI300X", 192.0, "mi300x"),
        ("Tesla T4", 15.0, "t4"),
    ],
)
def test_offers_match_catalog_entries_by_name_and_vram(name: str, vram: float | None, expected: str) -> None:
    match = CATALOG.match(name, vram)
    assert match is not None and match.id == expected


def test_unknown_gpu_matches_nothing() -> None:
    assert CATALOG.match("Voodoo 5 6000") is None


def test_filters_exclude_and_scores_stay_in_range() -> None:
    ranked = rank([Candidate(s) for s in CATALOG.specs], Criteria(min_vram=80, priority="performance"))
    assert ranked and all(s.candidate.spec.vram_gb >= 80 for s in ranked)
    assert all(0 <= s.score <= 100 for s in ranked)
    assert ranked[0].candidate.spec.id == "b200"
    capped = [Candidate(s, Decimal("2.00")) for s in CATALOG.specs[:3]] + [
        Candidate(CATALOG.specs[3], Decimal("9"))
    ]
    assert all(
        s.candidate.price_per_hour == Decimal("2.00")
        for s in rank(capped, Criteria(max_price_per_hour=Decimal(3)))
    )
    assert rank([Candidate(s) for s in CATALOG.specs], Criteria(min_vram=1000)) == []


@pytest.mark.parametrize("priority", ["cost", "balanced", "performance"])
def test_a_cheaper_otherwise_equal_offer_never_scores_lower(priority: Priority) -> None:
    chooser = random.Random(7)
    for _ in range(200):
        specs = chooser.sample(CATALOG.specs, 4)
        prices = [Decimal(chooser.randint(10, 500)) / 100 for _ in specs]
        same = specs[0]
        cheaper = (
            Decimal(chooser.randint(5, int(prices[0] * 100) - 1)) / 100
            if prices[0] > Decimal("0.05")
            else None
        )
        if cheaper is None:
            continue
        pool = [Candidate(s, p, offer_id=str(i)) for i, (s, p) in enumerate(zip(specs, prices, strict=True))]
        pool.append(Candidate(same, cheaper, offer_id="cheap"))
        scored = {s.candidate.offer_id: s for s in rank(pool, Criteria(priority=priority))}
        assert scored["cheap"].score >= scored["0"].score
        order = [s.candidate.offer_id for s in rank(pool, Criteria(priority=priority))]
        assert order.index("cheap") < order.index("0")


def test_priority_changes_the_choice() -> None:
    consumer, datacentre = CATALOG.match("RTX 3090"), CATALOG.match("H100 SXM")
    assert consumer is not None and datacentre is not None
    pool = [Candidate(consumer, Decimal("0.20")), Candidate(datacentre, Decimal("2.50"))]
    assert rank(pool, Criteria(priority="cost"))[0].candidate.spec.id == "rtx3090"
    assert rank(pool, Criteria(priority="performance"))[0].candidate.spec.id == "h100_sxm"


async def test_preferences_start_as_defaults_and_save_repeatedly(
    client: httpx.AsyncClient, account: Account
) -> None:
    first = (await client.get("/api/v1/gpu/preferences", headers=account.headers)).json()
    assert first["is_default"] is True and first["id"] is None and first["user_id"] == account.user_id
    for min_vram in (16, 24, 48):
        saved = await client.post(
            "/api/v1/gpu/preferences",
            json={
                "preferred_vendors": ["nvidia"],
                "preferred_tiers": ["high-end"],
                "min_vram": min_vram,
                "max_price_per_hour": 3.0,
                "priority": "performance",
            },
            headers=account.headers,
        )
        assert saved.status_code == 200, saved.text
        assert saved.json()["message"] == "Preferences saved successfully"
    read = (await client.get("/api/v1/gpu/preferences", headers=account.headers)).json()
    assert read["is_default"] is False and read["id"] == saved.json()["id"]
    assert (read["preferred_vendors"], read["min_vram"], read["max_price_per_hour"]) == (["NVIDIA"], 48, 3.0)
    other = await sign_up(client)
    assert (await client.get("/api/v1/gpu/preferences", headers=other.headers)).json()["is_default"] is True


@pytest.mark.parametrize(
    "body",
    [
        {"preferred_vendors": ["Voodoo"]},
        {"preferred_tiers": ["ultra"]},
        {"min_vram": -1},
        {"max_price_per_hour": -2},
        {"priority": "fastest"},
        {"min_vram": 16, "gpu": "x"},
    ],
)
async def test_bad_preferences_are_refused(
    client: httpx.AsyncClient, account: Account, body: dict[str, object]
) -> None:
    response = await client.post("/api/v1/gpu/preferences", json=body, headers=account.headers)
    assert response.status_code == 400 and response.json()["code"] == "VALIDATION_ERROR"
    assert (await client.get("/api/v1/gpu/preferences", headers=account.headers)).json()["is_default"] is True


async def test_preview_follows_saved_and_trial_preferences(
    client: httpx.AsyncClient, account: Account
) -> None:
    await client.post(
        "/api/v1/gpu/preferences",
        json={"preferred_vendors": ["AMD"], "min_vram": 100},
        headers=account.headers,
    )
    preview = (await client.post("/api/v1/gpu/preferences/test", headers=account.headers)).json()
    assert preview["source"] == "catalog"
    selected = preview["selected_gpu"]
    assert selected["vendor"] == "AMD" and selected["vram_gb"] >= 100 and 0 < selected["score"] <= 100
    scores = [selected["score"]] + [a["score"] for a in preview["alternatives"]]
    assert scores == sorted(scores, reverse=True) and len(preview["alternatives"]) == 5
    trial = await client.post(
        "/api/v1/gpu/preferences/test",
        json={"overrides": {"min_vram": 1000}, "alternatives": 2},
        headers=account.headers,
    )
    assert trial.json()["selected_gpu"] is None and trial.json()["alternatives"] == []


async def test_catalog_listing_and_public_examples(client: httpx.AsyncClient, account: Account) -> None:
    amd = (await client.get("/api/v1/gpu/available?vendor=amd&min_vram=128", headers=account.headers)).json()
    assert amd["count"] == len(amd["gpus"]) >= 3
    assert all(
        g["vendor"] == "AMD" and g["vram_gb"] >= 128 and g["avg_price_per_hour"] is None for g in amd["gpus"]
    )
    flagship = (await client.get("/api/v1/gpu/available?tier=flagship", headers=account.headers)).json()
    assert {g["name"] for g in flagship["gpus"]} >= {"H100 SXM", "B200", "Instinct MI300X"}
    assert (await client.get("/api/v1/gpu/available")).status_code == 401
    examples = await client.get("/api/v1/gpu/examples")
    assert examples.status_code == 200
    body = examples.json()
    assert body["available_examples"] == [
        "cost_optimized",
        "performance_focused",
        "nvidia_only",
        "amd_preferred",
    ]
    saved = await client.post(
        "/api/v1/gpu/preferences", json=body["examples"]["nvidia_only"], headers=account.headers
    )
    assert saved.status_code == 200
