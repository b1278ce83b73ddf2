"""Spending guardrails' store: an atomic check-and-record of a spend against rolling windows of every scope.

A scope (``user:<id>``, ``key:<api key id>``) has windows such as ``hourly`` (3600 s) or ``daily`` (86400 s),
each with a USD limit. Time is the caller's ``now`` in epoch seconds (pass ``time.time()``); spends are
stamped with it.

Rolling-window semantics, identical in :class:`SqlSpendStore` and :class:`RedisSpendStore`:

* A spend recorded at ``at`` counts in a window of ``seconds`` at time ``now`` while ``at > now - seconds``:
  it counts from ``at`` up to, but not at, ``at + seconds`` (a spend at ``t`` has left a 3600 s window at
  exactly ``t + 3600``).
* After ``reset(scope, window, r)`` a spend counts in that window only when also ``at >= r``: spends made
  before ``r`` stop counting, a spend at ``r`` itself still counts. ``reset(scope, None, r)`` does this for
  every window of the scope, named or not. Resets only move forward; recorded spends are never deleted by it.
* ``spent`` of a window is the sum of the amounts that count in it; ``resets_in_s`` is the whole number of
  seconds (rounded up) until the oldest of them leaves the window, 0 when none counts.
* ``spend`` is one atomic step over every window of every scope: when ``spent + amount > limit`` for any
  window nothing is recorded anywhere; otherwise, when ``record``, the amount is recorded once per scope at
  ``now``. ``spent + amount == limit`` is allowed.

Amounts are Decimals rounded up to whole micro-dollars (6 decimal places), at most ``MAX_AMOUNT``. An
idempotency key belongs to the first scope of a call: a spend whose key was already recorded for that scope
records nothing and is answered ``duplicate=True``, ``allowed=True``. The SQL store remembers keys for ever;
the Redis store for the longest window of the call or one day, whichever is longer.

Pass the same windows for a scope on every call: the Redis store keeps a scope's spends for the longest
window it has been asked about (at least one day), and its keys expire after that long without a write.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Protocol

from redis.asyncio import Redis
from sqlalchemy import BigInteger, ColumnElement, and_, case, cast, delete, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from aiserve_mcp.core.errors import ValidationFailed
from aiserve_mcp.money.tables import SpendEvent, SpendReset, SpendScope
from aiserve_mcp.storage.database import Database

MICRO = Decimal("0.000001")
MAX_AMOUNT = Decimal(1_000_000_000)
MAX_SCOPE_LEN = 80
MAX_WINDOW_NAME_LEN = 40
MAX_IDEMPOTENCY_KEY_LEN = 200
ALL_WINDOWS = "*"
MIN_RETENTION_S = 86_400
# Limits above this many micro-dollars are treated as this one in Redis (Lua numbers are doubles).
_MAX_LIMIT_MICROS = 2**53


@dataclass(frozen=True)
class WindowLimit:
    """A rolling window of ``seconds`` (> 0) in which at most ``limit`` USD (>= 0) may be spent."""

    name: str
    seconds: int
    limit: Decimal


@dataclass(frozen=True)
class WindowTotal:
    """One window of one scope: ``spent`` (see :class:`SpendDecision`) against ``limit``."""

    scope: str
    name: str
    seconds: int
    limit: Decimal
    spent: Decimal
    resets_in_s: int


@dataclass(frozen=True)
class SpendDecision:
    """The outcome of :meth:`SpendStore.spend`.

    ``totals`` lists every window of every scope, in the order given, with ``spent`` including the amount when
    it was recorded and excluding it otherwise. ``violations`` lists the windows where the spend did not fit,
    with ``spent`` = spent before + amount (105 spent of 100)."""

    allowed: bool
    totals: list[WindowTotal]
    violations: list[WindowTotal]
    duplicate: bool


Scoped = tuple[str, Sequence[WindowLimit]]


class SpendStore(Protocol):
    async def spend(
        self,
        scopes: Sequence[Scoped],
        amount: Decimal,
        *,
        record: bool,
        idempotency_key: str | None,
        now: float,
    ) -> SpendDecision:
        """ONE atomic step over every window of every scope: each window's spent = sum of amounts recorded for
        that scope that count in it (see the module docstring); if spent + amount > limit for any window,
        nothing is recorded (allowed False, violations listed); otherwise, when ``record``, the amount is
        recorded once per scope at ``now``. With ``idempotency_key`` already recorded for scopes[0], nothing
        is recorded and duplicate=True. amount must be > 0 (else ValidationFailed). record=False is a pure
        check."""
        ...

    async def totals(self, scope: str, windows: Sequence[WindowLimit], now: float) -> list[WindowTotal]:
        """What counts now in each of ``windows`` of ``scope``."""
        ...

    async def cancel(self, scopes: Sequence[str], idempotency_key: str) -> None:
        """Take back the spend recorded under ``idempotency_key`` in every one of ``scopes`` (an action
        that did not happen); the key may then be used again. Nothing happens when there is none."""
        ...

    async def reset(self, scope: str, window: str | None, now: float) -> None:
        """Stop counting spends made before ``now`` in the named window (or in every window when None); the
        history is kept (events are not deleted)."""
        ...


@dataclass(frozen=True)
class _Counted:
    """What counts in one window before this spend: the sum in micro-dollars and the oldest spend's time."""

    micros: int
    oldest: float | None


