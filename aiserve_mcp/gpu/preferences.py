"""Storing each user's GPU preferences (saving again replaces them)."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from aiserve_mcp.gpu.tables import GpuPreference
from aiserve_mcp.storage.database import Database


class GpuPreferenceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, user_id: str) -> GpuPreference | None:
        async with self._db.session() as session:
            return await session.scalar(select(GpuPreference).where(GpuPreference.user_id == user_id))

    async def save(
        self,
        user_id: str,
        *,
        preferred_vendors: list[str],
        preferred_tiers: list[str],
        min_vram: int,
        max_price_per_hour: Decimal | None,
        priority: str,
    ) -> GpuPreference:
        values = {
            "preferred_vendors": preferred_vendors,
            "preferred_tiers": preferred_tiers,
            "min_vram": min_vram,
            "max_price_per_hour": max_price_per_hour,
            "priority": priority,
        }
        try:
            return await self._upsert(user_id, values)
        except IntegrityError:  # a concurrent first save inserted the row: update it instead
            return await self._upsert(user_id, values)

    async def _upsert(self, user_id: str, values: dict[str, object]) -> GpuPreference:
        async with self._db.session() as session:
            row = await session.scalar(
                select(GpuPreference).where(GpuPreference.user_id == user_id).with_for_update()
            )
            if row is None:
                row = GpuPreference(user_id=user_id)
                session.add(row)
            for name, value in values.items():
                setattr(row, name, value)
        return row
