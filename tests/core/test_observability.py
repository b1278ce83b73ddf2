"""/health, /stats and /metrics report measured numbers."""

from __future__ import annotations

import httpx

from tests.conftest import REDIS_URL, Account


async def test_health_reports_each_dependency(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["timestamp"].endswith("Z")
    database = body["checks"]["database"]
    assert database["healthy"] is True and database["response_time_ms"] > 0
    redis = body["checks"]["redis"]
    if REDIS_URL:
        assert redis["configured"] is True and redis["response_time_ms"] > 0
    else:
        assert redis == {
            "healthy": True,
            "configured": False,
            "response_time_ms": None,
            "error": None,
            "impact": None,
        }


async def test_stats_count_real_requests(client: httpx.AsyncClient, account: Account) -> None:
    before = (await client.get("/stats")).json()
    for _ in range(5):
        await client.get("/api/v1/user/me", headers=account.headers)
    after = (await client.get("/stats")).json()
    assert set(after) >= {
        "timestamp",
        "requests_total",
        "requests_per_second",
        "active_connections",
        "gpu_instances_active",
        "models_loaded",
    }
    assert after["requests_total"] == before["requests_total"] + 6
    assert after["requests_per_second"] > 0
    assert after["active_connections"] == 1  # this /stats request itself


async def test_metrics_are_prometheus_text_with_real_counts(
    client: httpx.AsyncClient, account: Account
) -> None:
    for _ in range(3):
        await client.get("/api/v1/user/me", headers=account.headers)
    await client.get("/api/v1/user/me")
    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'aiserve_http_requests_total{method="GET",route="/api/v1/user/me",status="200"} 3.0' in text
    assert 'aiserve_http_requests_total{method="GET",route="/api/v1/user/me",status="401"} 1.0' in text
    assert 'aiserve_tool_calls_total{outcome="ok",surface="rest",tool="whoami"} 3.0' in text
    assert 'aiserve_tool_calls_total{outcome="AUTH_REQUIRED",surface="rest",tool="whoami"} 1.0' in text
    assert 'aiserve_http_request_duration_seconds_count{method="GET",route="/api/v1/user/me"} 4.0' in text
