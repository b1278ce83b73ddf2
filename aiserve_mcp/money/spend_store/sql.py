"""The spend store in the SQL database (SQLite or PostgreSQL)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, and_, case, cast, delete, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from aiserve_mcp.money.spend_store.base import Scoped, SpendDecision, WindowLimit, WindowTotal
from aiserve_mcp.money.spend_store.rules import (
    ALL_WINDOWS,
    Counted,
    check_reset,
    check_spend,
    check_windows,
    decide,
    usd,
    violates,
    window_total,
)
from aiserve_mcp.money.tables import SpendEvent, SpendReset, SpendScope
from aiserve_mcp.storage.database import Database


def _scoped_key(first: str, scope: str, key: str | None) -> str | None:
    """The key stored on a scope's event: the caller's key on the first scope's, and on the others a
    digest tied to the first scope (keys belong to the first scope; other scopes may see the same text)."""
    if key is None or scope == first:
        return key
    return "~" + hashlib.sha256(f"{first}\x00{key}".encode()).hexdigest()[:40]


class SqlSpendStore:
    """Spends in the SQL database (SQLite or PostgreSQL).

    PostgreSQL: one transaction inserts each scope's :class:`SpendScope` row if missing and locks it with
    ``SELECT ... FOR UPDATE``, scope by scope in sorted order (so two spends never deadlock), then sums,
    decides and records. SQLite has one writer: spends of this store take turns on an ``asyncio.Lock``, and
    each transaction's first statement is a write (the scope upsert), so it holds the write lock from the
    start and another process's spend waits (``busy_timeout``) instead of reading a stale total."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def spend(
        self,
        scopes: Sequence[Scoped],
        amount: Decimal,
        *,
        record: bool,
        idempotency_key: str | None,
        now: float,
    ) -> SpendDecision:
        amount_micros = check_spend(scopes, amount, idempotency_key)
        now = float(now)
        if not self._db.is_sqlite:
            return await self._spend(scopes, amount_micros, record, idempotency_key, now)
        async with self._db.sqlite_writer():
            return await self._spend(scopes, amount_micros, record, idempotency_key, now)

    async def _spend(
        self,
        scopes: Sequence[Scoped],
        amount_micros: int,
        record: bool,
        idempotency_key: str | None,
        now: float,
    ) -> SpendDecision:
        first = scopes[0][0]
        async with self._db.session() as session:
            for scope in sorted(scope for scope, _ in scopes):
                await self._lock_scope(session, scope)
            duplicate = False
            if idempotency_key is not None:
                used = await session.scalar(
                    select(SpendEvent.id)
                    .where(SpendEvent.scope == first, SpendEvent.idempotency_key == idempotency_key)
                    .limit(1)
                )
                duplicate = used is not None
            counted = [await self._counted(session, scope, windows, now) for scope, windows in scopes]
            allowed = not duplicate and not any(
                violates(window, before, amount_micros)
                for (_, windows), scope_counted in zip(scopes, counted, strict=True)
                for window, before in zip(windows, scope_counted, strict=True)
            )
            recorded = allowed and record
            if recorded:
                amount = usd(amount_micros)
                session.add_all(
                    SpendEvent(
                        scope=scope,
                        amount=amount,
                        at=now,
                        idempotency_key=_scoped_key(first, scope, idempotency_key),
                    )
                    for scope, _ in scopes
                )
        return decide(scopes, counted, amount_micros, recorded=recorded, duplicate=duplicate, now=now)

    async def _lock_scope(self, session: AsyncSession, scope: str) -> None:
        if self._db.is_sqlite:
            await session.execute(sqlite_insert(SpendScope).values(scope=scope).on_conflict_do_nothing())
            return
        await session.execute(pg_insert(SpendScope).values(scope=scope).on_conflict_do_nothing())
        await session.execute(select(SpendScope.scope).where(SpendScope.scope == scope).with_for_update())

    async def _counted(
        self, session: AsyncSession, scope: str, windows: Sequence[WindowLimit], now: float
    ) -> list[Counted]:
        if not windows:
            return []
        rows = await session.execute(
            select(SpendReset.window, SpendReset.reset_at).where(SpendReset.scope == scope)
        )
        resets: dict[str, float] = {row.window: row.reset_at for row in rows}
        micros = cast(func.round(SpendEvent.amount * literal_column("1000000")), BigInteger)
        columns: list[ColumnElement[Any]] = []
        for window in windows:
            condition = SpendEvent.at > now - window.seconds
            reset_at = max(
                (r for r in (resets.get(window.name), resets.get(ALL_WINDOWS)) if r is not None), default=None
            )
            if reset_at is not None:
                condition = and_(condition, SpendEvent.at >= reset_at)
            columns.append(func.sum(case((condition, micros), else_=literal_column("0"))))
            columns.append(func.min(case((condition, SpendEvent.at), else_=None)))
        lowest = min(now - window.seconds for window in windows)
        row = (
            await session.execute(select(*columns).where(SpendEvent.scope == scope, SpendEvent.at > lowest))
        ).one()
        return [
            Counted(int(row[2 * i] or 0), None if row[2 * i + 1] is None else float(row[2 * i + 1]))
            for i in range(len(windows))
        ]

    async def totals(self, scope: str, windows: Sequence[WindowLimit], now: float) -> list[WindowTotal]:
        check_windows(scope, windows)
        now = float(now)
        async with self._db.session() as session:
            counted = await self._counted(session, scope, windows, now)
        return [
            window_total(scope, w, c.micros, c.oldest, now) for w, c in zip(windows, counted, strict=True)
        ]

    async def cancel(self, scopes: Sequence[str], idempotency_key: str) -> None:
        if not scopes:
            return
        first = scopes[0]
        async with self._db.session() as session:
            for scope in scopes:
                await session.execute(
                    delete(SpendEvent).where(
                        SpendEvent.scope == scope,
                        SpendEvent.idempotency_key == _scoped_key(first, scope, idempotency_key),
                    )
                )

    async def reset(self, scope: str, window: str | None, now: float) -> None:
        name = check_reset(scope, window)
        now = float(now)
        if self._db.is_sqlite:
            lite = sqlite_insert(SpendReset).values(scope=scope, window=name, reset_at=now)
            lite = lite.on_conflict_do_update(
                index_elements=[SpendReset.scope, SpendReset.window],
                set_={"reset_at": func.max(SpendReset.reset_at, lite.excluded.reset_at)},
            )
            async with self._db.sqlite_writer(), self._db.session() as session:
                await session.execute(lite)
            return
        pg = pg_insert(SpendReset).values(scope=scope, window=name, reset_at=now)
        pg = pg.on_conflict_do_update(
            index_elements=[SpendReset.scope, SpendReset.window],
            set_={"reset_at": func.greatest(SpendReset.reset_at, pg.excluded.reset_at)},
        )
        async with self._db.session() as session:
            await session.execute(pg)