def _micros(amount: Decimal) -> int:
    return int(amount.quantize(MICRO, rounding=ROUND_CEILING).scaleb(6))


def _usd(micros: int) -> Decimal:
    return (Decimal(micros) * MICRO).quantize(MICRO)


def _check_scope(scope: str) -> None:
    if not isinstance(scope, str) or not 0 < len(scope) <= MAX_SCOPE_LEN:
        raise ValidationFailed(f"a spending scope is 1 to {MAX_SCOPE_LEN} characters", {"scope": scope})


def _check_windows(scope: str, windows: Sequence[WindowLimit]) -> None:
    _check_scope(scope)
    names: set[str] = set()
    for window in windows:
        if not 0 < len(window.name) <= MAX_WINDOW_NAME_LEN or window.name == ALL_WINDOWS:
            raise ValidationFailed(
                f"a window name is 1 to {MAX_WINDOW_NAME_LEN} characters and not {ALL_WINDOWS!r}",
                {"scope": scope, "window": window.name},
            )
        if window.name in names:
            raise ValidationFailed("window names repeat", {"scope": scope, "window": window.name})
        names.add(window.name)
        if isinstance(window.seconds, bool) or not isinstance(window.seconds, int) or window.seconds <= 0:
            raise ValidationFailed(
                "a window lasts a whole number of seconds > 0", {"scope": scope, "window": window.name}
            )
        if not isinstance(window.limit, Decimal) or not window.limit.is_finite() or window.limit < 0:
            raise ValidationFailed(
                "a window limit is a finite Decimal >= 0", {"scope": scope, "window": window.name}
            )


def _check_spend(scopes: Sequence[Scoped], amount: Decimal, idempotency_key: str | None) -> int:
    """Validate a spend; return its amount in micro-dollars."""
    if not scopes:
        raise ValidationFailed("a spend needs at least one scope")
    seen: set[str] = set()
    for scope, windows in scopes:
        _check_windows(scope, windows)
        if scope in seen:
            raise ValidationFailed("scopes repeat", {"scope": scope})
        seen.add(scope)
    if not isinstance(amount, Decimal) or not amount.is_finite() or amount <= 0:
        raise ValidationFailed("a spend amount is a finite Decimal > 0", {"amount": str(amount)})
    if amount > MAX_AMOUNT:
        raise ValidationFailed(f"a spend amount is at most {MAX_AMOUNT}", {"amount": str(amount)})
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LEN:
        raise ValidationFailed(f"an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters")
    return _micros(amount)


