"""Limits a fleet holds together through Redis: message rates (GCRA) and
open connections (leases).

Two kinds of key use them. A site's totals across every source and node
(shaping `site_message_rate`, `site_max_connections`): a provider counts what
a whole sender sends it. And a lane's limits (`message_rate`,
`max_connections` per source and site) when several nodes send from one
address, as nodes on one host do: the provider sees one IP. The rate is GCRA
(the algorithm of the Rust RateLimiter) and the connections are leases that
expire unless renewed (so a node that dies frees its share); each is one Lua
script, so checking and taking are one atomic step in Redis, on Redis's own
clock.

Without Redis, or while it is unreachable, each node holds the limits alone:
a fleet may then exceed them up to N times for that while, which is logged
(`fleet_limits_local`), never a stop of delivery.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
import redis.asyncio

from gateway._core import RateLimiter, parse_rate
from gateway.log import event

# KEYS[1]: the limit's theoretical arrival time in microseconds.
# ARGV[1]: emission interval (period / count), ARGV[2]: burst tolerance, both µs;
# ARGV[3]: how many messages the caller would like to take at most.
# Returns {taken, 0} when at least one was taken, else {0, microseconds to wait}.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local room = math.floor((now + burst - tat) / interval) + 1
if room < 1 then return {0, math.ceil(tat - burst - now)} end
local take = math.min(room, tonumber(ARGV[3]))
tat = tat + take * interval
redis.call('SET', KEYS[1], tat, 'PX', math.floor((tat - now) / 1000) + 1000)
return {take, 0}
"""
# KEYS[1]: the site's leases (sorted set, score = expiry in µs).
# ARGV[1]: the limit, ARGV[2]: this lease's id, ARGV[3]: its lifetime in µs.
# Returns 1 when the lease is held (taken or renewed), else 0.
LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or
   redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.floor(ttl / 1000) + 1000)
  return 1
end
return 0
"""
# A node takes a fast rate from Redis in blocks of what the rate allows in
# BLOCK_SECONDS (at most BLOCK_MAX messages), so a busy lane makes one Redis
# call per block rather than per message; what a node has not used after
# HOLD_SECONDS is dropped (the fleet then errs low). A node that finds the
# rate spent waits until a block is free, so a lane held at its rate still
# goes in blocks. A rate slower than one message per BLOCK_SECONDS is taken
# one message at a time, exactly.
BLOCK_SECONDS = 0.05
BLOCK_MAX = 20
HOLD_SECONDS = 0.2
LEASE_SECONDS = 300.0  # a lease not renewed for this long is free again
RENEW_SECONDS = 60.0
ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class FleetLimits:
    def __init__(self, redis_url: str | None = None, prefix: str = "gateway") -> None:
        self._local: dict[str, RateLimiter] = {}
        self._prefix = prefix
        self._redis: redis.asyncio.Redis | None = None
        self._script: Any = None
        if redis_url:
            self._redis = redis.asyncio.Redis.from_url(
                redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
            self._script = self._redis.register_script(GCRA)
            self._lease = self._redis.register_script(LEASE)
        self._renewed: dict[tuple[str, str], float] = {}  # (key, lease id) -> last renewed
        self._held: dict[str, tuple[int, float]] = {}  # key -> (messages in hand, until)
        self._shared = True  # logged once per change

    @property
    def state(self) -> int | None:
        """1 while the limits are held with the fleet, 0 while this node holds
        them alone (Redis failed at the last use), None without Redis."""
        return None if self._redis is None else int(self._shared)

    async def reserve(
        self, key: str, rate: str, now: float, factor: float = 1.0, local: bool = True
    ) -> float:
        """Take one message of `key`'s `rate` (times `factor`, which automation
        lowers): 0.0, or the seconds to wait first. Without Redis: a limiter of
        this node's, or with `local=False` none (the caller holds its own)."""
        if self._redis is not None:
            held, until = self._held.get(key, (0, 0.0))
            if held and now < until:
                self._held[key] = (held - 1, until)
                return 0.0
            count, period = parse_rate(rate)
            allowed = max(count * factor, 1.0)  # automation's factor lowers the count
            interval = period / allowed
            block = max(1, min(BLOCK_MAX, int(allowed), int(BLOCK_SECONDS / interval)))
            try:
                taken, wait = await self._script(
                    keys=[f"{self._prefix}:rate:{key}"],
                    args=[interval * 1e6, interval * 1e6 * (allowed - 1), block],
                )
            except ERRORS as exc:
                self._fall_back(str(exc))
            else:
                self._back()
                if taken:
                    # Other sessions' blocks taken meanwhile add up, not replace.
                    held, until = self._held.get(key, (0, 0.0))
                    held = held if now < until else 0
                    self._held[key] = (held + int(taken) - 1, now + HOLD_SECONDS)
                    return 0.0
                # Come back when a whole block is free, not one message.
                return float(wait) / 1e6 + (block - 1) * interval
        if not local:
            return 0.0
        limiter = self._local.get(key)
        if limiter is None:
            limiter = self._local[key] = RateLimiter(rate)
        limiter.set_factor(factor)
        return limiter.try_take(now)

    async def lease(self, key: str, limit: int, lease_id: str, now: float) -> bool:
        """Hold one of `key`'s `limit` connections across the fleet (taken,
        or renewed when already held); False when all are taken. Without
        Redis: True (the node's own count is the limit)."""
        if self._redis is None:
            return True
        if now - self._renewed.get((key, lease_id), 0.0) < RENEW_SECONDS:
            return True
        try:
            held = await self._lease(
                keys=[f"{self._prefix}:conns:{key}"], args=[limit, lease_id, LEASE_SECONDS * 1e6]
            )
        except ERRORS as exc:
            self._fall_back(str(exc))
            return True
        self._back()
        if held:
            self._renewed[(key, lease_id)] = now
        return bool(held)

    async def release(self, key: str, lease_id: str) -> None:
        if self._redis is None or self._renewed.pop((key, lease_id), None) is None:
            return
        try:
            await self._redis.zrem(f"{self._prefix}:conns:{key}", lease_id)
        except ERRORS as exc:
            self._fall_back(str(exc))  # it expires by itself

    def _back(self) -> None:
        if not self._shared:
            self._shared = True
            event("fleet_limits_shared")

    def _fall_back(self, error: str) -> None:
        if self._shared:
            self._shared = False
            event("fleet_limits_local", logging.WARNING, error=error)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
