"""Persisted GPU contracts: every instance a user rents, owned by that user alone."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select

from aiserve_mcp.errors import NotFound
from aiserve_mcp.storage.database import Database
from aiserve_mcp.storage.models import GpuContract

ACTIVE = ("provisioning", "running")


def new_contract_id() -> str:
    return f"ctr_{secrets.token_hex(12)}"


class ContractStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, contract: GpuContract) -> GpuContract:
        async with self._db.session() as session:
            session.add(contract)
        return contract

    async def update(self, contract_id: str, **values: Any) -> GpuContract:
        return await self._db.update_row(
            GpuContract, contract_id, values, f"contract '{contract_id}' not found"
        )

    async def owned(self, user_id: str, contract_id: str) -> GpuContract:
        """The caller's contract; ``NotFound`` also when it belongs to someone else."""
        async with self._db.session() as session:
            row = await session.get(GpuContract, contract_id)
        if row is None or row.user_id != user_id:
            raise NotFound(f"contract '{contract_id}' not found")
        return row

    async def find(self, user_id: str, provider: str, ref: str) -> GpuContract:
        """The caller's contract on ``provider`` whose contract id or provider instance id is ``ref``
        (an active one first, then the newest)."""
        async with self._db.session() as session:
            rows = (
                await session.scalars(
                    select(GpuContract)
                    .where(
                        GpuContract.user_id == user_id,
                        GpuContract.provider == provider,
                        or_(GpuContract.id == ref, GpuContract.instance_id == ref),
                    )
                    .order_by(GpuContract.created_at.desc())
                )
            ).all()
        if not rows:
            raise NotFound(f"no instance '{ref}' on {provider} belongs to you")
        return next((r for r in rows if r.status in ACTIVE), rows[0])

    async def list_for(self, user_id: str, active_only: bool) -> Sequence[GpuContract]:
        query = select(GpuContract).where(GpuContract.user_id == user_id)
        if active_only:
            query = query.where(GpuContract.status.in_(ACTIVE))
        async with self._db.session() as session:
            return (await session.scalars(query.order_by(GpuContract.created_at.desc()))).all()

    async def count_active(self) -> int:
        """Contracts provisioning or running now, across all users."""
        async with self._db.session() as session:
            count = await session.scalar(
                select(func.count()).select_from(GpuContract).where(GpuContract.status.in_(ACTIVE))
            )
        return int(count or 0)

    async def due(self, now: datetime) -> Sequence[GpuContract]:
        """Active contracts whose rented time is over."""
        async with self._db.session() as session:
            return (
                await session.scalars(
                    select(GpuContract).where(GpuContract.status.in_(ACTIVE), GpuContract.expires_at <= now)
                )
            ).all()
