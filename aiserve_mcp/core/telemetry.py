"""Measured numbers for ``/metrics`` (Prometheus) and ``/stats`` (JSON). Nothing here is estimated."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

RPS_WINDOW_S = 60


class Telemetry:
    """Counters and histograms of one server process, in its own Prometheus registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "aiserve_http_requests_total",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "aiserve_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self.http_in_flight = Gauge(
            "aiserve_http_requests_in_flight", "HTTP requests being answered now.", registry=self.registry
        )
        self.tool_calls = Counter(
            "aiserve_tool_calls_total",
            "Tool calls, by tool, surface (rest, mcp, ...) and outcome (ok or an error code).",
            ["tool", "surface", "outcome"],
            registry=self.registry,
        )
        self.tool_duration = Histogram(
            "aiserve_tool_duration_seconds", "Time a tool took, by tool.", ["tool"], registry=self.registry
        )
        self.rate_limit_refusals = Counter(
            "aiserve_rate_limit_refusals_total",
            "Requests refused by a rate limit, by budget.",
            ["budget"],
            registry=self.registry,
        )
        self.rate_limit_fallbacks = Counter(
            "aiserve_rate_limit_fallbacks_total",
            "Requests whose rate limit was counted in this process because Redis could not be reached.",
            registry=self.registry,
        )
        self.spend_recorded = Counter(
            "aiserve_spend_recorded_usd_total",
            "USD recorded against spending windows.",
            registry=self.registry,
        )
        self.spend_refusals = Counter(
            "aiserve_spend_refusals_total",
            "Spends refused (HTTP 402), by the window whose limit they would exceed.",
            ["window"],
            registry=self.registry,
        )
        self.spend_remaining = Histogram(
            "aiserve_spend_budget_remaining_ratio",
            "Share of the tightest window's limit left after each allowed spend.",
            buckets=(0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
            registry=self.registry,
        )
        self.model_latency = Histogram(
            "aiserve_model_latency_seconds",
            "Prediction latency by model (successful runs).",
            ["model"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.model_batch_size = Histogram(
            "aiserve_model_batch_requests",
            "Predictions carried by each model run (greedy batching), by model.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.requests_total = 0
        self.active_connections = 0
        self._per_second: deque[tuple[int, int]] = deque()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def request_started(self) -> None:
        self.requests_total += 1
        self.active_connections += 1
        self.http_in_flight.inc()
        second = int(time.monotonic())
        if self._per_second and self._per_second[-1][0] == second:
            self._per_second[-1] = (second, self._per_second[-1][1] + 1)
        else:
            self._per_second.append((second, 1))
        self._trim(second)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised: ``labels()`` takes a lock and builds its key every call,
        which the hottest routes pay several times per request."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def request_finished(self, method: str, route: str, status: int, duration_s: float) -> None:
        self.active_connections -= 1
        self.http_in_flight.dec()
        self.child(self.http_requests, method, route, str(status)).inc()
        self.child(self.http_duration, method, route).observe(duration_s)

    def _trim(self, now_second: int) -> None:
        while self._per_second and self._per_second[0][0] <= now_second - RPS_WINDOW_S:
            self._per_second.popleft()

    def requests_per_second(self) -> float:
        """Mean request rate over the last minute."""
        self._trim(int(time.monotonic()))
        return round(sum(count for _, count in self._per_second) / RPS_WINDOW_S, 3)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
