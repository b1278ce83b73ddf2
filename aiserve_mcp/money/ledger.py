"""The credit ledger: double entry, exact amounts, balances that never go below zero.

Every movement is a transaction whose entries sum to zero, and entries are never changed: a correction
is a new, reversing transaction. Each user has two accounts, ``available`` and ``held``; money enters
from ``platform:payments`` and leaves to ``platform:usage``. A costly action first *holds* its estimated
cost (available -> held), then *settles* the hold: the actual cost (never more than held) goes to usage,
the rest back to available. A hold or spend that the available balance cannot cover is refused with
``INSUFFICIENT_CREDITS`` and records nothing.

Concurrency: every posting locks the accounts it touches (``SELECT ... FOR UPDATE`` in sorted order on
PostgreSQL; SQLite has a single writer, and postings of one process are serialized by a lock).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Select, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aiserve_mcp.core.errors import InsufficientCredits, NotFound, ValidationFailed
from aiserve_mcp.money.tables import (
    LedgerAccount,
    LedgerEntry,
    LedgerHold,
    LedgerTransaction,
    WebhookEventSeen,
)
from aiserve_mcp.storage.database import Database

PAYMENTS = "platform:payments"
USAGE = "platform:usage"
CENT = Decimal("0.000001")


def available(user_id: str) -> str:
    return f"user:{user_id}:available"


def held(user_id: str) -> str:
    return f"user:{user_id}:held"


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Balance:
    available: Decimal
    held: Decimal


class Ledger:
    def __init__(self, db: Database) -> None:
        self._db = db

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        if not self._db.is_sqlite:
            async with self._db.session() as session:
                yield session
            return
        async with self._db.sqlite_writer(), self._db.session() as session:
            yield session

    async def _lock(
        self, session: AsyncSession, accounts: Mapping[str, str | None]
    ) -> dict[str, LedgerAccount]:
        """Create missing accounts, then lock all of them in id order (no deadlocks)."""
        insert = sqlite_insert if self._db.is_sqlite else pg_insert
        for account_id, user_id in accounts.items():
            await session.execute(
                insert(LedgerAccount)
                .values(id=account_id, user_id=user_id, balance=Decimal(0), updated_at=datetime.now(UTC))
                .on_conflict_do_nothing(index_elements=["id"])
            )
        rows = await session.scalars(
            select(LedgerAccount)
            .where(LedgerAccount.id.in_(sorted(accounts)))
            .order_by(LedgerAccount.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return {row.id: row for row in rows}

    async def _post(self, session: AsyncSession, tx: LedgerTransaction, legs: Mapping[str, Decimal]) -> None:
        if sum(legs.values(), Decimal(0)) != 0:
            raise AssertionError(f"unbalanced posting {dict(legs)}")  # a bug here, never user input
        owners = {a: (tx.user_id if a.startswith("user:") else None) for a in legs}
        accounts = await self._lock(session, owners)
        for account_id, amount in legs.items():
            account = accounts[account_id]
            if account_id.startswith("user:") and account.balance + amount < 0:
                raise InsufficientCredits(
                    f"not enough credits: {account.balance:.2f} available, {-amount:.2f} needed",
                    {"available": float(account.balance), "required": float(-amount)},
                )
        for account_id, amount in legs.items():
            accounts[account_id].balance += amount
            session.add(LedgerEntry(transaction_id=tx.id, account_id=account_id, amount=amount))

    async def balance(self, user_id: str) -> Balance:
        async with self._db.session() as session:
            rows = await session.execute(
                select(LedgerAccount.id, LedgerAccount.balance).where(
                    LedgerAccount.id.in_([available(user_id), held(user_id)])
                )
            )
            balances = {account: balance for account, balance in rows.all()}
        return Balance(balances.get(available(user_id), Decimal(0)), balances.get(held(user_id), Decimal(0)))

    async def payment(
        self,
        user_id: str,
        amount: Decimal,
        *,
        currency: str,
        gateway: str,
        provider_ref: str,
        status: str,
        idempotency_key: str,
        description: str,
        failure: str | None = None,
    ) -> LedgerTransaction:
        """Record a payment; a ``succeeded`` one credits the user at once, others wait for ``settle``.
        The same ``idempotency_key`` returns the first transaction instead of recording another, also when
        both are recorded at once (on PostgreSQL the second insert fails on the key and reads the first)."""
        _positive(amount)
        try:
            async with self._write() as session:
                existing = await session.scalar(_payment_by_key(user_id, idempotency_key))
                if existing is not None:
                    return existing
                tx = LedgerTransaction(
                    id=_id("txn"),
                    user_id=user_id,
                    kind="payment",
                    amount=amount,
                    currency=currency,
                    status=status,
                    description=description,
                    gateway=gateway,
                    provider_ref=provider_ref,
                    idempotency_key=idempotency_key,
                    failure=failure,
                )
                session.add(tx)
                await session.flush()
                if status == "succeeded":
                    await self._post(session, tx, {PAYMENTS: -amount, available(user_id): amount})
        except IntegrityError:
            async with self._db.session() as session:
                first = await session.scalar(_payment_by_key(user_id, idempotency_key))
            if first is None:
                raise
            return first
        return tx

    async def settle_payment(
        self, provider_ref: str, status: str, failure: str | None = None
    ) -> LedgerTransaction:
        """Apply a gateway's later verdict on a payment (a webhook): credits are added exactly once."""
        async with self._write() as session:
            tx = await session.scalar(
                select(LedgerTransaction)
                .where(LedgerTransaction.provider_ref == provider_ref, LedgerTransaction.kind == "payment")
                .with_for_update()
            )
            if tx is None:
                raise NotFound(f"no payment with reference {provider_ref!r}")
            if tx.status in ("succeeded", "failed") or status == tx.status:
                return tx
            tx.status = status
            tx.failure = failure
            if status == "succeeded":
                await self._post(session, tx, {PAYMENTS: -tx.amount, available(tx.user_id): tx.amount})
        return tx

    async def find_payment(self, provider_ref: str) -> LedgerTransaction | None:
        async with self._db.session() as session:
            return await session.scalar(
                select(LedgerTransaction).where(
                    LedgerTransaction.provider_ref == provider_ref, LedgerTransaction.kind == "payment"
                )
            )

    async def first_delivery(self, event_id: str) -> bool:
        """Remember a webhook event; False when it was seen before (gateways deliver more than once)."""
        try:
            async with self._db.session() as session:
                session.add(WebhookEventSeen(id=event_id))
        except IntegrityError:
            return False
        return True

    async def hold(self, user_id: str, amount: Decimal, reference: str, description: str) -> LedgerHold:
        """Set ``amount`` aside from the available balance (``INSUFFICIENT_CREDITS`` when it cannot)."""
        _positive(amount)
        async with self._write() as session:
            tx = LedgerTransaction(
                id=_id("txn"),
                user_id=user_id,
                kind="hold",
                amount=amount,
                status="succeeded",
                description=description,
                reference=reference,
            )
            session.add(tx)
            await session.flush()
            await self._post(session, tx, {available(user_id): -amount, held(user_id): amount})
            hold = LedgerHold(
                id=_id("hold"), user_id=user_id, amount=amount, status="open", reference=reference
            )
            session.add(hold)
        return hold

    async def settle_hold(self, hold_id: str, actual: Decimal, description: str) -> LedgerHold:
        """Charge ``actual`` (at most the held amount) and return the rest; settling twice does nothing."""
        if actual < 0:
            raise ValidationFailed("a charge cannot be negative")
        async with self._write() as session:
            hold = await session.get(LedgerHold, hold_id, with_for_update=True)
            if hold is None:
                raise NotFound(f"no hold {hold_id!r}")
            if hold.status != "open":
                return hold
            charge = min(actual.quantize(CENT), hold.amount)
            rest = hold.amount - charge
            for kind, amount, legs in (
                ("charge", charge, {held(hold.user_id): -charge, USAGE: charge}),
                ("release", rest, {held(hold.user_id): -rest, available(hold.user_id): rest}),
            ):
                if amount > 0:
                    tx = LedgerTransaction(
                        id=_id("txn"),
                        user_id=hold.user_id,
                        kind=kind,
                        amount=amount,
                        status="succeeded",
                        description=description,
                        reference=hold.reference,
                    )
                    session.add(tx)
                    await session.flush()
                    await self._post(session, tx, legs)
            hold.captured = charge
            hold.status = "settled"
            hold.settled_at = datetime.now(UTC)
        return hold

    async def open_hold(self, reference: str) -> LedgerHold | None:
        async with self._db.session() as session:
            return await session.scalar(
                select(LedgerHold).where(LedgerHold.reference == reference, LedgerHold.status == "open")
            )

    async def transactions(
        self, user_id: str, limit: int, offset: int
    ) -> tuple[Sequence[LedgerTransaction], int]:
        async with self._db.session() as session:
            total = await session.scalar(
                select(func.count())
                .select_from(LedgerTransaction)
                .where(LedgerTransaction.user_id == user_id)
            )
            rows = (
                await session.scalars(
                    select(LedgerTransaction)
                    .where(LedgerTransaction.user_id == user_id)
                    .order_by(LedgerTransaction.created_at.desc(), LedgerTransaction.id)
                    .limit(limit)
                    .offset(offset)
                )
            ).all()
        return rows, int(total or 0)


def _payment_by_key(user_id: str, idempotency_key: str) -> Select[LedgerTransaction]:
    return select(LedgerTransaction).where(
        LedgerTransaction.user_id == user_id, LedgerTransaction.idempotency_key == idempotency_key
    )


def _positive(amount: Decimal) -> None:
    if amount <= 0 or not amount.is_finite():
        raise ValidationFailed("amount must be positive")