def _check_reset(scope: str, window: str | None) -> str:
    _check_scope(scope)
    if window is None:
        return ALL_WINDOWS
    if not 0 < len(window) <= MAX_WINDOW_NAME_LEN or window == ALL_WINDOWS:
        raise ValidationFailed(f"a window name is 1 to {MAX_WINDOW_NAME_LEN} characters", {"window": window})
    return window


def _total(scope: str, window: WindowLimit, micros: int, oldest: float | None, now: float) -> WindowTotal:
    resets_in = 0 if oldest is None else max(0, math.ceil(oldest + window.seconds - now))
    return WindowTotal(scope, window.name, window.seconds, window.limit, _usd(micros), resets_in)


def _violates(window: WindowLimit, counted: _Counted, amount_micros: int) -> bool:
    return _usd(counted.micros + amount_micros) > window.limit


def _decide(
    scopes: Sequence[Scoped],
    counted: Sequence[Sequence[_Counted]],
    amount_micros: int,
    *,
    recorded: bool,
    duplicate: bool,
    now: float,
) -> SpendDecision:
    totals: list[WindowTotal] = []
    violations: list[WindowTotal] = []
    for (scope, windows), scope_counted in zip(scopes, counted, strict=True):
        for window, before in zip(windows, scope_counted, strict=True):
            if not duplicate and _violates(window, before, amount_micros):
                after_oldest = now if before.oldest is None else min(before.oldest, now)
                violations.append(_total(scope, window, before.micros + amount_micros, after_oldest, now))
            if recorded:
                oldest = now if before.oldest is None else min(before.oldest, now)
                totals.append(_total(scope, window, before.micros + amount_micros, oldest, now))
            else:
                totals.append(_total(scope, window, before.micros, before.oldest, now))
    return SpendDecision(
        allowed=duplicate or not violations, totals=totals, violations=violations, duplicate=duplicate
    )


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
        amount_micros = _check_spend(scopes, amount, idempotency_key)
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
                _violates(window, before, amount_micros)
                for (_, windows), scope_counted in zip(scopes, counted, strict=True)
                for window, before in zip(windows, scope_counted, strict=True)
            )
            recorded = allowed and record
            if recorded:
                amount = _usd(amount_micros)
                session.add_all(
                    SpendEvent(
                        scope=scope,
                        amount=amount,
                        at=now,
                        idempotency_key=_scoped_key(first, scope, idempotency_key),
                    )
                    for scope, _ in scopes
                )
        return _decide(scopes, counted, amount_micros, recorded=recorded, duplicate=duplicate, now=now)

    async def _lock_scope(self, session: AsyncSession, scope: str) -> None:
        if self._db.is_sqlite:
            await session.execute(sqlite_insert(SpendScope).values(scope=scope).on_conflict_do_nothing())
            return
        await session.execute(pg_insert(SpendScope).values(scope=scope).on_conflict_do_nothing())
        await session.execute(select(SpendScope.scope).where(SpendScope.scope == scope).with_for_update())

    async def _counted(
        self, session: AsyncSession, scope: str, windows: Sequence[WindowLimit], now: float
    ) -> list[_Counted]:
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
            _Counted(int(row[2 * i] or 0), None if row[2 * i + 1] is None else float(row[2 * i + 1]))
            for i in range(len(windows))
        ]

    async def totals(self, scope: str, windows: Sequence[WindowLimit], now: float) -> list[WindowTotal]:
        _check_windows(scope, windows)
        now = float(now)
        async with self._db.session() as session:
            counted = await self._counted(session, scope, windows, now)
        return [_total(scope, w, c.micros, c.oldest, now) for w, c in zip(windows, counted, strict=True)]

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
        name = _check_reset(scope, window)
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


