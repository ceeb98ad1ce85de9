"""Prometheus metrics of the gateway (names and labels: docs/metrics.md).

Defined here, in one place, so every module counts into the same registry.
Labels never carry an address; labels whose values come from traffic
(tenant, site) go through `bounded`, which folds values past a cap into
"other", so a flood of new tenants or sites cannot explode cardinality.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left

from prometheus_client import Counter, Gauge, Histogram, values

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # An ingress worker (started by exec, never forked afterwards): its pid is
    # fixed, and prometheus-client's default asks the kernel for it on every
    # metric update (a getpid() syscall each: 3.5% of a worker under load).
    _PID = os.getpid()
    values.ValueClass = values.MultiProcessValue(lambda: _PID)  # type: ignore[no-untyped-call]

LINT_FINDINGS = Counter(
    "gateway_message_lint_findings_total",
    "Lint findings on relayed messages, by code and whether the gateway fixed them.",
    ["code", "fixed"],
)
MESSAGES_REJECTED = Counter(
    "gateway_messages_rejected_total",
    "Messages refused (4xx or 5xx) at end of DATA, by reason (lint, dkim).",
    ["reason"],
)
DKIM_SIGNATURES = Counter(
    "gateway_dkim_signatures_total",
    "DKIM signatures added, by algorithm.",
    ["algorithm"],
)
DKIM_UNSIGNED = Counter(
    "gateway_dkim_unsigned_total",
    "Messages that could not be signed, by reason (no_key, sign_error) and action taken.",
    ["reason", "action"],
)
PREPARE_SECONDS = Histogram(
    "gateway_message_prepare_seconds",
    "Time to normalise, parse, lint, fix and DKIM-sign one message.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
PLUGIN_CALLS_FAILED = Counter(
    "gateway_plugin_errors_total",
    "Plugin hook calls that raised or timed out, by plugin, hook and kind (error, timeout).",
    ["plugin", "hook", "kind"],
)
POLICY_REFUSALS = Counter(
    "gateway_policy_refusals_total",
    "SMTP commands refused by a plugin's decision, by stage (connect, mail, rcpt, data) and code.",
    ["stage", "code"],
)
BOUNCE_CLASSES = Counter(
    "gateway_delivery_failures_total",
    "Failed delivery attempts by bounce class and kind (deferred, bounced, expired).",
    ["bounce_class", "kind"],
)
COMPLAINTS = Counter(
    "gateway_complaints_total",
    "Complaints (ARF reports) matched to a sent message.",
    ["sender_domain", "tenant", "source", "provider"],
)
COMPLAINT_RATE = Gauge(
    "gateway_complaint_rate",
    "Complaints / delivered over feedback.complaint_window, per sender domain or source.",
    ["kind", "name", "provider"],
)
COMPLAINT_THROTTLE = Gauge(
    "gateway_complaint_throttle",
    "Complaint throttling of a stream toward a provider: 0 normal, 1 slowed, 2 suspended.",
    ["kind", "name", "provider"],
)
FEEDBACK_REPORTS = Counter(
    "gateway_feedback_reports_total",
    "Inbound reports, by kind (bounce, complaint) and outcome (matched, unmatched, unreadable).",
    ["kind", "outcome"],
)
PLUGIN_EVENTS = Counter(
    "gateway_plugin_events_total",
    "Things plugins count (PluginContext.count), by plugin, event and kind.",
    ["plugin", "event", "kind"],
)
PLUGIN_DECISIONS = Counter(
    "gateway_plugin_decisions_total",
    "Decisions plugins returned, by plugin, hook and action (accept, reject, defer, disconnect).",
    ["plugin", "hook", "action"],
)
PLUGIN_HOOK_SECONDS = Histogram(
    "gateway_plugin_hook_seconds",
    "Time a plugin's hook implementation took, by plugin and hook.",
    ["plugin", "hook"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
)
PLUGIN_GAUGE = Gauge(
    "gateway_plugin_gauge",
    "Values plugins report (PluginContext.gauge), e.g. warm-up cap use per source.",
    ["plugin", "name", "kind"],
)
MESSAGES_RECEIVED = Counter(
    "gateway_messages_received_total",
    "Messages accepted (250 after DATA), by tenant.",
    ["tenant"],
)
RECEIVED_BYTES = Counter(
    "gateway_received_bytes_total",
    "Bytes of accepted messages.",
)
RECIPIENT_OUTCOMES = Counter(
    "gateway_recipients_total",
    "Recipient outcomes of delivery attempts (delivered, deferred, bounced, expired), "
    "by provider, pool, source, tenant and bounce class.",
    ["outcome", "provider", "pool", "source", "tenant", "bounce_class"],
)
ACCEPT_SECONDS = Histogram(
    "gateway_accept_seconds",
    "From the end of DATA to the 250: prepare, plugins, sign, spool.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
QUEUE_SECONDS = Histogram(
    "gateway_time_in_queue_seconds",
    "From acceptance to a recipient's final outcome, by outcome.",
    ["outcome"],
    buckets=(0.1, 0.5, 1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 5 * 86400),
)
ATTEMPT_SECONDS = Histogram(
    "gateway_delivery_attempt_seconds",
    "One SMTP transaction (MAIL to the end of DATA) to an MX host, by provider.",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DKIM_SIGN_SECONDS = Histogram(
    "gateway_dkim_sign_seconds",
    "Time to DKIM-sign one message (every signature it gets).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025),
)
WEBHOOK_BACKLOG = Gauge(
    "gateway_webhook_backlog_events",
    "Events waiting in a webhook's durable backlog, by webhook.",
    ["webhook"],
)
WEBHOOK_SENT = Counter(
    "gateway_webhook_events_sent_total",
    "Events a webhook's endpoint took (answered 2xx), by webhook.",
    ["webhook"],
)
WEBHOOK_DROPPED = Counter(
    "gateway_webhook_events_dropped_total",
    "Events dropped from a full webhook backlog (max_backlog), by webhook.",
    ["webhook"],
)
AUTH_ATTEMPTS = Counter(
    "gateway_smtp_auth_total",
    "SMTP AUTH attempts by outcome: success, failure, blocked (IP over the failure limit).",
    ["outcome"],
)
SESSIONS_REFUSED = Counter(
    "gateway_smtp_sessions_refused_total",
    "SMTP sessions refused or cut short by an abuse limit, by limit.",
    ["limit"],
)
MTA_STS_FAILURES = Counter(
    "gateway_mta_sts_failures_total",
    "Deliveries an MTA-STS policy held back, by reason: mx_mismatch, certificate.",
    ["reason"],
)

# Distinct values seen per label kind; past the cap a value is reported as "other".
LABEL_CAP = 200
_seen: dict[str, set[str]] = {}


def bounded(kind: str, value: str, cap: int = LABEL_CAP) -> str:
    """`value` as a label, or "other" once `cap` distinct values of `kind` were used."""
    seen = _seen.setdefault(kind, set())
    if value in seen:
        return value
    if len(seen) >= cap:
        return "other"
    seen.add(value)
    return value


# How long a BatchedObserver keeps observations before adding them.
BATCH_SECONDS = 1.0


class BatchedObserver:
    """Observations for one labelled histogram, counted here and added to it
    once a second, for timings taken several times per message: in an ingress
    worker each `observe` writes two memory-mapped values under a lock (the
    plugin hooks' nine timings per message were ~2.5% of a worker). The
    totals are those `observe` would give, up to BATCH_SECONDS late; what a
    process held when it ended is not counted. Relies on prometheus-client's
    histogram keeping `_upper_bounds`, `_buckets` and `_sum` (checked by
    tests/test_units.py)."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._bounds: list[float] = histogram._upper_bounds
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = False

    def observe(self, amount: float) -> None:
        # observe's bucket: the first upper bound at or above the amount.
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount
        if not self._pending:
            self._pending = True
            try:
                asyncio.get_running_loop().call_later(BATCH_SECONDS, self.flush)
            except RuntimeError:  # no loop: add at once
                self.flush()

    def flush(self) -> None:
        self._pending = False
        self._histogram._sum.inc(self._sum)
        for bucket, count in zip(self._histogram._buckets, self._counts, strict=True):
            if count:
                bucket.inc(count)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
