"""IP warm-up: a new source sends a little more each day, per provider.

Each source in `sources` has a day in `schedule` (a daily cap per provider,
by default 50 on the first day rising to 400,000 over 30 days). Its caps are
set on the egress source as daily counts per UTC day, per provider in
`providers` ("other" covers destinations of no named provider, "*" would be
the source's total). The gateway never sends over a cap: a message beyond it
goes through another source of its pool that has capacity (a warm one), or
waits for the next day.

Once a day (UTC) the schedule moves: one day forward if the source's
deferral and complaint rates of the day stayed under `max_deferral_rate` and
`max_complaint_rate` and it used at least `min_use` of its cap; it holds if
a rate was over; it steps one day back if a rate was over twice the limit.
Past the last day the source is warm and its caps are lifted. Progress and
counts are kept in the policy store and survive restarts (counts are written
once a second: a crash can lose at most that second's counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict

from gateway import Delivery, PluginContext, PluginSettings, PolicyStore, hookimpl

STATE = "warmup"
COUNTS = "warmup-count"
STATS = "warmup-stats"
FLUSH_SECONDS = 1.0
CHECK_SECONDS = 60.0
DAY = 86400.0

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
        used = self.warmup.count(utc_date(now), self.source, self.provider)
        return 0.0 if used < self.warmup.cap(self.source) else next_midnight(now) - now

    def take(self, now: float) -> None:
        self.warmup.bump(utc_date(now), self.source, self.provider)

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
        self.counts: dict[str, int] = {}  # "date|source|provider" -> messages
        self.dirty: set[str] = set()
        self.stats: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.tasks: list[asyncio.Task[None]] = []

    # -- state ------------------------------------------------------------------

    def state(self, source: str) -> dict[str, object]:
        assert self.store is not None
        return self.store.get(STATE, source) or {"day": 0, "date": utc_date(time.time())}

    def day(self, source: str) -> int:
        day: int = self.state(source)["day"]  # type: ignore[assignment]
        return day

    def cap(self, source: str) -> int:
        schedule = self.settings.schedule
        return schedule[min(self.day(source), len(schedule) - 1)]

    def count(self, date: str, source: str, provider: str) -> int:
        return self.counts.get(f"{date}|{source}|{provider}", 0)

    def bump(self, date: str, source: str, provider: str) -> None:
        key = f"{date}|{source}|{provider}"
        self.counts[key] = self.counts.get(key, 0) + 1
        self.dirty.add(key)
        if self.context is not None:  # share of today's cap used, for the dashboards
            used = self.counts[key] / max(1, self.cap(source))
            self.context.gauge("cap_used_ratio", used, kind=f"{source}:{provider}")

    # -- life cycle ---------------------------------------------------------------

    @hookimpl
    async def gateway_startup(self, context: PluginContext) -> None:
        self.context, self.settings, self.store = context, context.settings, context.store
        if not self.settings.schedule:
            raise ValueError("[plugin.warmup] schedule needs at least one day")
        unknown = set(self.settings.sources) - set(context.egress.source_names())
        if unknown:
            raise ValueError(f"warm-up sources not in [egress]: {', '.join(sorted(unknown))}")
        today = utc_date(time.time())
        for key, record in context.store.scan(COUNTS, today + "|"):
            self.counts[key] = int(record["n"])
        await self.advance(time.time())
        self.tasks = [
            asyncio.create_task(self._every(FLUSH_SECONDS, self.flush)),
            asyncio.create_task(self._every(CHECK_SECONDS, lambda: self.advance(time.time()))),
        ]

    def set_caps(self, source: str) -> None:
        assert self.context is not None
        warm = self.day(source) >= len(self.settings.schedule)
        for provider in self.settings.providers:
            cap = None if warm else DailyCap(self, source, provider)
            self.context.egress.set_cap(source, cap, provider=provider, name="warm-up")

    async def _every(self, seconds: float, work: object) -> None:
        while True:
            await asyncio.sleep(seconds)
            with contextlib.suppress(Exception):  # logged by the work itself
                await work()  # type: ignore[operator]

    async def flush(self) -> None:
        if not self.dirty or self.store is None:
            return
        keys, self.dirty = self.dirty, set()
        await self.store.put_many(
            COUNTS, [(k, {"n": self.counts[k]}, time.time() + 3 * DAY) for k in keys]
        )
        stats = [(k, dict(v), time.time() + 30 * DAY) for k, v in self.stats.items()]
        await self.store.put_many(STATS, stats)

    @hookimpl
    async def gateway_shutdown(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.flush()

    # -- the daily step -------------------------------------------------------------

    async def advance(self, now: float) -> None:
        """Move every source whose day ended: forward, hold or back; then set its caps."""
        assert self.store is not None
        assert self.context is not None
        today = utc_date(now)
        for source in self.settings.sources:
            state = self.state(source)
            if state["date"] != today:
                day = int(state["day"])  # type: ignore[call-overload]
                verdict = self.judge(source, str(state["date"]))
                day = {"forward": day + 1, "hold": day, "back": max(0, day - 1)}[verdict]
                await self.store.put(STATE, source, {"day": day, "date": today})
                self.context.log("warmup_day", source=source, verdict=verdict, day=day + 1)
            self.set_caps(source)

    def judge(self, source: str, date: str) -> str:
        stats = (
            self.stats.get(f"{date}|{source}")
            or (self.store.get(STATS, f"{date}|{source}") if self.store else None)
            or {}
        )
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
