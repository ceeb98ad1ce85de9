"""Egress sources and pools: which local address an outbound connection binds
to, the EHLO name it uses there, and how much each source may still send.

One pool (`egress.default_pool`, or every source alike) serves all traffic.
Sources take turns by weight (smooth weighted round-robin, so a 2:1 pool
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

# With no [egress] sources, one source lets the OS pick the address.
DEFAULT_SOURCE = "default"
# The cap key of a source's own configured `message_rate`, apart from plugin caps.
LIMIT = "(source limit)"


@dataclass(frozen=True)
class Source:
    name: str
    address: str | None  # None: the OS picks
    ehlo: str


class SourcePicker:
    def __init__(self, config: EgressConfig, default_ehlo: str) -> None:
        sources = {
            s.name: Source(s.name, s.address, s.ehlo or default_ehlo) for s in config.sources
        }
        pools = {p.name: p.sources for p in config.pools}
        weights = pools.get(config.default_pool) or {name: 1 for name in sources}
        self._sources = [sources[name] for name in weights] or [
            Source(DEFAULT_SOURCE, None, default_ehlo)
        ]
        self._weights = list(weights.values()) or [1]
        self._current = [0] * len(self._sources)
        # (source, "*" | provider | LIMIT) -> (rate, its limiter)
        self._caps: dict[tuple[str, str], tuple[str, RateLimiter]] = {
            (s.name, LIMIT): (s.message_rate, RateLimiter(s.message_rate))
            for s in config.sources
            if s.message_rate
        }

    @property
    def sources(self) -> list[Source]:
        return list(self._sources)

    def pick(self, usable: Callable[[Source], bool] = lambda _: True) -> Source | None:
        """The next usable source by weight; None when none is usable now."""
        eligible = [i for i, source in enumerate(self._sources) if usable(source)]
        if not eligible:
            return None
        total = sum(self._weights[i] for i in eligible)
        for i in eligible:
            self._current[i] += self._weights[i]
        best = max(eligible, key=self._current.__getitem__)
        self._current[best] -= total
        return self._sources[best]

    # -- capacity caps (warm-up and the like) ----------------------------------

    def set_cap(self, source: str, rate: str | None, provider: str = "*") -> None:
        """Let `source` send at most `rate` ("500/h"), overall or to one provider;
        None lifts the cap. Raises KeyError for an unknown source, ValueError
        for a bad rate."""
        if source not in {s.name for s in self._sources}:
            raise KeyError(f"no egress source named {source!r}")
        if rate is None:
            self._caps.pop((source, provider), None)
            return
        known = self._caps.get((source, provider))
        if known is None or known[0] != rate:
            self._caps[(source, provider)] = (rate, RateLimiter(rate))

    def caps(self) -> dict[tuple[str, str], str]:
        return {key: rate for key, (rate, _) in self._caps.items()}

    def _limiters(self, source: str, provider: str | None) -> list[tuple[str, RateLimiter]]:
        keys = [(source, LIMIT), (source, "*")] + ([(source, provider)] if provider else [])
        return [self._caps[k] for k in keys if k in self._caps]

    def cap_wait(self, source: str, provider: str | None, now: float) -> tuple[float, str]:
        """Seconds until `source` may send one more message to `provider`, and the cap."""
        waits = [(limiter.wait(now), rate) for rate, limiter in self._limiters(source, provider)]
        return max(waits, default=(0.0, ""))

    def take_cap(self, source: str, provider: str | None, now: float) -> None:
        """Count one message against the source's caps (after `cap_wait` said 0)."""
        for _, limiter in self._limiters(source, provider):
            limiter.try_take(now)

    def unbindable(self) -> list[str]:
        """A line per source whose address this host cannot bind to."""
        problems = []
        for source in self._sources:
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
