"""When each delivery job runs next: the scheduled queue, in the Rust core.

Jobs wait in `_core.SchedulerQueues` (a timer wheel) until due; `pop_due`
hands out due jobs in batches, in turn per (domain, tenant, campaign) so a
big campaign cannot starve the rest. The engine then routes them to their
site's ready queue and applies rates, connection limits and holds per lane.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from gateway._core import SchedulerQueues
from gateway.config import RetryConfig


@dataclass
class Job:
    """Some recipients of one spooled message that share a destination domain."""

    qid: str
    domain: str
    rcpts: list[int] = field(default_factory=list)
    tenant: str = ""
    campaign: str = ""
    pool: str = ""  # the egress pool, once routed ("" = the default pool)


class RetryScheduler:
    def __init__(self, config: RetryConfig) -> None:
        self._config = config
        self._queues = SchedulerQueues()
        self._jobs: dict[int, tuple[Job, float]] = {}  # slot in the Rust queues -> (job, due)

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: Job, at: float) -> None:
        slot = self._queues.insert(job.qid, "", job.domain, at, job.tenant, job.campaign)
        self._jobs[slot] = (job, at)

    def next_due(self) -> float | None:
        return self._queues.next_due()

    def pop_due(self, now: float) -> list[Job]:
        due: list[Job] = []
        while True:
            slots = self._queues.take_ready_slots(now, 1000)
            if not slots:
                return due
            due += [self._jobs.pop(slot)[0] for slot in slots]
            self._queues.finish_many(slots)

    def by_domain(self) -> dict[str, tuple[int, float]]:
        """Per destination domain: jobs waiting, and the soonest next attempt.
        (A walk over every job: for the admin API, not the delivery path.)"""
        rows: dict[str, tuple[int, float]] = {}
        for job, due in self._jobs.values():
            count, soonest = rows.get(job.domain, (0, due))
            rows[job.domain] = (count + 1, min(soonest, due))
        return rows

    def backoff(self, attempts: int) -> float:
        """Delay before attempt `attempts + 1`: first · multiplier^(n-1), capped, ± jitter."""
        c = self._config
        delay = min(c.first_interval * c.multiplier ** max(attempts - 1, 0), c.max_interval)
        return delay * (1 + random.uniform(-c.jitter, c.jitter))
