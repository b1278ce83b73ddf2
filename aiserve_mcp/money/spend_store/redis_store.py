"""The spend store in Redis: one Lua script per operation, so a spend over every scope is one atomic step."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import ROUND_FLOOR, Decimal

from redis.asyncio import Redis

from aiserve_mcp.money.spend_store.base import Scoped, SpendDecision, WindowLimit, WindowTotal
from aiserve_mcp.money.spend_store.rules import (
    ALL_WINDOWS,
    Counted,
    check_reset,
    check_spend,
    check_windows,
    decide,
    window_total,
)

MIN_RETENTION_S = 86_400
# Limits above this many micro-dollars are treated as this one in Redis (Lua numbers are doubles).
_MAX_LIMIT_MICROS = 2**53


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
    ) -> tuple[int, list[list[Counted]]]:
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
        counted: list[list[Counted]] = []
        for _, windows in scopes:
            scope_counted = []
            for _ in windows:
                micros, oldest = int(next(values)), _text(next(values))
                scope_counted.append(Counted(micros, float(oldest) if oldest else None))
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
        amount_micros = check_spend(scopes, amount, idempotency_key)
        now = float(now)
        status, counted = await self._run(scopes, amount_micros, record, idempotency_key, now)
        return decide(
            scopes, counted, amount_micros, recorded=status == 1 and record, duplicate=status == 2, now=now
        )

    async def totals(self, scope: str, windows: Sequence[WindowLimit], now: float) -> list[WindowTotal]:
        check_windows(scope, windows)
        now = float(now)
        _, (counted,) = await self._run([(scope, windows)], 0, False, None, now)
        return [
            window_total(scope, w, c.micros, c.oldest, now) for w, c in zip(windows, counted, strict=True)
        ]

    async def reset(self, scope: str, window: str | None, now: float) -> None:
        name = check_reset(scope, window)
        field = ALL_WINDOWS if name == ALL_WINDOWS else f"w:{name}"
        await self._reset(keys=[self._key(scope, "rs")], args=[field, repr(float(now)), MIN_RETENTION_S])

    async def cancel(self, scopes: Sequence[str], idempotency_key: str) -> None:
        if not scopes:
            return
        keys = [self._key(scope, "ev") for scope in scopes]
        await self._cancel(keys=[*keys, self._key(scopes[0], f"idem:{idempotency_key}")], args=[])
