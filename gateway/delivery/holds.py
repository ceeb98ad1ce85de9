"""Suspensions: traffic that must not be sent until a time, and why.

A hold has a scope: any mix of site, provider, source, tenant, campaign and
sender domain.
Every field the scope sets must match; fields it leaves unset match anything.
So `Scope(site=S)` stops a whole site, `Scope(site=S, source=A)` only egress
source A towards it (what a per-IP deferral like Yahoo's TSS04 calls for),
`Scope(tenant=T)` one tenant everywhere. Operators (through the admin
primitives) and reply automation both hold traffic this way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Field = Literal["site", "provider", "source", "tenant", "campaign", "sender_domain"]
FIELDS: tuple[Field, ...] = ("site", "provider", "source", "tenant", "campaign", "sender_domain")
# Fields that label messages rather than connections: holds on them send the
# messages back to the scheduled queue instead of stopping connections.
LABELS = ("tenant", "campaign", "sender_domain")


@dataclass(frozen=True)
class Scope:
    site: str | None = None
    provider: str | None = None
    source: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    sender_domain: str | None = None

    def fields(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def labels_messages(self) -> bool:
        return any(getattr(self, name) is not None for name in LABELS)

    def covers(self, context: dict[str, str | None]) -> bool:
        """Every field this scope sets is in `context` with the same value."""
        return all(context.get(k) == v for k, v in self.fields().items())

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.fields().items()) or "everything"


@dataclass(frozen=True)
class Hold:
    scope: Scope
    until: float
    reason: str


class Holds:
    def __init__(self) -> None:
        self._holds: dict[Scope, Hold] = {}

    def add(self, scope: Scope, until: float, reason: str) -> Hold:
        """Hold `scope` until `until`; a longer hold already in place stays."""
        known = self._holds.get(scope)
        if known is None or until > known.until:
            known = self._holds[scope] = Hold(scope, until, reason)
        return known

    def remove(self, scope: Scope) -> bool:
        return self._holds.pop(scope, None) is not None

    def __len__(self) -> int:
        return len(self._holds)

    def expire(self, now: float) -> None:
        self._holds = {s: h for s, h in self._holds.items() if h.until > now}

    def active(self, now: float) -> list[Hold]:
        return [h for h in self._holds.values() if h.until > now]

    def next_end(self) -> float | None:
        return min((h.until for h in self._holds.values()), default=None)

    def find(self, now: float, **context: str | None) -> Hold | None:
        """The longest hold covering `context`: each field it sets is given and equal.

        A field the caller leaves out is unknown, so holds that set it do not
        match: asking about a site (site, provider) finds site-wide holds but
        not a hold on one tenant at that site.
        """
        found: Hold | None = None
        for hold in self._holds.values():
            if hold.until <= now:
                continue
            if hold.scope.covers(context) and (found is None or hold.until > found.until):
                found = hold
        return found
