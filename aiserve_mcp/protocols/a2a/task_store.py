"""A2A tasks in our database: the a2a-sdk's ``TaskStore`` over the ``a2a_tasks`` table.

Every task belongs to the user who sent its first message: the owner is the authenticated user of the
SDK's ``ServerCallContext`` (``user.user_name`` is our user id). A task of another user, or any task for
an anonymous context, reads as absent, so GetTask, ListTasks and CancelTask behave as "not found". The
task itself is stored as the SDK's protobuf JSON; ``state`` and ``context_id`` are copied out of it for
filtering. Listing is newest change first, with the SDK's cursor page tokens.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.tasks import TaskStore
from a2a.types.a2a_pb2 import ListTasksRequest, ListTasksResponse, Task, TaskState
from a2a.utils.constants import DEFAULT_LIST_TASKS_PAGE_SIZE
from a2a.utils.errors import InvalidParamsError
from a2a.utils.task import ListTasksCursor, decode_list_tasks_cursor, encode_list_tasks_cursor
from google.protobuf.json_format import MessageToDict, ParseDict  # type: ignore[import-untyped]
from sqlalchemy import JSON, ColumnElement, ForeignKey, String, Text, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from aiserve_mcp.storage.database import Database
from aiserve_mcp.storage.tables import Base, UtcDateTime, utcnow

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)  # page tokens carry nanoseconds; the database keeps microseconds


class A2aTaskRow(Base):
    """One A2A task of one user."""

    __tablename__ = "a2a_tasks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    context_id: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(32))
    task: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


def _owner(context: ServerCallContext) -> str | None:
    """The user id the call acts for; ``None`` for an anonymous call, which owns nothing."""
    user = context.user
    return user.user_name if user.is_authenticated and user.user_name else None


def _to_ns(moment: datetime) -> int:
    return (moment - EPOCH) // MICROSECOND * 1000


def _from_ns(ns: int) -> datetime:
    try:
        return EPOCH + ns // 1000 * MICROSECOND
    except OverflowError:
        raise InvalidParamsError("invalid page token") from None


def _task_of(row: A2aTaskRow) -> Task:
    task = Task()
    ParseDict(row.task, task, ignore_unknown_fields=True)
    return task


class DatabaseA2aTaskStore(TaskStore):
    """The SDK's task store interface on our async SQLAlchemy ``Database`` (SQLite or PostgreSQL)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _writer(self) -> AbstractAsyncContextManager[object]:
        return self._db.sqlite_writer() if self._db.is_sqlite else nullcontext()

    async def save(self, task: Task, context: ServerCallContext) -> None:
        """Insert or replace ``task`` for the caller. A task id held by another user is never taken over."""
        owner = _owner(context)
        if owner is None:
            raise PermissionError("an anonymous call cannot store A2A tasks")
        now = utcnow()
        values = {
            "context_id": task.context_id,
            "state": TaskState.Name(task.status.state),
            "task": MessageToDict(task),
            "updated_at": now,
        }
        async with self._writer(), self._db.session() as session:
            changed = await session.execute(
                update(A2aTaskRow).where(A2aTaskRow.id == task.id, A2aTaskRow.user_id == owner).values(values)
            )
            if getattr(changed, "rowcount", 0) == 0:
                session.add(A2aTaskRow(id=task.id, user_id=owner, created_at=now, **values))
                try:
                    await session.flush()
                except IntegrityError:
                    raise PermissionError(f"task {task.id} belongs to another user") from None

    async def get(self, task_id: str, context: ServerCallContext) -> Task | None:
        owner = _owner(context)
        if owner is None:
            return None
        async with self._db.session() as session:
            row = await session.scalar(
                select(A2aTaskRow).where(A2aTaskRow.id == task_id, A2aTaskRow.user_id == owner)
            )
        return None if row is None else _task_of(row)

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        """The caller's tasks, most recently changed first, filtered by context, state and change time."""
        page_size = params.page_size or DEFAULT_LIST_TASKS_PAGE_SIZE
        owner = _owner(context)
        if owner is None:
            return ListTasksResponse(tasks=[], total_size=0, page_size=page_size)
        where: list[ColumnElement[bool]] = [A2aTaskRow.user_id == owner]
        if params.context_id:
            where.append(A2aTaskRow.context_id == params.context_id)
        if params.status:
            where.append(A2aTaskRow.state == TaskState.Name(params.status))
        if params.HasField("status_timestamp_after"):
            after = params.status_timestamp_after.ToDatetime(tzinfo=UTC)
            where.append(A2aTaskRow.updated_at >= after)
        async with self._db.session() as session:
            total = await session.scalar(select(func.count()).select_from(A2aTaskRow).where(*where))
            query = select(A2aTaskRow).where(*where)
            if params.page_token:
                query = query.where(self._after(params.page_token))
            rows = list(
                await session.scalars(
                    query.order_by(A2aTaskRow.updated_at.desc(), A2aTaskRow.id.desc()).limit(page_size + 1)
                )
            )
        page = rows[:page_size]
        next_token = (
            encode_list_tasks_cursor(ListTasksCursor(_to_ns(page[-1].updated_at), page[-1].id))
            if len(rows) > page_size
            else None
        )
        return ListTasksResponse(
            tasks=[_task_of(r) for r in page],
            total_size=total or 0,
            page_size=page_size,
            next_page_token=next_token,
        )

    @staticmethod
    def _after(page_token: str) -> ColumnElement[bool]:
        """Rows strictly after the page token's position in (updated_at, id) descending order."""
        cursor = decode_list_tasks_cursor(page_token)
        if cursor is None or cursor.timestamp_ns is None:
            raise InvalidParamsError("invalid page token")
        moment = _from_ns(cursor.timestamp_ns)
        return or_(
            A2aTaskRow.updated_at < moment,
            and_(A2aTaskRow.updated_at == moment, A2aTaskRow.id < cursor.task_id),
        )

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        owner = _owner(context)
        if owner is None:
            return
        async with self._writer(), self._db.session() as session:
            await session.execute(
                delete(A2aTaskRow).where(A2aTaskRow.id == task_id, A2aTaskRow.user_id == owner)
            )
