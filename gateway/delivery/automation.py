"""Reply automation: shaping rules that act on what receivers answer.

A rule matches a regex over a reply ("421 4.7.28 ..."), fires at once or past
a threshold ("5 in 10m", counted per scoped thing), and acts on the site, on
the egress source that got the reply, or on the message's tenant or campaign:
suspend it for a while, lower its message rate or connection limit, or bounce
the message. Lowered limits climb back step by step (`RECOVERY_STEP` of the
configured value per clean `duration`), never in one jump; a suspension ends
the same way, its rate starting again at `factor`. The arithmetic is the Rust
core's (`EventWindow`, `AdaptiveLimit`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from gateway._core import AdaptiveLimit, EventWindow
from gateway.delivery.holds import Holds, Scope
from gateway.log import event
from gateway.shaping import Automation, Resolved, parse_trigger

# After a rule lowers a rate or connection limit, each clean `duration` gives
# back this share of the configured value.
RECOVERY_STEP = 0.25


@dataclass(frozen=True)
class ReplyContext:
    """Where a reply came from: the site, and the source and message that got it."""

    site: str
    source: str
    tenant: str = ""
    campaign: str = ""


def scope_of(rule: Automation, ctx: ReplyContext) -> Scope | None:
    """What `rule` acts on for this reply; None when the message lacks the label."""
    if rule.scope == "site":
        return Scope(site=ctx.site)
    if rule.scope == "source":
        return Scope(site=ctx.site, source=ctx.source)
    if rule.scope == "tenant":
        return Scope(site=ctx.site, tenant=ctx.tenant) if ctx.tenant else None
    return Scope(site=ctx.site, campaign=ctx.campaign) if ctx.campaign else None


class ReplyAutomation:
    def __init__(self, holds: Holds) -> None:
        self._holds = holds
        self._windows: dict[tuple[int, Scope], EventWindow] = {}  # (rule index, scope)
        self.rate_factors: dict[Scope, AdaptiveLimit] = {}
        self.connection_factors: dict[Scope, AdaptiveLimit] = {}

    def on_reply(self, rules: Resolved, ctx: ReplyContext, reply: str, now: float) -> str | None:
        """Run the site's rules over one reply; the action taken, if any."""
        for index, rule in enumerate(rules.automation):
            if not re.search(rule.match, reply):
                continue
            scope = scope_of(rule, ctx)
            if scope is None:
                continue
            window = self._windows.get((index, scope))
            if window is None:
                count, within = parse_trigger(rule.trigger)
                window = self._windows[(index, scope)] = EventWindow(count, within)
            if not window.record(now):
                continue
            window.clear()
            self._act(rule, scope, now)
            event(
                "automation",
                logging.WARNING,
                scope=str(scope),
                rule=rule.match,
                action=rule.action,
                duration=rule.duration,
            )
            return rule.action
        return None

    def _act(self, rule: Automation, scope: Scope, now: float) -> None:
        if rule.action == "suspend":
            until = now + rule.duration
            self._holds.add(scope, until, f"automation: {rule.match} -> suspend")
            # Traffic comes back gradually: at `factor` of the rate when the
            # suspension ends, a step more per clean period after that.
            self._lower(self.rate_factors, scope, rule, until)
        elif rule.action == "reduce-rate":
            self._lower(self.rate_factors, scope, rule, now)
        elif rule.action == "reduce-connections":
            self._lower(self.connection_factors, scope, rule, now)

    @staticmethod
    def _lower(
        factors: dict[Scope, AdaptiveLimit], scope: Scope, rule: Automation, since: float
    ) -> None:
        factor = factors.get(scope)
        if factor is None:
            factor = factors[scope] = AdaptiveLimit(1.0, RECOVERY_STEP, rule.duration)
        factor.lower(rule.factor, since)

    @staticmethod
    def _factor(
        factors: dict[Scope, AdaptiveLimit], context: dict[str, str | None], now: float
    ) -> float:
        """The lowest factor among connection scopes (no labels) that cover `context`."""
        return min(
            (
                f.value(now)
                for s, f in factors.items()
                if not s.labels_messages and s.covers(context)
            ),
            default=1.0,
        )

    def lane_rate_factor(self, lane: dict[str, str | None], now: float) -> float:
        """What a lane's message rate is multiplied by now (`lane`: site, provider, source)."""
        return self._factor(self.rate_factors, lane, now)

    def lane_connection_factor(self, lane: dict[str, str | None], now: float) -> float:
        return self._factor(self.connection_factors, lane, now)

    def label_rate_factors(self, context: dict[str, str | None]) -> list[Scope]:
        """Scopes on message labels (tenant, campaign, sender domain) covering
        `context` whose rate was lowered."""
        return [s for s in self.rate_factors if s.labels_messages and s.covers(context)]

    def slow(self, scope: Scope, factor: float, clean_period: float, now: float) -> None:
        """Lower a scope's rate by `factor`, recovering a step per clean period."""
        limit = self.rate_factors.get(scope)
        if limit is None:
            limit = self.rate_factors[scope] = AdaptiveLimit(1.0, RECOVERY_STEP, clean_period)
        limit.lower(factor, now)
