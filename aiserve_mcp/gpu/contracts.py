"""Persisted GPU contracts: every instance a user rents, owned by that user alone.

Every change of a contract's status, endpoint or expiry is stored here and only here, and announced to
its owner once stored: an ``instance.status`` event on the ``instances`` stream.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update

from aiserve_mcp.core.errors import NotFound
from aiserve_mcp.core.events import Event, EventBus
from aiserve_mcp.gpu.tables import GpuContract
from aiserve_mcp.storage.database import Database

ACTIVE = ("provisioning", "running")


def new_contract_id() -> str:
    return f"ctr_{secrets.token_hex(12)}"


ANNOUNCED = ("status", "endpoint", "expires_at")  # the changes an owner is told about


def status_event(contract: GpuContract, previous_status: str | None) -> Event:
    """``instance.status`` for the owner of ``contract``: its state now and the status it had before
    (None when it was just rented; the same status with a later ``expires_at`` when it was renewed)."""
    data: dict[str, Any] = {
        "contract_id": contract.id,
        "provider": contract.provider,
        "instance_id": contract.instance_id,
        "status": contract.status,
        "previous_status": previous_status,
        "expires_at": contract.expires_at.isoformat(),
    }
    if contract.endpoint is not None:
        data["endpoint"] = contract.endpoint
    if contract.status_message is not None:
        data["message"] = contract.status_message
    return Event("instances", "instance.status", data, contract.user_id)


class ContractStore:
    def __init__(self, db: Database, events: EventBus) -> None:
        self._db = db
        self._events = events

    async def add(self, contract: GpuContract) -> GpuContract:
        async with self._db.session() as session:
            session.add(contract)
        await self._events.publish(status_event(contract, None))
        return contract

    async def update(self, contract_id: str, **values: Any) -> GpuContract:
        """Set ``values`` on a contract (locked while it changes); tell its owner when its status,
        endpoint or expiry changed."""
        async with self._db.session() as session:
            row = await session.get(GpuContract, contract_id, with_for_update=True)
            if row is None:
                raise NotFound(f"contract '{contract_id}' not found")
            before = {name: getattr(row, name) for name in ANNOUNCED}
            for name, value in values.items():
                setattr(row, name, value)
        if any(getattr(row, name) != old for name, old in before.items()):
            await self._events.publish(status_event(row, before["status"]))
        return row

    async def extend(self, contract: GpuContract, expires_at: datetime) -> GpuContract | None:
        """Move an active contract's expiry from the one ``contract`` was read with to ``expires_at``, in
        one conditional update, and tell its owner; None (nothing changed) when the stored expiry or
        status is no longer the one read (another process renewed or ended it meanwhile)."""
        async with self._db.session() as session:
            row = await session.scalar(
                update(GpuContract)
                .where(
                    GpuContract.id == contract.id,
                    GpuContract.expires_at == contract.expires_at,
                    GpuContract.status.in_(ACTIVE),
                )
                .values(expires_at=expires_at)
                .returning(GpuContract)
            )
        if row is not None:
            await self._events.publish(status_event(row, row.status))
        return row

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

    async def active(self, provider: str) -> Sequence[GpuContract]:
        """Contracts on ``provider`` provisioning or running now, across all users, oldest first."""
        async with self._db.session() as session:
            return (
                await session.scalars(
                    select(GpuContract)
                    .where(GpuContract.provider == provider, GpuContract.status.in_(ACTIVE))
                    .order_by(GpuContract.created_at)
                )
            ).all()

    async def due(self, now: datetime) -> Sequence[GpuContract]:
        """Active contracts whose rented time is over."""
        async with self._db.session() as session:
            return (
                await session.scalars(
                    select(GpuContract).where(GpuContract.status.in_(ACTIVE), GpuContract.expires_at <= now)
                )
            ).all()
