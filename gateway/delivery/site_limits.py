"""A site's totals across every source of a node and, with Redis, across
every node of a fleet: its message rate (shaping `site_message_rate`) and its
open connections (`site_max_connections`).

Per-source limits (`message_rate`, `max_connections`) protect each IP's
reputation; a provider also counts what a whole sender sends it, and a fleet
of gateways must stay under that together. The rate is GCRA (the algorithm
of the Rust RateLimiter) and the connections are leases that expire unless
renewed (so a node that dies frees its share); each is one Lua script, so
checking and taking are one atomic step in Redis, on Redis's own clock.

Without Redis, or while it is unreachable, each node holds the limits alone:
a fleet may then exceed them up to N times for that while, which is logged
(`site_limits_local`), never a stop of delivery.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
import redis.asyncio

from gateway._core import RateLimiter, parse_rate
from gateway.log import event

# KEYS[1]: the site's theoretical arrival time in microseconds.
# ARGV[1]: emission interval (period / count), ARGV[2]: burst tolerance, both µs.
# Returns 0 when one message was taken, else microseconds to wait.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if now < tat - burst then return tat - burst - now end
tat = tat + interval
redis.call('SET', KEYS[1], tat, 'PX', math.floor((tat - now) / 1000) + 1000)
return 0
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
LEASE_SECONDS = 300.0  # a lease not renewed for this long is free again
RENEW_SECONDS = 60.0
ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class SiteLimits:
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
        self._renewed: dict[str, float] = {}  # lease id -> when last renewed
        self._shared = True  # logged once per change

    async def reserve(self, site: str, rate: str, now: float) -> float:
        """Take one message of `site`'s rate: 0.0, or the seconds to wait first."""
        if self._redis is not None:
            count, period = parse_rate(rate)
            interval = period / count * 1e6
            try:
                wait = await self._script(
                    keys=[f"{self._prefix}:rate:{site}"], args=[interval, interval * (count - 1)]
                )
            except ERRORS as exc:
                self._fall_back(str(exc))
            else:
                self._back()
                return float(wait) / 1e6
        limiter = self._local.get(site)
        if limiter is None:
            limiter = self._local[site] = RateLimiter(rate)
        return limiter.try_take(now)

    async def lease(self, site: str, limit: int, lease_id: str, now: float) -> bool:
        """Hold one of the site's `limit` connections across the fleet (taken,
        or renewed when already held); False when all are taken. Without
        Redis: True (the node's own count is the limit)."""
        if self._redis is None:
            return True
        if now - self._renewed.get(lease_id, 0.0) < RENEW_SECONDS:
            return True
        try:
            held = await self._lease(
                keys=[f"{self._prefix}:conns:{site}"], args=[limit, lease_id, LEASE_SECONDS * 1e6]
            )
        except ERRORS as exc:
            self._fall_back(str(exc))
            return True
        self._back()
        if held:
            self._renewed[lease_id] = now
        return bool(held)

    async def release(self, site: str, lease_id: str) -> None:
        if self._redis is None or self._renewed.pop(lease_id, None) is None:
            return
        try:
            await self._redis.zrem(f"{self._prefix}:conns:{site}", lease_id)
        except ERRORS as exc:
            self._fall_back(str(exc))  # it expires by itself

    def _back(self) -> None:
        if not self._shared:
            self._shared = True
            event("site_limits_shared")

    def _fall_back(self, error: str) -> None:
        if self._shared:
            self._shared = False
            event("site_limits_local", logging.WARNING, error=error)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
