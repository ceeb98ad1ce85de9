"""IP rotation: which egress pool sends a message, and resting sources that fail.

Rules choose a pool by sender domain, tenant, stream and recipient provider;
the first rule whose every given field matches wins, and mail no rule
matches goes through `egress.default_pool`. Within the pool the gateway
rotates sources by weight among those with capacity left (limits, caps,
warm-up), so this plugin only names pools.

A source that fails to connect to a site `rest_after` times within
`rest_window` seconds while another source reached that site, or that gets a
reply naming a blocklist, is rested there (no new connections from it to
that site) for `rest` seconds; the pool's other sources carry its mail
meanwhile.

    [[plugin.rotation.rules]]
    sender_domain = "news.example.com"   # the domain or any subdomain
    stream = "marketing"
    pool = "marketing"

    [[plugin.rotation.rules]]
    provider = "google"
    pool = "google-warm"
"""

from __future__ import annotations

import re
import time
from collections import defaultdict, deque

from pydantic import field_validator

from gateway import (
    Delivery,
    Destination,
    Duration,
    EnvelopeInfo,
    PluginContext,
    PluginSettings,
    Route,
    Scope,
    hookimpl,
)


class Rule(PluginSettings):
    pool: str
    sender_domain: str | None = None
    tenant: str | None = None
    stream: str | None = None
    provider: str | None = None

    def matches(self, envelope: EnvelopeInfo, destination: Destination) -> bool:
        domain = envelope.sender_domain
        if self.sender_domain and not (
            domain == self.sender_domain or domain.endswith("." + self.sender_domain)
        ):
            return False
        return (
            (self.tenant is None or self.tenant == envelope.tenant)
            and (self.stream is None or self.stream == envelope.stream)
            and (self.provider is None or self.provider == destination.provider)
        )


class RotationSettings(PluginSettings):
    rules: list[Rule] = []
    rest_after: int = 3  # connect failures ...
    rest_window: Duration = 600.0  # ... within this many seconds
    rest: Duration = 900.0
    # Replies that mean the source's IP is on a blocklist.
    blocklist_match: str = (
        r"spamhaus|spamcop|barracuda|blocklist|blacklist|block list|\bdnsbl\b|\brbl\b"
    )
    rest_on_blocklist: Duration = 3600.0

    @field_validator("blocklist_match")
    @classmethod
    def _regex(cls, value: str) -> str:
        re.compile(value)
        return value


class Rotation:
    Settings = RotationSettings

    def __init__(self) -> None:
        self.context: PluginContext | None = None
        self.settings = RotationSettings()
        self.failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self.reached: dict[str, dict[str, float]] = {}  # site -> source -> last delivery

    @hookimpl
    def gateway_startup(self, context: PluginContext) -> None:
        self.context = context
        self.settings = context.settings
        pools = context.egress.pools()
        for rule in self.settings.rules:
            if rule.pool not in pools:
                raise ValueError(
                    f"rotation rule names pool {rule.pool!r}, which [egress] does not define "
                    f"(pools: {', '.join(pools) or 'none'})"
                )

    @hookimpl
    def delivery_route(self, envelope: EnvelopeInfo, destination: Destination) -> Route | None:
        for rule in self.settings.rules:
            if rule.matches(envelope, destination):
                return Route(rule.pool)
        return None

    def _rest(self, source: str, site: str, seconds: float, why: str) -> None:
        assert self.context is not None
        until = time.time() + seconds
        self.context.egress.suspend(Scope(site=site, source=source), until, f"rotation: {why}")
        self.context.log("source_rested", source=source, site=site, until=until, why=why)

    @hookimpl
    def delivery_connect_failed(self, source: str, site: str, error: str) -> None:
        now = time.time()
        window = self.failures[(source, site)]
        window.append(now)
        since = now - self.settings.rest_window
        while window and window[0] < since:
            window.popleft()
        # Only the source's fault if another source reached the site meanwhile;
        # when every source fails, the site is down and retries handle it.
        others_ok = any(
            t >= since for src, t in self.reached.get(site, {}).items() if src != source
        )
        if len(window) >= self.settings.rest_after and others_ok:
            window.clear()
            self._rest(
                source,
                site,
                self.settings.rest,
                f"{self.settings.rest_after} connect failures: {error}",
            )

    def _blocklisted(self, delivery: Delivery) -> None:
        if delivery.source and re.search(self.settings.blocklist_match, delivery.reply, re.I):
            self._rest(
                delivery.source,
                delivery.site,
                self.settings.rest_on_blocklist,
                f"blocklist reply: {delivery.reply[:200]}",
            )

    @hookimpl
    def delivery_delivered(self, delivery: Delivery) -> None:
        self.reached.setdefault(delivery.site, {})[delivery.source] = time.time()

    @hookimpl
    def delivery_deferred(self, delivery: Delivery) -> None:
        self._blocklisted(delivery)

    @hookimpl
    def delivery_bounced(self, delivery: Delivery) -> None:
        self._blocklisted(delivery)


plugin = Rotation()
