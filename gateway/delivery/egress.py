"""Egress sources and pools: which local address an outbound connection binds
to, and the EHLO name it uses there.

Today one pool (`egress.default_pool`, or every source alike) serves all
traffic, and sources take turns by weight (smooth weighted round-robin, so a
2:1 pool alternates a-a-b rather than bursting). Issue 4's scheduler moves the
choice per message and honours each source's remaining capacity.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from gateway.config import EgressConfig


@dataclass(frozen=True)
class Source:
    name: str
    address: str
    ehlo: str


class SourcePicker:
    def __init__(self, config: EgressConfig, default_ehlo: str) -> None:
        sources = {
            s.name: Source(s.name, s.address, s.ehlo or default_ehlo) for s in config.sources
        }
        pools = {p.name: p.sources for p in config.pools}
        weights = pools.get(config.default_pool) or {name: 1 for name in sources}
        self._sources = [sources[name] for name in weights]
        self._weights = list(weights.values())
        self._current = [0] * len(self._sources)

    @property
    def sources(self) -> list[Source]:
        return list(self._sources)

    def pick(self) -> Source | None:
        """The next source by weight; None when no source is configured (the OS picks)."""
        if not self._sources:
            return None
        total = sum(self._weights)
        for i, weight in enumerate(self._weights):
            self._current[i] += weight
        best = max(range(len(self._current)), key=self._current.__getitem__)
        self._current[best] -= total
        return self._sources[best]

    def unbindable(self) -> list[str]:
        """A line per source whose address this host cannot bind to."""
        problems = []
        for source in self._sources:
            family = socket.AF_INET6 if ":" in source.address else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.bind((source.address, 0))
            except OSError as exc:
                problems.append(
                    f"egress source {source.name}: cannot bind {source.address}: {exc.strerror}"
                )
        return problems
