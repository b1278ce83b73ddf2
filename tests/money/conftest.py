"""The local Stripe API with the Stripe gateway pointed at it, for the gateway tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from aiserve_mcp.money.payments.stripe_gateway import StripeGateway
from tests.conftest import serve
from tests.fakes.stripe_api.server import stripe_app
from tests.fakes.stripe_api.state import API_KEY, StripeState

WEBHOOK_SECRET = "whsec_test_aiserve_0123456789"


@dataclass
class Stripe:
    state: StripeState
    url: str
    gateway: StripeGateway


@pytest.fixture
async def stripe_api() -> AsyncIterator[Stripe]:
    state = StripeState()
    async with serve(stripe_app(state)) as url:
        gateway = StripeGateway(API_KEY, api_base=url, webhook_secret=WEBHOOK_SECRET)
        try:
            yield Stripe(state, url, gateway)
        finally:
            await gateway.aclose()
