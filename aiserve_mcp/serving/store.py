"""Model files and records: streaming uploads to disk under quota, listing, deleting.

Files live in ``<data dir>/models/<user id>/<model id>``: the name a user gave is never part of a path.
An upload is written to a temporary file in that directory while its size is counted, then checked
(format from its bytes) and moved into place; a refused upload leaves nothing behind. Quotas are counted
from the database, so every server process sees the same figures.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import func, select

from aiserve_mcp.core.errors import NotFound, PayloadTooLarge, QuotaExceeded
from aiserve_mcp.core.events import Event, EventBus
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.core.ttl_cache import TtlCache
from aiserve_mcp.serving.tables import ModelUpload, ServedModel
from aiserve_mcp.storage.database import Database


@dataclass(frozen=True)
class Quota:
    used_bytes: int
    limit_bytes: int
    max_file_bytes: int
    uploads_last_hour: int
    hourly_limit: int
    uploads_last_day: int
    daily_limit: int


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size_bytes: int
    sha256: str


class ModelStore:
    def __init__(self, db: Database, settings: Settings, events: EventBus) -> None:
        self._db = db
        self._events = events
        # Model records read by id, reused for a moment (predictions read one per request); changes made
        # by this process drop them at once, those of another process show within the TTL.
        self._rows: TtlCache[str, ServedModel | None] = TtlCache(settings.read_cache_ttl_s)
        self.root = settings.data_dir / "models"
        self._quota_bytes = settings.model_quota_bytes
        self._max_file = settings.model_max_file_bytes
        self._per_hour = settings.model_uploads_per_hour
        self._per_day = settings.model_uploads_per_day

    def path_of(self, model: ServedModel) -> Path:
        return self.root / model.user_id / model.id

    async def quota(self, user_id: str) -> Quota:
        now = datetime.now(UTC)
        async with self._db.session() as session:
            used = await session.scalar(
                select(func.coalesce(func.sum(ServedModel.size_bytes), 0)).where(
                    ServedModel.user_id == user_id
                )
            )
            counts = []
            for since in (now - timedelta(hours=1), now - timedelta(days=1)):
                counts.append(
                    await session.scalar(
                        select(func.count()).where(
                            ModelUpload.user_id == user_id, ModelUpload.created_at > since
                        )
                    )
                )
        return Quota(
            int(used or 0),
            self._quota_bytes,
            self._max_file,
            int(counts[0] or 0),
            self._per_hour,
            int(counts[1] or 0),
            self._per_day,
        )

    async def admit(self, user_id: str) -> Quota:
        """Refuse (429 ``QUOTA_EXCEEDED``) an upload over the hourly or daily rate or with no room left."""
        quota = await self.quota(user_id)
        if quota.uploads_last_hour >= quota.hourly_limit or quota.uploads_last_day >= quota.daily_limit:
            raise QuotaExceeded(
                f"upload rate reached ({quota.uploads_last_hour}/{quota.hourly_limit} this hour, "
                f"{quota.uploads_last_day}/{quota.daily_limit} today)"
            )
        if quota.used_bytes >= quota.limit_bytes:
            raise QuotaExceeded(f"model storage is full ({quota.used_bytes} of {quota.limit_bytes} bytes)")
        return quota

    async def receive(self, user_id: str, chunks: AsyncIterator[bytes], room: int) -> StoredFile:
        """Stream ``chunks`` into a temporary file of the user's directory, refusing it past the per-file
        limit (413) or the room left in the quota (429); returns the file with its size and digest."""
        limit = min(self._max_file, room)
        directory = self.root / user_id
        await anyio.to_thread.run_sync(lambda: directory.mkdir(parents=True, exist_ok=True))
        fd, name = await anyio.to_thread.run_sync(lambda: tempfile.mkstemp(dir=directory, suffix=".upload"))
        path = Path(name)
        digest, size = hashlib.sha256(), 0
        try:
            async with await anyio.open_file(fd, "wb", closefd=True) as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self._max_file:
                        raise PayloadTooLarge(f"the model file is larger than {self._max_file} bytes")
                    if size > limit:
                        raise QuotaExceeded("the model file does not fit in your remaining storage quota")
                    digest.update(chunk)
                    await out.write(chunk)
        except BaseException:
            await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
            raise
        return StoredFile(path, size, digest.hexdigest())

    async def add(self, user_id: str, upload: StoredFile, **columns: Any) -> ServedModel:
        """Record ``user_id``'s model of ``upload`` (its size and digest) with ``columns`` (name, format,
        status, serving settings: the other columns of a model) and move its file into place."""
        model = ServedModel(user_id=user_id, size_bytes=upload.size_bytes, sha256=upload.sha256, **columns)
        async with self._db.session() as session:
            session.add(model)
            session.add(ModelUpload(user_id=model.user_id, size_bytes=upload.size_bytes))
        await anyio.to_thread.run_sync(os.replace, upload.path, self.path_of(model))
        return model

    async def owned(self, user_id: str, model_id: str) -> ServedModel:
        row, _ = await self._rows.get(model_id, lambda: self._read(model_id))
        if row is None or row.user_id != user_id:
            raise NotFound(f"model '{model_id}' not found")
        return row

    async def by_name(self, user_id: str, name: str) -> ServedModel:
        """The caller's model with this id or name (the newest when several share the name)."""
        async with self._db.session() as session:
            row = await session.scalar(
                select(ServedModel)
                .where(ServedModel.user_id == user_id, (ServedModel.id == name) | (ServedModel.name == name))
                .order_by(ServedModel.created_at.desc())
                .limit(1)
            )
        if row is None:
            raise NotFound(f"model '{name}' not found")
        return row

    async def list_for(self, user_id: str) -> Sequence[ServedModel]:
        async with self._db.session() as session:
            return (
                await session.scalars(
                    select(ServedModel)
                    .where(ServedModel.user_id == user_id)
                    .order_by(ServedModel.created_at.desc())
                )
            ).all()

    async def _read(self, model_id: str) -> ServedModel | None:
        async with self._db.session() as session:
            return await session.get(ServedModel, model_id)

    async def update(self, model_id: str, **values: object) -> ServedModel:
        """Change a model's record; a status change is published on the ``models`` event stream."""
        try:
            row = await self._db.update_row(ServedModel, model_id, values, f"model '{model_id}' not found")
        finally:
            self._rows.discard(model_id)
        if "status" in values:
            data = {"model_id": row.id, "status": row.status, "reason": row.status_reason}
            await self._events.publish(Event("models", "model.status", data, row.user_id))
        return row

    async def delete(self, model: ServedModel) -> None:
        async with self._db.session() as session:
            row = await session.get(ServedModel, model.id)
            if row is not None:
                await session.delete(row)
        self._rows.discard(model.id)
        await anyio.to_thread.run_sync(lambda: self.path_of(model).unlink(missing_ok=True))
