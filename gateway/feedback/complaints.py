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
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Literal, Protocol

from gateway.config import FeedbackConfig
from gateway.delivery.holds import Scope
from gateway.log import event
from gateway.metrics import COMPLAINT_RATE, COMPLAINT_THROTTLE

BUCKETS = 24
Kind = Literal["sender_domain", "source"]
Key = tuple[Kind, str, str]  # (kind, name, provider)
NEVER = math.inf


class Throttle(Protocol):
    """What the monitor acts through (the delivery engine)."""

    def suspend(self, scope: Scope, until: float, reason: str = ...) -> None: ...

    def slow(self, scope: Scope, factor: float, clean_period: float) -> None: ...


class ComplaintMonitor:
    def __init__(self, config: FeedbackConfig, throttle: Throttle) -> None:
        self._config = config
        self._throttle = throttle
        self._bucket = config.complaint_window / BUCKETS
        # key -> deque of [bucket number, delivered, complaints]
        self._counts: dict[Key, deque[list[int]]] = {}
        self.state: dict[Key, int] = {}

    def _keys(self, sender_domain: str, source: str, provider: str | None) -> list[Key]:
        target = provider or "other"
        keys: list[Key] = []
        if sender_domain:
            keys.append(("sender_domain", sender_domain, target))
        if source:
            keys.append(("source", source, target))
        return keys

    def _add(self, key: Key, now: float, delivered: int, complaints: int) -> tuple[int, int]:
        bucket = int(now // self._bucket)
        counts = self._counts.setdefault(key, deque())
        if not counts or counts[-1][0] != bucket:
            counts.append([bucket, 0, 0])
        counts[-1][1] += delivered
        counts[-1][2] += complaints
        while counts and counts[0][0] <= bucket - BUCKETS:
            counts.popleft()
        return sum(c[1] for c in counts), sum(c[2] for c in counts)

    def delivered(self, sender_domain: str, source: str, provider: str | None, now: float) -> None:
        for key in self._keys(sender_domain, source, provider):
            self._add(key, now, 1, 0)

    def complaint(self, sender_domain: str, source: str, provider: str | None, now: float) -> None:
        for key in self._keys(sender_domain, source, provider):
            delivered, complaints = self._add(key, now, 0, 1)
            rate = complaints / max(1, delivered)
            COMPLAINT_RATE.labels(*key).set(rate)
            if delivered < self._config.complaint_min_delivered:
                continue
            if rate > self._config.complaint_limit:
                self._act(key, 2, rate)
            elif rate > self._config.complaint_warn:
                self._act(key, 1, rate)

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
