"""IP warm-up: a new source sends a little more each day, per provider.

Each source in `sources` has a day in `schedule` (a daily cap per provider,
by default 50 on the first day rising to 400,000 over 30 days). Its caps are
set on the egress source as daily counts per UTC day, per provider in
`providers` ("other" covers destinations of no named provider, "*" would be
the source's total). The gateway never sends over a cap: a message beyond it
goes through another source of its pool that has capacity (a warm one), or
waits for the next day.

The cap is the fleet's, not each node's: a node takes its share of the
day's cap from the policy store in blocks (`take_up_to`, atomic in SQLite
and in Redis), about a fiftieth of the cap at a time, and sends only what it
holds, so nodes sharing a store together stay under the cap. A block a node
holds but does not spend by midnight (or before a restart) is not sent by
anyone: the error is always under the cap, never over. When the store
cannot be reached, a node falls back to a local limit: what it sent itself
today stays under the cap.

Once a day (UTC) the schedule moves: one day forward if the source's
deferral and complaint rates of the day stayed under `max_deferral_rate` and
`max_complaint_rate` and it used at least `min_use` of its cap; it holds if
a rate was over; it steps one day back if a rate was over twice the limit.
Past the last day the source is warm and its caps are lifted. Progress and
the day's outcomes (added up across nodes every second) are kept in the
policy store and survive restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import Any

from gateway import Delivery, PluginContext, PluginSettings, PolicyStore, StoreUnavailable, hookimpl

STATE = "warmup"
COUNTS = "warmup-count"
STATS = "warmup-stats"
FLUSH_SECONDS = 1.0
CHECK_SECONDS = 60.0
DAY = 86400.0
BLOCKS_PER_DAY = 50  # a node takes a day's cap in blocks of about this share
REFILL_WAIT = 0.05  # seconds a source waits while its node takes another block

# 30 days from 50 to 400,000 a day per provider: roughly doubling at first,
# then +25-30% a day, the shape Gmail's and Microsoft's sender guidance asks
# for ("increase volume slowly"); no provider publishes numbers.
DEFAULT_SCHEDULE = [
    50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000,
    4000, 5000, 7000, 9000, 12000, 15000, 20000, 25000, 30000, 40000,
    50000, 65000, 80000, 100000, 125000, 150000, 200000, 250000, 300000, 400000,
]  # fmt: skip


class WarmupSettings(PluginSettings):
    sources: list[str] = []  # egress sources being warmed up
    providers: list[str] = ["google", "yahoo", "outlook", "apple", "other"]
    schedule: list[int] = DEFAULT_SCHEDULE
    max_deferral_rate: float = 0.10
    max_complaint_rate: float = 0.003
    min_use: float = 0.5  # share of the day's cap used, for the day to count


def utc_date(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def next_midnight(now: float) -> float:
    return (now // DAY + 1) * DAY


class DailyCap:
    """One source's cap towards one provider today (a `gateway.Capacity`)."""

    def __init__(self, warmup: Warmup, source: str, provider: str) -> None:
        self.warmup, self.source, self.provider = warmup, source, provider

    def wait(self, now: float) -> float:
        return self.warmup.wait(utc_date(now), self.source, self.provider, now)

    def take(self, now: float) -> None:
        self.warmup.take(utc_date(now), self.source, self.provider)

    def __str__(self) -> str:
        return (
            f"{self.warmup.cap(self.source)}/day (warm-up day {self.warmup.day(self.source) + 1})"
        )


