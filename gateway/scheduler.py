"""When each delivery job runs next: a timer heap and exponential backoff.

This is the seam the Rust scheduler (issue 4) replaces: the delivery engine
only calls `add`, `pop_due`, `next_due` and `backoff`.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from gateway.config import RetryConfig


@dataclass
class Job:
    """Some recipients of one spooled message that share a destination domain."""

    qid: str
    domain: str
    rcpts: list[int] = field(default_factory=list)


class RetryScheduler:
    def __init__(self, config: RetryConfig) -> None:
        self._config = config
        self._heap: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, job: Job, at: float) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), job))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Job]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[2])
        return due

    def backoff(self, attempts: int) -> float:
        """Delay before attempt `attempts + 1`: first · multiplier^(n-1), capped, ± jitter."""
        c = self._config
        delay = min(c.first_interval * c.multiplier ** max(attempts - 1, 0), c.max_interval)
        return delay * (1 + random.uniform(-c.jitter, c.jitter))
