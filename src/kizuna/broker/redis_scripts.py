"""Key names and Lua scripts of the Redis broker.

Every key of one channel carries the channel in a hash tag (``{...}``), so that
in Redis Cluster they all live in one slot: a script may only touch keys of one
slot, and sharded Pub/Sub (SPUBLISH) must publish from the slot the script runs
in. For a channel ``chat:room`` and the default prefix ``kizuna``::

    kizuna:{chat:room}                 the Pub/Sub channel
    kizuna:{chat:room}:stream          the history (a Stream; entry id = offset)
    kizuna:{chat:room}:meta            hash: e = epoch, s = last offset, n = history size
    kizuna:{chat:room}:idem:<key>      "<epoch>:<offset>" of an idempotent publish
    kizuna:{chat:room}:presence        hash: client id -> user id
    kizuna:{chat:room}:presence-exp    zset: client id -> expiry (ms, Redis server time)

A channel name holding a brace would end the tag early (or leave it empty), so
such names are tagged by their SHA-1 instead.

Offsets are the stream entry ids (``<offset>-0``), so a history read is a plain
XRANGE from ``since + 1``. Trimming is approximate (``MAXLEN ~``, whole radix
nodes at a time, which is what keeps XADD cheap); the meta hash remembers the
size asked for, and the history script hides entries older than the newest
``n``, so callers see an exact window.

The epoch lives in the meta hash. When the meta hash is missing (never
written, expired with the history TTL, or lost because Redis restarted without
persistence) a script starts a new epoch from a random value the caller passes
in (scripts must not invent randomness), and deletes any stream left over.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

__all__ = [
    "HISTORY",
    "PRESENCE_ADD",
    "PRESENCE_READ",
    "PRESENCE_REMOVE",
    "PUBLISH",
    "ChannelKeys",
]


@dataclass(frozen=True, slots=True)
class ChannelKeys:
    """The Redis names of one channel."""

    pubsub: str
    stream: str
    meta: str
    presence: str
    presence_expiry: str

    @staticmethod
    @functools.lru_cache(maxsize=16_384)
    def of(prefix: str, channel: str) -> ChannelKeys:
        """The names of ``channel`` (cached: every publish needs them, building them took
        ~1.3 µs — five strings and a frozen dataclass — and busy channels repeat)."""
        tag = channel
        if not tag or "{" in tag or "}" in tag:
            tag = hashlib.sha1(channel.encode()).hexdigest()
        base = f"{prefix}:{{{tag}}}"
        return ChannelKeys(
            pubsub=base,
            stream=base + ":stream",
            meta=base + ":meta",
            presence=base + ":presence",
            presence_expiry=base + ":presence-exp",
        )

    def idempotency(self, key: str) -> str:
        return f"{self.pubsub}:idem:{key}"


PUBLISH = """
-- Publish with history, atomically: next offset, XADD, TTL, idempotency, PUBLISH.
-- KEYS[1] stream, KEYS[2] meta, KEYS[3] idempotency key (KEYS[2] again when unused)
-- ARGV[1] Pub/Sub channel      ARGV[2] envelope tail (see redis_envelope.py)
-- ARGV[3] history size         ARGV[4] history TTL in ms (0: forever)
-- ARGV[5] epoch if new         ARGV[6] 'publish' or 'spublish'
-- ARGV[7] idempotency window in ms (0: no key)
-- Returns {offset, epoch}.
local stream, meta = KEYS[1], KEYS[2]
local epoch = redis.call('hget', meta, 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('del', stream)
  redis.call('hset', meta, 'e', epoch)
end
local window = tonumber(ARGV[7])
if window > 0 then
  local seen = redis.call('get', KEYS[3])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    if sep and string.sub(seen, 1, sep - 1) == epoch then
      return {tonumber(string.sub(seen, sep + 1)), epoch}
    end
  end
end
local offset = redis.call('hincrby', meta, 's', 1)
redis.call('hset', meta, 'n', ARGV[3])
local envelope = '[' .. offset .. ',"' .. epoch .. '",' .. ARGV[2]
redis.call('xadd', stream, 'MAXLEN', '~', ARGV[3], offset, 'd', envelope)
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('pexpire', stream, ttl)
  redis.call('pexpire', meta, ttl)
else
  redis.call('persist', stream)
  redis.call('persist', meta)
end
if window > 0 then
  redis.call('set', KEYS[3], epoch .. ':' .. offset, 'PX', window)
end
redis.call(ARGV[6], ARGV[1], envelope)
return {offset, epoch}
"""

HISTORY = """
-- Read a channel's position and, unless limit is 0, publications from its history.
-- KEYS[1] stream, KEYS[2] meta
-- ARGV[1] epoch if new         ARGV[2] ms a new, empty history keeps its epoch
-- ARGV[3] since offset ('' for none)   ARGV[4] since epoch
-- ARGV[5] limit (-1: all)      ARGV[6] '1': newest first
-- Returns {top offset, epoch, {envelope, ...}}.
local fields = redis.call('hmget', KEYS[2], 'e', 's', 'n')
local epoch = fields[1]
if not epoch then
  epoch = ARGV[1]
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'e', epoch)
  redis.call('pexpire', KEYS[2], ARGV[2])
  return {0, epoch, {}}
