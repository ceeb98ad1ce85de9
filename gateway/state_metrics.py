"""Gauges read from the gateway's state at scrape time: queues, connections,
holds. A collector rather than gauges kept up to date, so the hot path pays
nothing and a scrape always sees the state as it is."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.delivery.engine import DeliveryEngine
from gateway.metrics import bounded
from gateway.store import PolicyStore


class StateCollector(Collector):
    def __init__(
        self, engine: DeliveryEngine, inbound: Callable[[], int], store: PolicyStore
    ) -> None:
        self._engine = engine
        self._inbound = inbound
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = self._engine
        now = time.time()
        queued = GaugeMetricFamily(
            "gateway_queue_messages", "Messages in the queue (spooled, not yet final)."
        )
        queued.add_metric([], len(engine._messages))
        yield queued
        oldest = GaugeMetricFamily(
            "gateway_queue_oldest_seconds", "Age of the oldest message in the queue."
        )
        ages = [now - m.envelope.received_at for m in engine._messages.values()]
        oldest.add_metric([], max(ages, default=0.0))
        yield oldest
        jobs = GaugeMetricFamily(
            "gateway_queue_jobs",
            "Delivery jobs (a message's recipients at one domain) waiting: scheduled for a "
            "later attempt, or ready for a connection, by provider and site.",
            labels=["queue", "provider", "site"],
        )
        jobs.add_metric(["scheduled", "", ""], len(engine._scheduler))
        ready: Counter[tuple[str, str]] = Counter()
        for (site, _), queue in engine._ready.items():
            rules = engine._rules.get(site)
            provider = (rules.provider if rules else None) or "other"
            ready[(provider, bounded("site", site))] += len(queue)
        for (provider, site), count in ready.items():
            jobs.add_metric(["ready", provider, site], count)
        yield jobs
        connections = GaugeMetricFamily(
            "gateway_connections", "Open SMTP connections, by direction.", labels=["direction"]
        )
        connections.add_metric(["inbound"], self._inbound())
        connections.add_metric(["outbound"], engine._total_active)
        yield connections
        holds = GaugeMetricFamily(
            "gateway_holds",
            "Suspensions in force, by what they hold (e.g. provider+sender_domain).",
            labels=["scope"],
        )
        kinds = Counter("+".join(h.scope.fields()) for h in engine.holds.active(now))
        for kind, count in kinds.items():
            holds.add_metric([kind], count)
        yield holds
        yield GaugeMetricFamily(
            "gateway_policy_store_up",
            "1 while the policy store answers; 0 while Redis is unreachable and checks "
            "that read it fail closed (451 4.3.0).",
            value=int(self._store.healthy),
        )
        shared = engine.fleet_limits.state
        if shared is not None:
            yield GaugeMetricFamily(
                "gateway_fleet_limits_shared",
                "1 while site and lane limits are held with the fleet through Redis; 0 while "
                "this node holds them alone (Redis failed at their last use).",
                value=shared,
            )
