"""Egress sources and pools: which local address an outbound connection binds
to, the EHLO name it uses there, and how much each source may still send.

Pools are weighted lists of sources; a message goes through the pool a
plugin's `delivery_route` names, else `egress.default_pool` (or every source
alike). Within a pool, sources take turns by weight (smooth weighted round-robin, so a 2:1 pool
alternates a-a-b rather than bursting) among those that can send right now;
the delivery engine decides which can (holds, connection limits and rates
per source and site, and the caps below).

Caps are rates per source: its own `message_rate` from the config, and caps
that plugins set, overall or towards one provider ("1000/d to google"): IP
warm-up (issue 5) raises them day by day. A source past a cap is skipped
until it may send again; mail is not bound to a source until one with
capacity takes it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from gateway._core import RateLimiter
from gateway.config import EgressConfig
from gateway.plugin import Capacity

# With no [egress] sources, one source lets the OS pick the address.
DEFAULT_SOURCE = "default"
# A cap "to other": destinations of no provider the shaping rules name.
OTHER = "other"
# The cap name of a source's own configured `message_rate`, apart from plugin caps.
LIMIT = "source limit"


@dataclass(frozen=True)
class Source:
    name: str
    address: str | None  # None: the OS picks
    ehlo: str


class RateCap:
    """A cap written as a rate ("500/h"), enforced by the Rust GCRA."""

    def __init__(self, rate: str) -> None:
        self.rate = rate
        self._limiter = RateLimiter(rate)

    def wait(self, now: float) -> float:
        return self._limiter.wait(now)

    def take(self, now: float) -> None:
        self._limiter.try_take(now)

    def __str__(self) -> str:
        return self.rate


class SourcePicker:
    def __init__(self, config: EgressConfig, default_ehlo: str) -> None:
        self._sources = {
            s.name: Source(s.name, s.address, s.ehlo or default_ehlo) for s in config.sources
        } or {DEFAULT_SOURCE: Source(DEFAULT_SOURCE, None, default_ehlo)}
        everything = {name: 1 for name in self._sources}
        self._pools: dict[str, dict[str, int]] = {p.name: p.sources for p in config.pools}
        # "" is the default pool: egress.default_pool, else every source alike.
        self._pools[""] = self._pools.get(config.default_pool) or everything
        self._current: dict[str, dict[str, int]] = {
            pool: dict.fromkeys(weights, 0) for pool, weights in self._pools.items()
        }
        # (source, provider or "*", name) -> cap; LIMIT names a source's own message_rate.
        self._caps: dict[tuple[str, str, str], Capacity] = {
            (s.name, "*", LIMIT): RateCap(s.message_rate) for s in config.sources if s.message_rate
        }

    @property
    def sources(self) -> list[Source]:
        return list(self._sources.values())

    def address_of(self, name: str) -> str:
        """A source's local address ("" when the OS picks it)."""
        source = self._sources.get(name)
        return (source.address or "") if source else ""

    def pools(self) -> dict[str, dict[str, int]]:
        return {name: dict(weights) for name, weights in self._pools.items() if name}

    def pool_sources(self, pool: str) -> list[Source]:
        return [self._sources[name] for name in self._pools.get(pool) or self._pools[""]]

    def pick(
        self, usable: Callable[[Source], bool] = lambda _: True, pool: str = ""
    ) -> Source | None:
        """The next usable source of `pool` by weight; None when none is usable now."""
        if pool not in self._pools:
            pool = ""
        weights = self._pools[pool]
        current = self._current[pool]
        eligible = [name for name in weights if usable(self._sources[name])]
        if not eligible:
            return None
        total = sum(weights[name] for name in eligible)
        for name in eligible:
            current[name] += weights[name]
        best = max(eligible, key=current.__getitem__)
        current[best] -= total
        return self._sources[best]

    # -- capacity caps (warm-up and the like) ----------------------------------

    def set_cap(
        self, source: str, cap: str | Capacity | None, provider: str = "*", name: str = ""
    ) -> None:
        """Cap `source` overall ("*"), towards one provider, or towards "other"
        (destinations of no named provider), with a rate like
        "500/h" or a Capacity; None lifts it. Raises KeyError for an unknown
        source, ValueError for a bad rate."""
        if source not in self._sources:
            raise KeyError(f"no egress source named {source!r}")
        key = (source, provider, name)
        if cap is None:
            self._caps.pop(key, None)
        elif isinstance(cap, str):
            known = self._caps.get(key)
            if not (isinstance(known, RateCap) and known.rate == cap):
                self._caps[key] = RateCap(cap)
        else:
            self._caps[key] = cap

    def caps(self) -> dict[tuple[str, str, str], str]:
        return {key: str(cap) for key, cap in self._caps.items()}

    def _applying(self, source: str, provider: str | None) -> list[tuple[str, Capacity]]:
        return [
            (f"{name or 'source cap'} {cap}" + (f" to {prov}" if prov != "*" else ""), cap)
            for (src, prov, name), cap in self._caps.items()
            if src == source and (prov in ("*", provider) or (prov == OTHER and provider is None))
        ]

    def cap_wait(self, source: str, provider: str | None, now: float) -> tuple[float, str]:
        """Seconds until `source` may send one more message to `provider`, and the cap."""
        waits = [(cap.wait(now), label) for label, cap in self._applying(source, provider)]
        return max(waits, default=(0.0, ""))

    def take_cap(self, source: str, provider: str | None, now: float) -> None:
        """Count one message against the source's caps (after `cap_wait` said 0)."""
        for _, cap in self._applying(source, provider):
            cap.take(now)

    def unbindable(self) -> list[str]:
        """A line per source whose address this host cannot bind to."""
        problems = []
        for source in self._sources.values():
            if source.address is None:
                continue
            family = socket.AF_INET6 if ":" in source.address else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.bind((source.address, 0))
            except OSError as exc:
                problems.append(
                    f"egress source {source.name}: cannot bind {source.address}: {exc.strerror}"
                )
        return problems