end
local top = tonumber(fields[2] or '0')
local limit = tonumber(ARGV[5])
if limit == 0 then
  return {top, epoch, {}}
end
local low = top - tonumber(fields[3] or '0') + 1
if ARGV[3] ~= '' then
  if ARGV[4] ~= epoch then
    return {top, epoch, {}}
  end
  local after = tonumber(ARGV[3]) + 1
  if after > low then
    low = after
  end
end
if low < 1 then
  low = 1
end
if low > top then
  return {top, epoch, {}}
end
local entries
if ARGV[6] == '1' then
  if limit > 0 then
    entries = redis.call('xrevrange', KEYS[1], '+', low, 'COUNT', limit)
  else
    entries = redis.call('xrevrange', KEYS[1], '+', low)
  end
elseif limit > 0 then
  entries = redis.call('xrange', KEYS[1], low, '+', 'COUNT', limit)
else
  entries = redis.call('xrange', KEYS[1], low, '+')
end
local out = {}
for i, entry in ipairs(entries) do
  out[i] = entry[2][2]
end
return {top, epoch, out}
"""

PRESENCE_ADD = """
-- Add or refresh presence entries; each expires ttl ms from now (Redis server time,
-- so that nodes with skewed clocks agree).
-- KEYS[1] hash client -> user, KEYS[2] zset client -> expiry
-- ARGV[1] ttl in ms, then pairs: client id, user id
local now = redis.call('time')
local ttl = tonumber(ARGV[1])
local expires = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl
for i = 2, #ARGV, 2 do
  redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('zadd', KEYS[2], expires, ARGV[i])
end
-- The keys outlive their longest entry, and vanish with a channel nobody refreshes.
for k = 1, 2 do
  if redis.call('pttl', KEYS[k]) < ttl then
    redis.call('pexpire', KEYS[k], ttl)
  end
end
return 1
"""

PRESENCE_REMOVE = """
-- KEYS[1] hash, KEYS[2] zset; ARGV client ids
redis.call('hdel', KEYS[1], unpack(ARGV))
redis.call('zrem', KEYS[2], unpack(ARGV))
return 1
"""

PRESENCE_READ = """
-- Drop expired entries, then return them all (ARGV[1] 'all': flat client, user list)
-- or the counts (ARGV[1] 'stats': {clients, distinct users}).
-- KEYS[1] hash, KEYS[2] zset
local now = redis.call('time')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', ms)
if #expired > 0 then
  for i = 1, #expired, 1000 do
    redis.call('hdel', KEYS[1], unpack(expired, i, math.min(i + 999, #expired)))
  end
  redis.call('zremrangebyscore', KEYS[2], '-inf', ms)
end
if ARGV[1] == 'stats' then
  local users = redis.call('hvals', KEYS[1])
  local seen, distinct = {}, 0
  for _, user in ipairs(users) do
    if not seen[user] then
      seen[user] = true
      distinct = distinct + 1
    end
  end
  return {#users, distinct}
end
return redis.call('hgetall', KEYS[1])
"""