# KEYS: per scope its events (sorted set: member "<id>:<micro-dollars>", score = time) and its resets (hash:
# "w:<window>" and "*" -> reset time, "horizon" -> longest window seen), then the idempotency key if any.
# ARGV: now, amount (micro-dollars), record (0/1), member id, idempotency ttl (ms), minimum retention (s),
# scope count, then per scope: window count, then per window: name, seconds, limit (micro-dollars).
# Returns {status (1 allowed, 0 refused, 2 duplicate), then per window: micro-dollars counted, oldest time}.
_SPEND = """
local function fmt(x) return string.format('%.17g', x) end
local function hnum(key, field)
  local v = redis.call('HGET', key, field)
  if v then return tonumber(v) end
  return nil
end
local now_s = ARGV[1]
local now = tonumber(now_s)
local amount = tonumber(ARGV[2])
local record = ARGV[3] == '1'
local member = ARGV[4] .. ':' .. ARGV[2]
local idem_ttl = ARGV[5]
local min_retention = tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local idem = KEYS[2 * n + 1]
local duplicate = idem ~= nil and redis.call('EXISTS', idem) == 1
local out = {0}
local fits = true
local ttls = {}
local pos = 8
for i = 1, n do
  local ev, rs = KEYS[2 * i - 1], KEYS[2 * i]
  local count = tonumber(ARGV[pos])
  pos = pos + 1
  local all_reset = hnum(rs, '*')
  local horizon = hnum(rs, 'horizon') or 0
  local wins = {}
  local lowest = nil
  for j = 1, count do
    local name, secs, limit = ARGV[pos], tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
    pos = pos + 3
    local r = hnum(rs, 'w:' .. name)
    if all_reset and (not r or all_reset > r) then r = all_reset end
    local cutoff = now - secs
    wins[j] = {cutoff = cutoff, reset = r, limit = limit, sum = 0, oldest = false}
    if not lowest or cutoff < lowest then lowest = cutoff end
    if secs > horizon then
      horizon = secs
      redis.call('HSET', rs, 'horizon', secs)
    end
  end
  local keep = horizon
  if keep < min_retention then keep = min_retention end
  ttls[i] = (keep + 60) * 1000
  if redis.call('EXISTS', rs) == 1 then redis.call('PEXPIRE', rs, ttls[i]) end
  redis.call('ZREMRANGEBYSCORE', ev, '-inf', fmt(now - keep))
  if lowest then
    local events = redis.call('ZRANGEBYSCORE', ev, '(' .. fmt(lowest), '+inf', 'WITHSCORES')
    for e = 1, #events, 2 do
      local micros = tonumber(string.match(events[e], ':(%d+)$'))
      local at_s = events[e + 1]
      local at = tonumber(at_s)
      for j = 1, count do
        local w = wins[j]
        if at > w.cutoff and (not w.reset or at >= w.reset) then
          w.sum = w.sum + micros
          if not w.oldest then w.oldest = at_s end
        end
      end
    end
  end
  for j = 1, count do
    local w = wins[j]
    if w.sum + amount > w.limit then fits = false end
    out[#out + 1] = w.sum
    out[#out + 1] = w.oldest or ''
  end
end
if duplicate then
  out[1] = 2
elseif not fits then
  out[1] = 0
else
  out[1] = 1
  if record then
    for i = 1, n do
      redis.call('ZADD', KEYS[2 * i - 1], now_s, member)
      redis.call('PEXPIRE', KEYS[2 * i - 1], ttls[i])
    end
    if idem then redis.call('SET', idem, member, 'PX', idem_ttl, 'NX') end
  end
end
return out
"""

