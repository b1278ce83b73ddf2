"""What the fake knows and how it misbehaves.

Knobs on ``IoNetState``: ``hardware``, ``api_key``, ``throttle_next`` (that many 429s, with
``Retry-After: retry_after`` when set), ``fail_next`` (that many 500s), ``deploy_failures`` (statuses the
next valid deploys answer instead of deploying), ``stale`` (row ids that still show free replicas but whose
deploy is refused as sold out), ``polls_until_running`` (status reads that still answer ``deploying``),
``url_after_checks`` (container reads of a running deployment before its ``public_url`` appears),
``public_url`` (every container's URL; default ``https://<id>.caas.ionet.test``). ``requests`` logs every
(method, path); ``deployments`` holds what was deployed, by id (set ``status`` on one to force its status).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.fakes.ionet_api.hardware import sample_hardware


@dataclass
class FakeDeployment:
    id: str
    row: dict[str, Any]
    body: dict[str, Any]
    created_at: str
    polls: int = 0
    checks: int = 0  # container reads while running (io.net's own health checks, as far as we can tell)
    status: str | None = None  # set to force the deployment's status ("failed", "destroyed", ...)


@dataclass
class IoNetState:
    hardware: list[dict[str, Any]] = field(default_factory=sample_hardware)
    api_key: str = "ionet-test-key"
    throttle_next: int = 0
    fail_next: int = 0
    deploy_failures: list[int] = field(default_factory=list)
    retry_after: float | None = None
    stale: set[str] = field(default_factory=set)
    polls_until_running: int = 1
    url_after_checks: int = 0
    public_url: str | None = None
    deployments: dict[str, FakeDeployment] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
