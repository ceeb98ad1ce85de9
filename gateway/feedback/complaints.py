"""Complaint-rate throttling.

Complaints ÷ delivered over a sliding window (`feedback.complaint_window`,
24 h by default, kept in 24 buckets), per sender domain and per egress
source, each toward one provider. Once a stream has at least
`complaint_min_delivered` deliveries in the window:

- past `complaint_warn` (0.1%) it is slowed: its rate toward that provider
  is multiplied by `complaint_slow_factor`, recovering step by step once the
  rate is back under the threshold;
- past `complaint_limit` (0.3%, Gmail's and Yahoo's line for bulk senders) it
  is suspended toward that provider until an operator resumes it.

Both show in `gateway_complaint_rate` and `gateway_complaint_throttle`
(0 normal, 1 slowed, 2 suspended).

The window's counts are the fleet's: every second each node adds what it
counted to the policy store (`add_counts`, one record per stream and
bucket, atomic in SQLite and Redis) and then judges every stream with
complaints in the window on the fleet's totals, so a complaint taken in by
one node and deliveries made by another make one rate, and every node acts
on it within about a second. While the store is out of reach a node judges
on its own counts (and adds them to the store once it is back).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict, deque
from typing import Literal, Protocol

from gateway.config import FeedbackConfig
from gateway.delivery.holds import Scope
from gateway.log import event
from gateway.metrics import COMPLAINT_RATE, COMPLAINT_THROTTLE
from gateway.periodic import Periodic
from gateway.store import PolicyStore, StoreUnavailable

BUCKETS = 24
NAMESPACE = "complaint-window"
FLUSH_SECONDS = 1.0
Kind = Literal["sender_domain", "source"]
Key = tuple[Kind, str, str]  # (kind, name, provider)
NEVER = math.inf


class Throttle(Protocol):
    """What the monitor acts through (the delivery engine)."""

    def suspend(self, scope: Scope, until: float, reason: str = ...) -> None: ...

    def slow(self, scope: Scope, factor: float, clean_period: float) -> None: ...


class ComplaintMonitor:
    def __init__(self, config: FeedbackConfig, throttle: Throttle, store: PolicyStore) -> None:
        self._config = config
        self._throttle = throttle
        self._store = store
        self._bucket = config.complaint_window / BUCKETS
        # This node's own counts, judged on while the store is out of reach:
        # key -> deque of [bucket number, delivered, complaints].
        self._counts: dict[Key, deque[list[int]]] = {}
        # Counts not yet added to the store: (key, bucket) -> [delivered, complaints].
        self._pending: dict[tuple[Key, int], list[int]] = defaultdict(lambda: [0, 0])
        self._flusher = Periodic("complaint-window", FLUSH_SECONDS, self.flush)
        self.state: dict[Key, int] = {}

    def start(self) -> None:
        self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()

    def _keys(self, sender_domain: str, source: str, provider: str | None) -> list[Key]:
        target = provider or "other"
        keys: list[Key] = []
        if sender_domain:
            keys.append(("sender_domain", sender_domain, target))
        if source:
            keys.append(("source", source, target))
        return keys

    def _add(self, key: Key, now: float, delivered: int, complaints: int) -> None:
        bucket = int(now // self._bucket)
        counts = self._counts.setdefault(key, deque())
        if not counts or counts[-1][0] != bucket:
            counts.append([bucket, 0, 0])
        counts[-1][1] += delivered
        counts[-1][2] += complaints
        while counts and counts[0][0] <= bucket - BUCKETS:
            counts.popleft()
        pending = self._pending[(key, bucket)]
        pending[0] += delivered
        pending[1] += complaints

    def _window(self, key: Key, now: float) -> tuple[int, int]:
        """Deliveries and complaints of the stream in the window: the fleet's
        (stored, plus this node's not yet stored), or this node's alone."""
        bucket = int(now // self._bucket)
        try:
            delivered = complaints = 0
            for number in range(bucket - BUCKETS + 1, bucket + 1):
                stored = self._store.get(NAMESPACE, _name(key, number)) or {}
                pending = self._pending.get((key, number), (0, 0))
                delivered += stored.get("d", 0) + pending[0]
                complaints += stored.get("c", 0) + pending[1]
            return delivered, complaints
        except StoreUnavailable:
            counts = self._counts.get(key, ())
            return sum(c[1] for c in counts), sum(c[2] for c in counts)

    def delivered(self, sender_domain: str, source: str, provider: str | None, now: float) -> None:
        for key in self._keys(sender_domain, source, provider):
            self._add(key, now, 1, 0)

    def complaint(self, sender_domain: str, source: str, provider: str | None, now: float) -> None:
        for key in self._keys(sender_domain, source, provider):
            self._add(key, now, 0, 1)
            self._judge(key, now)

    def _judge(self, key: Key, now: float) -> None:
        delivered, complaints = self._window(key, now)
        rate = complaints / max(1, delivered)
        COMPLAINT_RATE.labels(*key).set(rate)
        if delivered < self._config.complaint_min_delivered:
            return
        if rate > self._config.complaint_limit:
            self._act(key, 2, rate)
        elif rate > self._config.complaint_warn:
            self._act(key, 1, rate)

    def _expires(self, bucket: int) -> float:
        """When a bucket has left every window."""
        return (bucket + BUCKETS + 1) * self._bucket

    async def flush(self) -> None:
        """Add this node's counts to the fleet's, then judge every stream with
        complaints in the window (the ones other nodes took in too)."""
        now = time.time()
        if self._pending:
            batch, self._pending = self._pending, defaultdict(lambda: [0, 0])
            try:
                await self._store.add_counts(
                    NAMESPACE,
                    [
                        (_name(key, number), {"d": d, "c": c}, self._expires(number))
                        for (key, number), (d, c) in batch.items()
                    ],
                )
            except StoreUnavailable:
                for item, (d, c) in batch.items():  # kept for the next flush
                    self._pending[item][0] += d
                    self._pending[item][1] += c
                raise
        streams = {_key(name) for name, record in self._store.scan(NAMESPACE) if record.get("c")}
        for key in streams:
            self._judge(key, now)

    def _act(self, key: Key, level: int, rate: float) -> None:
        if self.state.get(key, 0) >= level:
            return
        kind, name, provider = key
        fields = {kind: name}
        scope = Scope(provider=provider, **fields)
        reason = f"complaint rate {rate:.3%} over {'limit' if level == 2 else 'warning'}"
        if level == 2:
            self._throttle.suspend(scope, NEVER, f"{reason}: resume by hand")
        else:
            factor = self._config.complaint_slow_factor
            self._throttle.slow(scope, factor, self._config.complaint_window / BUCKETS)
        self.state[key] = level
        COMPLAINT_THROTTLE.labels(*key).set(level)
        event(
            "complaint_throttle",
            logging.WARNING,
            kind=kind,
            stream=name,
            provider=provider,
            action="suspend" if level == 2 else "slow",
            rate=round(rate, 5),
        )


def _name(key: Key, bucket: int) -> str:
    """The store key of one stream's bucket: kind|name|provider|bucket."""
    return "|".join((*key, str(bucket)))


def _key(name: str) -> Key:
    kind, stream, provider, _ = name.split("|")
    return kind, stream, provider  # type: ignore[return-value]
