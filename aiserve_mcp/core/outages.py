"""Telling an outage of a store the server depends on (PostgreSQL, SQLite, Redis) from a bug.

An outage answers 503 ``SERVICE_UNAVAILABLE`` with ``Retry-After``: the request may succeed once the store
is back, and nothing it would have changed was changed. Anything else unexpected is a bug (500).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import TracebackType

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from aiserve_mcp.core.errors import AiserveError, InternalError, ServiceUnavailable

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
_DATABASE_MODULES = ("asyncpg", "sqlalchemy", "aiosqlite", "sqlite3")
_REDIS_MODULES = ("redis",)
_DATABASE_ERRORS = (
    PoolTimeout,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.ConnectionFailureError,
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _raised_in(traceback: TracebackType | None, prefixes: tuple[str, ...]) -> bool:
    while traceback is not None:
        module = str(traceback.tb_frame.f_globals.get("__name__", ""))
        if module.split(".", 1)[0] in prefixes:
            return True
        traceback = traceback.tb_next
    return False


def _store_of(error: BaseException) -> str | None:
    if isinstance(error, RedisConnectionError | RedisTimeoutError):
        return "Redis"
    if isinstance(error, _DATABASE_ERRORS) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    ):
        return "the database"
    if isinstance(error, ConnectionError | TimeoutError):  # the socket's own error: whose socket was it?
        if _raised_in(error.__traceback__, _DATABASE_MODULES):
            return "the database"
        if _raised_in(error.__traceback__, _REDIS_MODULES):
            return "Redis"
    return None


def outage_of(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 for ``exc`` when it (or an exception it was raised from) says that the database or Redis
    cannot be reached; None when it is something else."""
    for error in _chain(exc):
        store = _store_of(error)
        if store is not None:
            return ServiceUnavailable(
                f"{store} is unavailable; nothing was changed, retry in a few seconds",
                retry_after_s=RETRY_AFTER_S,
            )
    return None


def unexpected(exc: Exception, where: str) -> AiserveError:
    """What a caller sees for an exception that is not an ``AiserveError``: the outage's 503 (logged in
    one line), or a 500 that carries no internals (logged with its traceback)."""
    outage = outage_of(exc)
    if outage is not None:
        log.warning("%s: %s (%s: %s)", where, outage.message, type(exc).__name__, exc)
        return outage
    log.error("%s failed", where, exc_info=exc)
    return InternalError("internal error; the failure was logged on the server")
