"""Which instance addresses the proxy may connect to."""

from __future__ import annotations

import pytest

from aiserve_mcp.core.errors import Forbidden
from aiserve_mcp.traffic.egress import vet_endpoint

REFUSED = [
    "http://127.0.0.1:8000",
    "http://169.254.169.254:80",  # cloud metadata
    "http://10.0.0.7:8000",
    "http://192.168.1.2:8000",
    "http://172.16.5.5:8000",
    "http://100.64.0.1:8000",  # carrier-grade NAT
    "http://[::1]:8000",
    "http://[::ffff:127.0.0.1]:8000",
    "http://[fe80::1]:8000",
    "http://0.0.0.0:8000",
    "http://224.0.0.1:8000",
    "http://localhost:8000",
]


@pytest.mark.parametrize("endpoint", REFUSED)
async def test_private_and_special_addresses_are_refused(endpoint: str) -> None:
    with pytest.raises(Forbidden):
        await vet_endpoint(endpoint, loopback_only=False, allow_private=False)


async def test_public_addresses_are_pinned_to_the_checked_address() -> None:
    upstream = await vet_endpoint("http://8.8.8.8:8000", loopback_only=False, allow_private=False)
    assert str(upstream.base_url) == "http://8.8.8.8:8000" and upstream.host_header == "8.8.8.8:8000"


async def test_local_workers_must_be_on_loopback() -> None:
    upstream = await vet_endpoint("http://127.0.0.1:41000", loopback_only=True, allow_private=False)
    assert upstream.base_url.host == "127.0.0.1"
    with pytest.raises(Forbidden):
        await vet_endpoint("http://8.8.8.8:8000", loopback_only=True, allow_private=False)


@pytest.mark.parametrize("endpoint", ["https://8.8.8.8", "http://user:pw@8.8.8.8:80", "file:///etc/passwd"])
async def test_only_plain_http_endpoints(endpoint: str) -> None:
    with pytest.raises(Forbidden):
        await vet_endpoint(endpoint, loopback_only=False, allow_private=True)


async def test_private_networks_can_be_allowed() -> None:
    upstream = await vet_endpoint("http://10.0.0.7:8000", loopback_only=False, allow_private=True)
    assert upstream.base_url.host == "10.0.0.7"
