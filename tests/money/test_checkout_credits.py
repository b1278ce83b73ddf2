"""Credits bought on a checkout page reach the ledger exactly once: replayed, concurrent and out-of-order
verdicts, payment methods that settle later, and sessions no purchase may come from (on SQLite, and on
PostgreSQL when the tests run there)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from decimal import Decimal

import anyio
import pytest
from sqlalchemy import func, select

from aiserve_mcp.accounts.tables import User
from aiserve_mcp.core.errors import NotFound, ValidationFailed
from aiserve_mcp.money.checkout import open_checkout, settle_checkout
from aiserve_mcp.money.ledger import Ledger
from aiserve_mcp.money.payments.base import CheckoutSession
from aiserve_mcp.money.tables import LedgerEntry, LedgerTransaction
from aiserve_mcp.storage.database import Database
from aiserve_mcp.storage.migrate import upgrade


@dataclass
class Books:
    db: Database
    ledger: Ledger
    user_id: str

    async def available(self) -> Decimal:
        return (await self.ledger.balance(self.user_id)).available

    async def payments(self) -> list[LedgerTransaction]:
        async with self.db.session() as session:
            rows = await session.scalars(
                select(LedgerTransaction).where(LedgerTransaction.user_id == self.user_id)
            )
            return list(rows)

    async def entries(self) -> int:
        async with self.db.session() as session:
            return int(await session.scalar(select(func.count()).select_from(LedgerEntry)) or 0)


@pytest.fixture
async def books(database_url: str) -> AsyncIterator[Books]:
    await anyio.to_thread.run_sync(upgrade, database_url)
    db = Database(database_url)
    async with db.session() as session:
        user = User(email="payer@example.com", password_hash="x")
        session.add(user)
    try:
        yield Books(db, Ledger(db), user.id)
    finally:
        await db.dispose()


def paid(user_id: str | None, session_id: str = "cs_test_1", amount: int = 2500) -> CheckoutSession:
    return CheckoutSession(session_id, None, "complete", "paid", amount, "usd", 2_000_000_000, user_id)


async def test_replays_and_concurrent_deliveries_credit_once(books: Books) -> None:
    session = paid(books.user_id)
    opened = await open_checkout(
        books.ledger, "stripe", replace(session, status="open", payment_status="unpaid")
    )
    assert opened.status == "requires_action" and await books.available() == 0
    verdicts = [settle_checkout(books.ledger, "stripe", session, "succeeded") for _ in range(20)]
    settled = await asyncio.gather(*verdicts)
    assert {tx.id for tx in settled} == {opened.id} and {tx.status for tx in settled} == {"succeeded"}
    assert await books.available() == Decimal("25.00") and await books.entries() == 2
    late = await settle_checkout(books.ledger, "stripe", session, "failed", "The checkout page expired.")
    assert late.status == "succeeded" and await books.available() == Decimal("25.00")


async def test_verdicts_that_overtake_the_opening_credit_once(books: Books) -> None:
    session = paid(books.user_id, "cs_test_fast")
    racing = [settle_checkout(books.ledger, "stripe", session, "succeeded") for _ in range(20)]
    racing.append(open_checkout(books.ledger, "stripe", replace(session, status="open")))
    results = await asyncio.gather(*racing)
    assert len({tx.id for tx in results}) == 1
    assert await books.available() == Decimal("25.00") and await books.entries() == 2
    [payment] = await books.payments()
    assert (payment.status, payment.provider_ref, payment.gateway) == ("succeeded", "cs_test_fast", "stripe")


async def test_a_payment_that_settles_later_credits_on_success_only(books: Books) -> None:
    later = replace(paid(books.user_id, "cs_test_bank"), payment_status="unpaid")
    assert (await settle_checkout(books.ledger, "stripe", later, "processing")).status == "processing"
    assert await books.available() == 0
    done = await settle_checkout(books.ledger, "stripe", paid(books.user_id, "cs_test_bank"), "succeeded")
    assert done.status == "succeeded" and await books.available() == Decimal("25.00")
    failing = replace(paid(books.user_id, "cs_test_bounce", 1000), payment_status="unpaid")
    await settle_checkout(books.ledger, "stripe", failing, "processing")
    bounced = await settle_checkout(books.ledger, "stripe", failing, "failed", "The payment failed.")
    assert (bounced.status, bounced.failure) == ("failed", "The payment failed.")
    assert (await settle_checkout(books.ledger, "stripe", failing, "succeeded")).status == "failed"
    assert await books.available() == Decimal("25.00")


async def test_sessions_no_purchase_may_come_from_credit_nothing(books: Books) -> None:
    user = books.user_id
    for session in (
        replace(paid(user), currency="eur"),
        paid(user, amount=49),
        paid(user, amount=100_000 * 100 + 1),
    ):
        with pytest.raises(ValidationFailed):
            await settle_checkout(books.ledger, "stripe", session, "succeeded")
    with pytest.raises(NotFound):
        await settle_checkout(books.ledger, "stripe", paid(None), "succeeded")
    with pytest.raises(NotFound):
        await settle_checkout(books.ledger, "stripe", paid("00000000-no-such-user"), "succeeded")
    await open_checkout(books.ledger, "stripe", paid(user, "cs_test_sum", 2500))
    with pytest.raises(ValidationFailed, match="differs"):
        await settle_checkout(books.ledger, "stripe", paid(user, "cs_test_sum", 250_000), "succeeded")
    assert await books.available() == 0
    assert (
        await settle_checkout(books.ledger, "stripe", paid(user, amount=100_000 * 100), "succeeded")
    ).amount