class Warmup:
    Settings = WarmupSettings

    def __init__(self) -> None:
        self.context: PluginContext | None = None
        self.settings = WarmupSettings()
        self.store: PolicyStore | None = None
        self.days: dict[str, dict[str, Any]] = {}  # source -> {"day", "date"}, as last read
        # "date|source|provider" -> messages this node may still send (taken
        # from the fleet's cap), has sent, and the cap at which the fleet had
        # none left.
        self.held: dict[str, int] = defaultdict(int)
        self.sent: dict[str, int] = defaultdict(int)
        self.spent: dict[str, int] = {}
        self.refills: dict[str, asyncio.Task[None]] = {}
        # "date|source" -> outcomes not yet added to the store
        self.stats: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.tasks: list[asyncio.Task[None]] = []
        self.store_down = False

    # -- state ------------------------------------------------------------------

    def day(self, source: str) -> int:
        """The source's day in the schedule, as last read from the store."""
        return int(self.days.get(source, {}).get("day", 0))

    def cap(self, source: str) -> int:
        schedule = self.settings.schedule
        return schedule[min(self.day(source), len(schedule) - 1)]

    def block(self, source: str) -> int:
        """How much of the cap a node takes at once: at least 2, so the next block
        is asked for while one message is still in hand."""
        cap = self.cap(source)
        return min(cap, max(2, cap // BLOCKS_PER_DAY))

    # -- the cap, shared by the fleet ---------------------------------------------

    def wait(self, date: str, source: str, provider: str, now: float) -> float:
        key = f"{date}|{source}|{provider}"
        if self.held[key] > 0:
            return 0.0
        if self.spent.get(key) == self.cap(source):
            return next_midnight(now) - now  # the fleet has sent today's cap
        self._refill(key, source)
        return REFILL_WAIT

    def take(self, date: str, source: str, provider: str) -> None:
        key = f"{date}|{source}|{provider}"
        self.held[key] -= 1
        self.sent[key] += 1
        if self.held[key] <= self.block(source) // 2:  # ask for the next block early
            self._refill(key, source)

    def _refill(self, key: str, source: str) -> None:
        if key not in self.refills:
            task = asyncio.get_running_loop().create_task(self._take_block(key, source))
            self.refills[key] = task
            task.add_done_callback(lambda _: self.refills.pop(key, None))

    async def _take_block(self, key: str, source: str) -> None:
        assert self.store is not None
        assert self.context is not None
        cap, block = self.cap(source), self.block(source)
        try:
            granted = await self.store.take_up_to(
                COUNTS, key, "n", block, cap, time.time() + 3 * DAY
            )
            self._store_state(up=True)
        except StoreUnavailable:
            # Local limit: what this node sent today (and still holds) stays under the cap.
            granted = max(0, min(block, cap - self.sent[key] - self.held[key]))
            self._store_state(up=False)
        self.held[key] += granted
        if not granted and self.held[key] <= 0:
            self.spent[key] = cap
        with contextlib.suppress(StoreUnavailable):
            record = self.store.get(COUNTS, key) or {}
            used = max(int(record.get("n", 0)), self.sent[key]) / max(1, cap)
            self.context.gauge("cap_used_ratio", used, kind=key.partition("|")[2].replace("|", ":"))

    def _store_state(self, up: bool) -> None:
        if self.store_down == up and self.context is not None:
            self.store_down = not up
            level = logging.INFO if up else logging.WARNING
            self.context.log("warmup_local_limits", level, active=not up)

    # -- life cycle ---------------------------------------------------------------

    @hookimpl
    async def gateway_startup(self, context: PluginContext) -> None:
        self.context, self.settings, self.store = context, context.settings, context.store
        if not self.settings.schedule:
            raise ValueError("[plugin.warmup] schedule needs at least one day")
        unknown = set(self.settings.sources) - set(context.egress.source_names())
        if unknown:
            raise ValueError(f"warm-up sources not in [egress]: {', '.join(sorted(unknown))}")
        if not context.delivers:
            return  # an ingress worker: caps and days are the delivering process's
        await self.advance(time.time())
        self.tasks = [
            asyncio.create_task(self._every(FLUSH_SECONDS, self.flush)),
            asyncio.create_task(self._every(CHECK_SECONDS, lambda: self.advance(time.time()))),
        ]

    def set_caps(self, source: str) -> None:
        assert self.context is not None
        warm = self.day(source) >= len(self.settings.schedule)
        today = utc_date(time.time())
        for provider in self.settings.providers:
            cap = None if warm else DailyCap(self, source, provider)
            self.context.egress.set_cap(source, cap, provider=provider, name="warm-up")
            key = f"{today}|{source}|{provider}"
            if cap is not None and self.held[key] <= 0 and key not in self.spent:
                self._refill(key, source)  # a block in hand before the first message

    async def _every(self, seconds: float, work: object) -> None:
        while True:
            await asyncio.sleep(seconds)
            with contextlib.suppress(Exception):  # logged by the work itself
                await work()  # type: ignore[operator]

    async def flush(self) -> None:
        """Add this node's outcomes since the last flush to the fleet's."""
        if not self.stats or self.store is None:
            return
        pending, self.stats = self.stats, defaultdict(lambda: defaultdict(int))
        try:
            await self.store.add_counts(
                STATS, [(k, dict(v), time.time() + 30 * DAY) for k, v in pending.items()]
            )
        except StoreUnavailable:  # kept for the next flush
            for key, counts in pending.items():
                for what, n in counts.items():
                    self.stats[key][what] += n

    @hookimpl
    async def gateway_shutdown(self) -> None:
        for task in [*self.tasks, *self.refills.values()]:
            task.cancel()
        await self.flush()

    # -- the daily step -------------------------------------------------------------

    async def advance(self, now: float) -> None:
        """Move every source whose day ended: forward, hold or back; then set its caps."""
        assert self.store is not None
        assert self.context is not None
        today = utc_date(now)
        for counts in (self.held, self.sent, self.spent):
            for key in [k for k in counts if not k.startswith(today)]:
                del counts[key]  # past days' shares: nothing more to send under them
        for source in self.settings.sources:
            try:  # the fleet's view; without the store, the day waits (caps stay)
                state = self.store.get(STATE, source) or {"day": 0, "date": today}
                self.days[source] = state
                if state["date"] != today:
                    day = int(state["day"])
                    verdict = self.judge(source, str(state["date"]))
                    day = {"forward": day + 1, "hold": day, "back": max(0, day - 1)}[verdict]
                    await self.store.put(STATE, source, {"day": day, "date": today})
                    self.days[source] = {"day": day, "date": today}
                    self.context.log("warmup_day", source=source, verdict=verdict, day=day + 1)
            except StoreUnavailable:
                pass
            self.set_caps(source)

    def judge(self, source: str, date: str) -> str:
        """The day's verdict on the fleet's outcomes (and this node's not yet added)."""
        key = f"{date}|{source}"
        stats = dict((self.store.get(STATS, key) if self.store else None) or {})
        for what, n in self.stats.get(key, {}).items():
            stats[what] = stats.get(what, 0) + n
        sent, deferred = stats.get("sent", 0), stats.get("deferred", 0)
        complaints = stats.get("complaints", 0)
        deferral_rate = deferred / max(1, sent + deferred)
        complaint_rate = complaints / max(1, sent)
        limits = self.settings
        if deferral_rate > 2 * limits.max_deferral_rate or (
            complaint_rate > 2 * limits.max_complaint_rate
        ):
            return "back"
        if deferral_rate > limits.max_deferral_rate or complaint_rate > limits.max_complaint_rate:
            return "hold"
        if sent < limits.min_use * self.cap(source):
            return "hold"  # too little traffic to say the receivers accept more
        return "forward"

    # -- what happened to mail from a warming source --------------------------------

    def _count(self, source: str, what: str) -> None:
        if source in self.settings.sources:
            self.stats[f"{utc_date(time.time())}|{source}"][what] += 1

    @hookimpl
    def delivery_delivered(self, delivery: Delivery) -> None:
        self._count(delivery.source, "sent")

    @hookimpl
    def delivery_deferred(self, delivery: Delivery) -> None:
        self._count(delivery.source, "deferred")

    @hookimpl
    def feedback_complaint(self, source: str) -> None:
        self._count(source, "complaints")


plugin = Warmup()
