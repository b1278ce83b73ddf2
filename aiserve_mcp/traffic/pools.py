"""Each user's load-balancing strategy per pool of instances (stored, so every server process agrees)."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from aiserve_mcp.storage.database import Database
from aiserve_mcp.traffic.tables import LbPool

DEFAULT_STRATEGY = "round_robin"


class PoolStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def strategy(self, user_id: str, pool: str) -> str:
        async with self._db.session() as session:
            row = await session.get(LbPool, (user_id, pool))
        return row.strategy if row is not None else DEFAULT_STRATEGY

    async def set_strategy(self, user_id: str, pool: str, strategy: str) -> None:
        try:
            await self._upsert(user_id, pool, strategy)
        except IntegrityError:  # a concurrent first save inserted the row: update it instead
            await self._upsert(user_id, pool, strategy)

    async def _upsert(self, user_id: str, pool: str, strategy: str) -> None:
        async with self._db.session() as session:
            row = await session.get(LbPool, (user_id, pool), with_for_update=True)
            if row is None:
                session.add(LbPool(user_id=user_id, name=pool, strategy=strategy))
            else:
                row.strategy = strategy
