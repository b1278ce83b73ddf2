"""The async engine and session factory for SQLite (default) or PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from aiserve_mcp.core.errors import NotFound


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # The busy timeout first: switching a new file to WAL takes a lock that another process starting on
    # the same fresh database may hold for a moment.
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


RowT = TypeVar("RowT")
_WRITERS: dict[tuple[str, int], asyncio.Lock] = {}


class Database:
    """Owns the engine. ``session()`` yields a session whose transaction commits on success."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        """``timeout_s`` bounds how long a request waits for a PostgreSQL connection, from the pool or a
        new one, so that an outage answers quickly instead of holding requests."""
        parsed = make_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = (
            {}
            if self.is_sqlite
            else {"pool_pre_ping": True, "pool_timeout": timeout_s, "connect_args": {"timeout": timeout_s}}
        )
        self.engine: AsyncEngine = create_async_engine(url, **options)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session, session.begin():
            yield session

    def sqlite_writer(self) -> asyncio.Lock:
        """SQLite has one writer at a time: code that reads then writes money takes this lock (one per
        database file and event loop in this process) so that its transactions queue here instead of
        failing with "database is locked"; other processes still wait on SQLite's own busy timeout."""
        return _WRITERS.setdefault((self.url, id(asyncio.get_running_loop())), asyncio.Lock())

    async def update_row(
        self, table: type[RowT], key: object, values: Mapping[str, object], missing: str
    ) -> RowT:
        """Set ``values`` on the row of ``table`` with primary key ``key`` (locked while it changes);
        ``NotFound(missing)`` when there is none."""
        async with self.session() as session:
            row = await session.get(table, key, with_for_update=True)
            if row is None:
                raise NotFound(missing)
            for name, value in values.items():
                setattr(row, name, value)
        return row

    async def ping(self) -> float:
        """Run ``SELECT 1``; return the round trip in milliseconds (raises when the database is down)."""
        started = time.perf_counter()
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return (time.perf_counter() - started) * 1000

    async def dispose(self) -> None:
        await self.engine.dispose()
