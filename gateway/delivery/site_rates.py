"""A site's total message rate (shaping `site_message_rate`), across every
source of a node and, with Redis, across every node of a fleet.

Per-source limits (`message_rate`) protect each IP's reputation; a provider
also counts what a whole sender sends it, and a fleet of gateways must stay
under that together. GCRA (the algorithm of the Rust RateLimiter) in one
Lua script, so checking and taking are one atomic step in Redis, with Redis's
own clock so the nodes' clocks need not agree.

Without Redis, or while it is unreachable, each node holds the rate alone
(the local limiter): a fleet may then send up to N times the rate for that
while, which is logged (`site_rates_local`), never a stop of delivery.
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
ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class SiteRates:
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
                if not self._shared:
                    self._shared = True
                    event("site_rates_shared")
                return float(wait) / 1e6
        limiter = self._local.get(site)
        if limiter is None:
            limiter = self._local[site] = RateLimiter(rate)
        return limiter.try_take(now)

    def _fall_back(self, error: str) -> None:
        if self._shared:
            self._shared = False
            event("site_rates_local", logging.WARNING, error=error)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