# KEYS: a scope's resets hash. ARGV: field, now, minimum retention (s). Resets only move forward.
_RESET = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or tonumber(current) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local keep = tonumber(redis.call('HGET', KEYS[1], 'horizon') or '0')
if keep < tonumber(ARGV[3]) then keep = tonumber(ARGV[3]) end
redis.call('PEXPIRE', KEYS[1], (keep + 60) * 1000)
return 1
"""


# KEYS: the scopes' event sets, then the idempotency key (its value is the spend's member).
_CANCEL = """
local idem = KEYS[#KEYS]
local member = redis.call('GET', idem)
if not member then return 0 end
for i = 1, #KEYS - 1 do redis.call('ZREM', KEYS[i], member) end
redis.call('DEL', idem)
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisSpendStore:
    """Spends shared by every process that uses the same Redis and key prefix (one Redis, not a cluster: a
    spend's script touches the keys of all its scopes).

    Keys: ``<prefix>spend:{<scope>}:ev`` (sorted set of spends scored by time), ``<prefix>spend:{<scope>}:rs``
    (hash of reset times and the longest window seen) and ``<prefix>spend:{<scope>}:idem:<key>`` (SET NX with
    an expiry of the longest window of the call or one day, whichever is longer), with ``}`` and ``%`` in the
    scope percent-encoded. Spends older than the longest window seen (at least a day) are trimmed; the keys
    expire after that long plus a minute without a write. Works with clients created with or without
    ``decode_responses``."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._spend = redis.register_script(_SPEND)
        self._reset = redis.register_script(_RESET)
        self._cancel = redis.register_script(_CANCEL)

    def _key(self, scope: str, suffix: str) -> str:
        escaped = scope.replace("%", "%25").replace("}", "%7D")
        return f"{self._prefix}spend:{{{escaped}}}:{suffix}"

    async def _run(
        self,
        scopes: Sequence[Scoped],
        amount_micros: int,
        record: bool,
        idempotency_key: str | None,
        now: float,
    ) -> tuple[int, list[list[_Counted]]]:
        keys: list[str] = []
        args: list[str | int] = []
        longest = max((w.seconds for _, windows in scopes for w in windows), default=0)
        args += [
            repr(now),
            amount_micros,
            int(record),
            uuid.uuid4().hex,
            max(longest, MIN_RETENTION_S) * 1000,
            MIN_RETENTION_S,
            len(scopes),
        ]
        for scope, windows in scopes:
            keys += [self._key(scope, "ev"), self._key(scope, "rs")]
            args.append(len(windows))
            for window in windows:
                limit = min(int(window.limit.scaleb(6).to_integral_value(ROUND_FLOOR)), _MAX_LIMIT_MICROS)
                args += [window.name, window.seconds, limit]
        if idempotency_key is not None:
            keys.append(self._key(scopes[0][0], f"idem:{idempotency_key}"))
        reply = await self._spend(keys=keys, args=args)
        values = iter(reply[1:])
        counted: list[list[_Counted]] = []
        for _, windows in scopes:
            scope_counted = []
            for _ in windows:
                micros, oldest = int(next(values)), _text(next(values))
                scope_counted.append(_Counted(micros, float(oldest) if oldest else None))
            counted.append(scope_counted)
        return int(reply[0]), counted

    async def spend(
        self,
        scopes: Sequence[Scoped],
        amount: Decimal,
        *,
        record: bool,
        idempotency_key: str | None,
        now: float,
    ) -> SpendDecision:
        amount_micros = _check_spend(scopes, amount, idempotency_key)
        now = float(now)
        status, counted = await self._run(scopes, amount_micros, record, idempotency_key, now)
        return _decide(
            scopes, counted, amount_micros, recorded=status == 1 and record, duplicate=status == 2, now=now
        )

    async def totals(self, scope: str, windows: Sequence[WindowLimit], now: float) -> list[WindowTotal]:
        _check_windows(scope, windows)
        now = float(now)
        _, (counted,) = await self._run([(scope, windows)], 0, False, None, now)
        return [_total(scope, w, c.micros, c.oldest, now) for w, c in zip(windows, counted, strict=True)]

    async def reset(self, scope: str, window: str | None, now: float) -> None:
        name = _check_reset(scope, window)
        field = ALL_WINDOWS if name == ALL_WINDOWS else f"w:{name}"
        await self._reset(keys=[self._key(scope, "rs")], args=[field, repr(float(now)), MIN_RETENTION_S])

    async def cancel(self, scopes: Sequence[str], idempotency_key: str) -> None:
        if not scopes:
            return
        keys = [self._key(scope, "ev") for scope in scopes]
        await self._cancel(keys=[*keys, self._key(scopes[0], f"idem:{idempotency_key}")], args=[])
